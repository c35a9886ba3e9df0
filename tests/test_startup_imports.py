"""What a command imports is part of its speed: each stage runs in a fresh process, and on a
2-core machine mlflow, pyspark, XGBoost and scikit-learn cost seconds of start-up each. The
feature stage needs none of them; the scoring job with a model folder needs the model's own
libraries, not mlflow (its registry) nor pyspark (which mlflow and pandera pull in)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import small_params_dict

# Runs a command as `churnlens` does and prints the top-level packages the process imported.
PROBE = """
import json, sys
from churnlens.cli import app
try:
    app(sys.argv[1:], prog_name="churnlens")
finally:
    print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""

NOT_FOR_FEATURES = {"mlflow", "pyspark", "xgboost", "sklearn", "skops", "shap", "matplotlib", "pandera",
                    "sqlalchemy"}
NOT_FOR_SCORING_A_FOLDER = {"mlflow", "pyspark", "shap", "pandera", "sqlalchemy"}


def imported_by(command: list[str], cwd: Path) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *command], cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from churnlens.config import parse_params
    from churnlens.stages import run_ingest_stage, run_simulate

    root = tmp_path_factory.mktemp("startup")
    raw = small_params_dict()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    params = parse_params(raw)
    run_simulate(params, root / "data/raw", root / "data/truth/ground_truth.parquet")
    run_ingest_stage(params, root, root / "data/canonical", root / "data/quarantine", root / "reports/ingest.json")
    return root


def test_feature_stage_imports_no_model_tracking_or_spark_library(project: Path) -> None:
    imported = imported_by(["features"], project)
    assert (project / "data/features/snapshots.parquet").is_file()  # the stage really ran
    assert "duckdb" in imported
    assert not imported & NOT_FOR_FEATURES, sorted(imported & NOT_FOR_FEATURES)


def test_scoring_a_model_folder_imports_neither_mlflow_nor_pyspark(project: Path) -> None:
    from churnlens import model, tracking
    from churnlens.config import TrainConfig
    from churnlens.contract import ModelContract
    from churnlens.stages import FeatureLists

    snapshots_path = project / "data/features/snapshots.parquet"
    if not snapshots_path.is_file():
        imported_by(["features"], project)
    snapshots = pd.read_parquet(snapshots_path)
    report_path = project / "reports/features.json"
    lists = FeatureLists.from_report(json.loads(report_path.read_text()), report_path)
    numeric, categorical = lists.numeric, lists.categorical
    labelled = snapshots[snapshots["label_complete"]]
    config = TrainConfig(xgboost={"n_estimators": 20})
    pipeline = model.build_pipeline(numeric, categorical, config).fit(
        model.model_input(labelled, numeric, categorical), labelled[model.LABEL].astype(int))
    folder = project / "models/plain_folder"
    tracking.save_model_dir(pipeline, model.model_input(labelled.head(5), numeric, categorical),
                            ModelContract(numeric, categorical).to_metadata(), folder)

    imported = imported_by(["score", "--model", str(folder), "--output", "scores/scores.parquet"], project)
    assert len(pd.read_parquet(project / "scores/scores.parquet")) > 0  # the job really scored
    assert {"xgboost", "sklearn"} <= imported  # the model's own libraries, loaded to predict
    assert not imported & NOT_FOR_SCORING_A_FOLDER, sorted(imported & NOT_FOR_SCORING_A_FOLDER)
