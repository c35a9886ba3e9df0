"""The Spark engine against the DuckDB engine on the same data, with a real local Spark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnlens.engines import duckdb as single_machine
from churnlens.config import FeaturesConfig
from churnlens.score import ScoreJob
from churnlens.stages import run_features, run_score

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark():
    from churnlens.engines import spark as engine

    session = engine.session("local[2]", "4g")
    yield session
    session.stop()


def assert_same_frames(duckdb_frame: pd.DataFrame, spark_frame: pd.DataFrame, key: list[str]) -> None:
    """Every column of every row equal, floats within a relative 1e-9 (summation order differs)."""
    left = duckdb_frame.sort_values(key).reset_index(drop=True)
    right = spark_frame.sort_values(key).reset_index(drop=True)
    assert list(left.columns) == list(right.columns)
    assert len(left) == len(right) > 0
    for column in left.columns:
        if pd.api.types.is_float_dtype(left[column]):
            a, b = left[column].to_numpy(float), right[column].to_numpy(float)
            assert np.array_equal(np.isnan(a), np.isnan(b)), column
            assert np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True), column
        else:
            same = left[column].astype("string").fillna("<NA>") == right[column].astype("string").fillna("<NA>")
            assert same.all(), f"{column}: {left.loc[~same, column].head(3).tolist()} != " \
                               f"{right.loc[~same, column].head(3).tolist()}"


@pytest.mark.parametrize("config", [
    FeaturesConfig(),
    FeaturesConfig(label="no_purchase", lead_days=7, partial_churn_below=0.4, windows_days=(14, 60, 180)),
], ids=["defaults", "lead-partial-other-windows"])
def test_spark_features_equal_duckdb_features(spark, small_data, tmp_path: Path, config: FeaturesConfig) -> None:
    from churnlens.engines import spark as engine

    paths = {}
    for name, frame in (("transactions", small_data.transactions), ("interactions", small_data.interactions),
                        ("customers", small_data.customers)):
        paths[name] = str(tmp_path / f"{name}.parquet")
        frame.to_parquet(paths[name], index=False)
    data_start, data_end = single_machine.data_span(paths)
    cutoffs = list(pd.date_range(data_start.normalize() + pd.Timedelta(days=150), data_end, freq="45D"))
    assert len(cutoffs) >= 5
    expected, plan = single_machine.compute_snapshots(paths, cutoffs, config)
    snapshots, spark_plan = engine.compute_snapshots(spark, engine.read_tables(spark, paths), cutoffs, config)
    assert spark_plan.names == plan.names and len(plan.names) > 40
    assert_same_frames(expected, snapshots.toPandas(), ["customer_id", "cutoff"])


def test_features_stage_on_spark_writes_the_same_snapshots(spark, reviewed_project: dict, tmp_path: Path) -> None:
    root, params = reviewed_project["root"], reviewed_project["params"]
    on_spark = params.model_copy(update={"engine": params.engine.model_copy(update={"name": "spark"})})
    report = run_features(on_spark, root / "data/canonical", tmp_path / "snapshots.parquet", tmp_path / "f.json")
    written = pd.read_parquet(tmp_path / "snapshots.parquet")  # a folder of part files
    expected = pd.read_parquet(root / "data/features/snapshots.parquet")
    assert report["rows"] == len(expected)
    assert_same_frames(expected, written[expected.columns], ["customer_id", "cutoff"])


def test_spark_scores_equal_single_machine_scores(spark, reviewed_project: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same registered model, applied with mlflow.pyfunc.spark_udf, gives the same scores."""
    root, params = reviewed_project["root"], reviewed_project["params"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reviewed_project["tracking_uri"])
    on_spark = params.model_copy(update={"engine": params.engine.model_copy(update={"name": "spark"})})
    single = pd.read_parquet(root / "data/scores/scores.parquet")
    as_of = pd.Timestamp(single["as_of"].iloc[0])
    report = run_score(ScoreJob(on_spark, root / "data/canonical", "models:/churnlens@champion", tmp_path / "scores.parquet",
                       tmp_path / "report.json", as_of=as_of, manifest_path=tmp_path / "manifest.json"))
    on_cluster = pd.read_parquet(tmp_path / "scores.parquet")
    # Spark writes a TIMESTAMP (an instant, in its UTC session) that pandas reads back naive.
    as_of_on_cluster = on_cluster["as_of"]
    if as_of_on_cluster.dt.tz is None:
        as_of_on_cluster = as_of_on_cluster.dt.tz_localize("UTC")
    on_cluster["as_of"] = as_of_on_cluster.astype(single["as_of"].dtype)
    assert_same_frames(single, on_cluster[single.columns], ["customer_id"])
    assert report["customers"] == len(single)
    manifest = pd.read_json(tmp_path / "manifest.json", typ="series")
    assert manifest["engine"] == "spark" and manifest["model_version"] == reviewed_project["trained"]["model_version"]
