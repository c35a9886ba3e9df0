"""dvc.yaml contract, and the real pipeline end to end: real DVC in a temporary git repository."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from churnlens.cli import app
from conftest import OTHER_VECTOR_UNIT, PROJECT_ROOT, active_customers, small_params_dict
from stage_code import load_package, module_path, stage_use

STAGES = ["simulate", "ingest", "features", "train", "evaluate", "score", "monitor"]


def test_dvc_yaml_matches_cli_and_params() -> None:
    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert list(pipeline) == STAGES
    for name, stage in pipeline.items():
        assert stage["cmd"].split()[:2] == ["churnlens", name] and name in commands
        for group in stage.get("params", []):
            section, *rest = group.split(".")
            assert section in params, f"{name}: params group {group} not in params.yaml"
            node = params[section]
            for key in rest:
                node = node[key]
        assert stage.get("outs") or stage.get("metrics"), f"{name} declares no output"
        for dep in stage["deps"]:
            if dep.startswith("src/"):
                assert (PROJECT_ROOT / dep).is_file(), dep


def test_every_stage_declares_the_code_and_params_it_uses() -> None:
    """Follow each stage's command through the code: every module it runs must be a dep (and
    nothing else), every params.<section>.<key> it reads must be declared."""
    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    sections = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    modules = load_package(PROJECT_ROOT / "src")
    problems = []
    for name, stage in pipeline.items():
        used = stage_use(modules, ("churnlens.cli", name), sections)
        code = {module_path(modules, m, PROJECT_ROOT) for m in used.modules}
        declared_code = {d for d in stage["deps"] if d.startswith("src/")}
        if code - declared_code:
            problems.append(f"{name}: runs {sorted(code - declared_code)} but does not list them in deps")
        if declared_code - code:
            problems.append(f"{name}: lists {sorted(declared_code - code)} in deps but never runs them")
        declared_params = set(stage.get("params", []))
        for section, key in sorted(used.params, key=str):
            if section not in declared_params and f"{section}.{key}" not in declared_params:
                problems.append(f"{name}: reads params {section}{'.' + key if key else ''} without declaring it")
    assert not problems, "\n".join(problems)


def test_only_the_headline_numbers_are_metrics() -> None:
    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    metrics = [next(iter(m)) if isinstance(m, dict) else m for stage in pipeline.values()
               for m in stage.get("metrics", [])]
    assert metrics and all(path.startswith("metrics/") for path in metrics)
    ignored = subprocess.run(["git", "check-ignore", *metrics], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert ignored.stdout == "", f"headline metrics must be committed, not git-ignored: {ignored.stdout}"


def _run(command: list[str], cwd: Path, env: dict, stderr: bool = True) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr if stderr else result.stdout


DATA_OUTPUTS = ("data/raw", "data/truth", "data/canonical", "data/quarantine", "data/features",
                "data/scores/scores.parquet", "metrics/evaluate.json", "metrics/score.json")


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under the pipeline's data outputs, by path relative to ``root``."""
    files = [p for out in DATA_OUTPUTS for p in ([root / out] if (root / out).is_file()
                                                 else sorted((root / out).rglob("*")))]
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.is_file() and p.name != ".gitignore"}


def _new_repo(root: Path) -> dict:
    """A git + DVC repository holding this project's pipeline on the small data set, with an
    MLflow store of its own."""
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    shutil.copytree(PROJECT_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    raw = small_params_dict()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "init"], root, env)
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """The pipeline run once and committed the DVC way (dvc.lock and the headline metrics in
    git); returns the repository, its environment and the digests of the first run's outputs."""
    root = tmp_path_factory.mktemp("repo")
    env = _new_repo(root)
    (root / ".git" / "first_repro.log").write_text(_run(["dvc", "repro"], root, env))  # never committed
    digests = _digests(root)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "pipeline run"], root, env)
    return root, env, digests


def _client(env: dict, monkeypatch: pytest.MonkeyPatch):
    """A client on the test repository's store, set up the way the pipeline sets itself up
    (MLflow keeps the tracking and registry URIs as process globals)."""
    from mlflow import MlflowClient

    from churnlens import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    tracking.configure()
    return MlflowClient()


