"""dvc.yaml contract, and the real pipeline end to end: real DVC in a temporary git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from churnlens.cli import app
from conftest import PROJECT_ROOT, small_params_dict

STAGES = ["simulate", "ingest", "features", "train", "evaluate", "score"]


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


def _run(command: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("repo")
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
    return root, env


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
    root, env = repo
    _run(["dvc", "repro"], root, env)

    champion = _client(env, monkeypatch).get_model_version_by_alias("churnlens", "champion")
    assert str(champion.version) == "1"

    scores = pd.read_parquet(root / "data/scores/scores.parquet")
    snapshots = pd.read_parquet(root / "data/features/snapshots.parquet")
    assert scores["customer_id"].is_unique and len(scores) > 50
    assert scores["churn_probability"].between(0, 1).all() and scores["segment"].notna().all()
    assert set(scores["customer_id"]) <= set(snapshots["customer_id"]) | set(
        pd.read_parquet(root / "data/canonical/transactions.parquet")["customer_id"])
    assert (root / "models/churn_model/MLmodel").is_file()

    # A second repro reruns nothing.
    second = _run(["dvc", "repro"], root, env)
    assert "Data and pipelines are up to date" in second
    for stage in STAGES:
        assert f"Running stage '{stage}'" not in second

    metrics = _run(["dvc", "metrics", "show", "--json"], root, env)
    assert "roc_auc" in metrics


@pytest.mark.e2e
def test_changing_a_train_param_reruns_only_train_and_after(repo) -> None:
    root, env = repo
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"]["xgboost"]["max_depth"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    output = _run(["dvc", "repro"], root, env)
    ran = [stage for stage in STAGES if f"Running stage '{stage}'" in output]
    assert ran == ["train", "evaluate", "score"]


@pytest.mark.e2e
def test_dvc_experiment_with_a_changed_param(repo) -> None:
    root, env = repo
    _run(["dvc", "exp", "run", "-n", "shallow", "-S", "train.xgboost.max_depth=2"], root, env)
    shown = _run(["dvc", "exp", "show", "--json"], root, env)
    assert "shallow" in shown and "roc_auc" in shown


@pytest.mark.e2e
def test_training_run_records_current_lineage(repo, monkeypatch) -> None:
    root, env = repo
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    features_md5 = next(o["md5"] for o in lock["features"]["outs"] if o["path"] == "data/features")
    client = _client(env, monkeypatch)
    version = client.get_model_version_by_alias("churnlens", "challenger")
    run = client.get_run(version.tags["run_id"])
    assert run.data.tags["dvc.train.dep.data/features"] == features_md5
    assert len(run.data.tags["git_commit"]) == 40
