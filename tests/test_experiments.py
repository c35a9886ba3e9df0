"""A DVC experiment scores the model its own evaluate deployed, not an alias of the shared
registry: real `dvc exp run` in a temporary git repository holding a small copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import PROJECT_ROOT, small_params_dict


def _run(command: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def _read(root: Path, path: str) -> dict:
    return json.loads((root / path).read_text(encoding="utf-8"))


@pytest.mark.e2e
def test_an_experiment_scores_the_version_its_own_train_registered(tmp_path: Path) -> None:
    root = tmp_path
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    shutil.copytree(PROJECT_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(small_params_dict(), sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                    ["dvc", "repro"], ["git", "add", "-A"], ["git", "commit", "-qm", "main run"]):
        _run(command, root, env)
    main = _read(root, "reports/deployed.json")
    assert main["model_version"] == "1" and _read(root, "reports/score_manifest.json")["model_version"] == "1"

    _run(["dvc", "exp", "run", "-n", "depth3", "-S", "train.xgboost.max_depth=3"], root, env)
    trained = _read(root, "reports/train.json")["model_version"]
    deployed = _read(root, "reports/deployed.json")
    manifest = _read(root, "reports/score_manifest.json")
    assert trained == "2" and deployed["model_version"] == trained and deployed["decision"] == "challenger", deployed
    assert manifest["model_uri"] == f"models:/churnlens/{trained}" and manifest["model_version"] == trained
    assert manifest["deployment"]["source"] == "reports/deployed.json"
    assert manifest["deployment"]["decision"] == deployed["decision"]
    assert (pd.read_parquet(root / "data/scores/scores.parquet")["model_version"] == trained).all()
    assert _read(root, "reports/segment_report.json")["model_version"] == trained

    # Back on main, whose evaluate deployed v1, while the experiment moved the shared champion alias
    # to v2: a rerun of main's score stage alone still scores main's decision, and says it is no
    # longer the champion.
    _run(["git", "reset", "-q", "--hard"], root, env)
    _run(["dvc", "checkout", "--force"], root, env)
    ran = _run(["dvc", "exp", "run", "-n", "budget", "-S", "score.campaign_budget=4000"], root, env)
    assert "Running stage 'score'" in ran and "Running stage 'evaluate'" not in ran
    rescored = _read(root, "reports/score_manifest.json")
    assert rescored["model_version"] == "1" and rescored["deployment"]["is_champion"] is False
    assert rescored["deployment"]["champion_version"] == "2" and "the registry's champion is now v2" in " ".join(ran.split())  # the log wraps
    assert (pd.read_parquet(root / "data/scores/scores.parquet")["model_version"] == "1").all()