@pytest.mark.e2e
def test_dvc_repro_end_to_end(repo, monkeypatch) -> None:
    root, env, _ = repo
    champion = _client(env, monkeypatch).get_model_version_by_alias("churnlens", "champion")
    assert str(champion.version) == "1"

    scores = pd.read_parquet(root / "data/scores/scores.parquet")
    assert scores["customer_id"].is_unique and len(scores) > 50
    assert scores["churn_probability"].between(0, 1).all() and scores["segment"].notna().all()
    as_of = scores["as_of"].iloc[0].tz_convert("UTC").tz_localize(None)
    lookback = yaml.safe_load((root / "params.yaml").read_text())["features"]["active_lookback_days"]
    assert set(scores["customer_id"]) == active_customers(root / "data/canonical", as_of, lookback)
    assert (root / "models/churn_model/MLmodel").is_file()
    # A quiet log: no third-party warnings. (Drift alarms are expected on this 540-day log: at the
    # training cutoff its 365-day windows are cut short by the start of the data.)
    log = (root / ".git" / "first_repro.log").read_text()
    assert "Warning" not in log, log[-3000:]

    # A second repro reruns nothing.
    second = _run(["dvc", "repro"], root, env)
    assert "Data and pipelines are up to date" in second
    for stage in STAGES:
        assert f"Running stage '{stage}'" not in second

    # `git status` is clean after a run: every output is either DVC's or committed.
    assert _run(["git", "status", "--porcelain"], root, env) == ""
    (workspace,) = json.loads(_run(["dvc", "metrics", "show", "--json"], root, env, stderr=False)).values()
    numbers = [v for file in workspace["data"].values() for v in file["data"].values()]
    assert 0.5 < workspace["data"]["metrics/evaluate.json"]["data"]["roc_auc"] <= 1
    assert len(numbers) <= 11  # evaluate 6, score 2, monitor up to 3


@pytest.mark.e2e
def test_an_experiment_reruns_train_and_after_and_compares_with_main(repo, tmp_path) -> None:
    root, env, _ = repo
    ran = _run(["dvc", "exp", "run", "-n", "shallow", "-S", "train.xgboost.max_depth=1"], root, env)
    assert [stage for stage in STAGES if f"Running stage '{stage}'" in ran] == ["train", "evaluate", "score", "monitor"]

    shown = json.loads(_run(["dvc", "exp", "show", "--json"], root, env, stderr=False))
    rows = {_experiment_name(entry): entry for entry in _experiment_rows(shown)}
    main = next(entry for name, entry in rows.items() if name not in ("workspace", "shallow"))
    shallow = rows["shallow"]
    assert _params(shallow)["train"]["xgboost"]["max_depth"] == 1 != _params(main)["train"]["xgboost"]["max_depth"]
    assert _headline(shallow)["roc_auc"] != _headline(main)["roc_auc"], "a depth-1 model must change the AUC"

    diff = json.loads(_run(["dvc", "metrics", "diff", main["rev"], shallow["rev"], "--json"], root, env,
                           stderr=False))
    change = diff["metrics/evaluate.json"]["roc_auc"]
    assert (change["old"], change["new"]) == (_headline(main)["roc_auc"], _headline(shallow)["roc_auc"])

    _run(["dvc", "plots", "diff", main["rev"][:7], shallow["rev"][:7], "-o", str(tmp_path / "plots")], root, env)
    page = (tmp_path / "plots/index.html").read_text()
    for rev in (main["rev"], shallow["rev"]):
        assert f"{rev[:7]}_reports_plots_roc.png" in page
        assert (tmp_path / "plots/static" / f"{rev[:7]}_reports_plots_roc.png").stat().st_size > 1000
    assert "<script" not in page, "the plots page must render offline"


def _experiment_rows(shown: list[dict]) -> list[dict]:
    rows = []
    for entry in shown:
        rows.append(entry)
        for experiment in entry.get("experiments") or []:
            rows.extend(experiment.get("revs", []))
    return rows


def _experiment_name(entry: dict) -> str:
    return entry.get("name") or entry["rev"]


def _headline(entry: dict) -> dict:
    return entry["data"]["metrics"]["metrics/evaluate.json"]["data"]


def _params(entry: dict) -> dict:
    return entry["data"]["params"]["params.yaml"]["data"]


@pytest.mark.e2e
def test_same_data_params_and_seed_give_the_same_bytes(repo, tmp_path) -> None:
    """A second checkout in another folder, with its own MLflow store and computing as a CPU with
    other vector units would, reproduces every data output and the headline metrics byte for byte,
    and the first checkout's dvc.lock line for line (model folder and reports included): a fresh
    clone on another machine leaves `git status` clean."""
    root, first_env, first = repo
    env = {**_new_repo(tmp_path), **OTHER_VECTOR_UNIT}
    _run(["dvc", "repro"], tmp_path, env)
    second = _digests(tmp_path)
    assert set(second) == set(first)
    differing = sorted(path for path in first if first[path] != second[path])
    assert not differing, f"outputs differ between two runs: {differing}"
    # The first run's lock as committed: an experiment run since has rewritten the workspace's.
    committed = _run(["git", "show", "HEAD:dvc.lock"], root, first_env, stderr=False)
    assert (tmp_path / "dvc.lock").read_text() == committed


@pytest.mark.e2e
def test_training_run_records_current_lineage(repo, monkeypatch) -> None:
    root, env, _ = repo
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    features_md5 = next(o["md5"] for o in lock["features"]["outs"] if o["path"] == "data/features")
    client = _client(env, monkeypatch)
    version = client.get_model_version_by_alias("churnlens", "challenger")
    run = client.get_run(version.tags["run_id"])
    assert run.data.tags["dvc.train.dep.data/features"] == features_md5
    assert len(run.data.tags["git_commit"]) == 40
