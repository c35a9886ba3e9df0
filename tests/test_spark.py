"""The Spark engine against the DuckDB engine on the same data, with a real local Spark."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from spark_checks import assert_same_frames, assert_same_scores

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


@pytest.mark.parametrize("config", [
    FeaturesConfig(),
    FeaturesConfig(label="no_purchase", lead_days=7, partial_churn_below=0.4, windows_days=(14, 60, 180)),
], ids=["defaults", "lead-partial-other-windows"])
def test_spark_features_equal_duckdb_features(spark, small_data, tmp_path: Path, config: FeaturesConfig) -> None:
    from churnlens.engines import spark as engine

    paths = parquet_tables(small_data, tmp_path)
    data_start, data_end = single_machine.data_span(paths)
    cutoffs = list(pd.date_range(data_start.normalize() + pd.Timedelta(days=150), data_end, freq="45D"))
    assert len(cutoffs) >= 5
    expected, plan = single_machine.compute_snapshots(paths, cutoffs, config)
    snapshots, spark_plan = engine.compute_snapshots(spark, engine.read_tables(spark, paths), cutoffs, config)
    assert spark_plan.names == plan.names and len(plan.names) > 40
    assert_same_frames(expected, snapshots.toPandas(), ["customer_id", "cutoff"])


def test_spark_features_equal_duckdb_features_on_a_log_without_amounts(spark, small_data, tmp_path: Path) -> None:
    from churnlens.engines import spark as engine
    from test_features import PURCHASE_FEATURES, dates_only

    path = str(tmp_path / "transactions.parquet")
    dates_only(small_data.transactions).to_parquet(path, index=False)
    paths = {"transactions": path}
    data_start, data_end = single_machine.data_span(paths)
    cutoffs = list(pd.date_range(data_start.normalize() + pd.Timedelta(days=150), data_end, freq="90D"))
    expected, plan = single_machine.compute_snapshots(paths, cutoffs, FeaturesConfig())
    snapshots, spark_plan = engine.compute_snapshots(spark, engine.read_tables(spark, paths), cutoffs,
                                                     FeaturesConfig())
    assert spark_plan.names == plan.names and set(PURCHASE_FEATURES) <= set(plan.names)
    assert "spend_365d" in plan.left_out
    assert_same_frames(expected, snapshots.toPandas(), ["customer_id", "cutoff"])


def parquet_tables(data, folder: Path) -> dict[str, str]:
    paths = {}
    for name in ("transactions", "interactions", "customers"):
        paths[name] = str(folder / f"{name}.parquet")
        getattr(data, name).to_parquet(paths[name], index=False)
    return paths


def test_feature_families_read_the_cached_events_without_a_shuffle(spark, small_data, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """The events and the population are cached hashed by customer once; the families' joins and
    the assembly then find them partitioned: no exchange of the snapshot query reads a cached step.
    Broadcast joins are off, so the small test data plans the sort-merge joins of a large log."""
    from churnlens.engines import spark as engine

    paths = parquet_tables(small_data, tmp_path)
    data_start, data_end = single_machine.data_span(paths)
    cutoffs = list(pd.date_range(data_start.normalize() + pd.Timedelta(days=150), data_end, freq="90D"))
    before = spark.conf.get("spark.sql.autoBroadcastJoinThreshold")
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        snapshot, _ = engine.assembled_snapshot(spark, engine.read_tables(spark, paths), cutoffs, FeaturesConfig(),
                                                with_labels=True)
        capsys.readouterr()
        snapshot.explain()  # the physical plan as planned, one node a line
        plan = capsys.readouterr().out
    finally:
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", before)
        engine.release()
    assert "SortMergeJoin" in plan and "Exchange " in plan
    assert exchanges_over_a_cache(plan) == []


def exchanges_over_a_cache(plan: str) -> list[str]:
    """Exchanges whose input is a cached step read as is (maybe through filters and projections)."""
    nodes = [re.sub(r"^[\s:|+-]*", "", line) for line in plan.splitlines()]
    found = []
    for index, node in enumerate(nodes):
        if node.startswith("Exchange "):
            below = index + 1
            while nodes[below].startswith(("Filter ", "Project ")):
                below += 1
            if nodes[below].startswith("InMemoryTableScan "):
                found.append(node)
    return found


def test_features_stage_on_spark_writes_the_same_snapshots(spark, reviewed_project: dict, tmp_path: Path) -> None:
    """Also on a session whose owner chose other settings than churnlens would: they survive the job."""
    root, params = reviewed_project["root"], reviewed_project["params"]
    on_spark = params.model_copy(update={"engine": params.engine.model_copy(update={"name": "spark"})})
    own = {"spark.sql.shuffle.partitions": "5", "spark.sql.adaptive.enabled": "false"}
    before = {key: spark.conf.get(key) for key in own}
    for key, value in own.items():
        spark.conf.set(key, value)
    try:
        report = run_features(on_spark, root / "data/canonical", tmp_path / "snapshots.parquet", tmp_path / "f.json")
        assert {key: spark.conf.get(key) for key in own} == own
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)
    # With adaptive execution off, the write keeps the caller's 5 shuffle partitions: 5 part files.
    assert len(list((tmp_path / "snapshots.parquet").glob("part-*.parquet"))) == 5
    written = pd.read_parquet(tmp_path / "snapshots.parquet")  # a folder of part files
    expected = pd.read_parquet(root / "data/features/snapshots.parquet")
    assert report["rows"] == len(expected)
    assert_same_frames(expected, written[expected.columns], ["customer_id", "cutoff"])


def test_spark_scores_equal_single_machine_scores(spark, reviewed_project: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same registered model, applied inside mapInPandas, gives the same scores."""
    root, params = reviewed_project["root"], reviewed_project["params"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reviewed_project["tracking_uri"])
    on_spark = params.model_copy(update={"engine": params.engine.model_copy(update={"name": "spark"})})
    single = pd.read_parquet(root / "data/scores/scores.parquet")
    as_of = pd.Timestamp(single["as_of"].iloc[0])
    report = run_score(ScoreJob(on_spark, root / "data/canonical", "models:/churnlens@champion", tmp_path / "scores.parquet",
                       tmp_path / "report.json", as_of=as_of, manifest_path=tmp_path / "manifest.json",
                       archive_dir=tmp_path / "runs"))
    # The default reasons are the campaign's (score.reasons_for): Spark explains its rows after the ranking.
    assert on_spark.score.reasons_for == "campaign" and 0 < single["in_campaign"].sum() < len(single)
    assert_same_scores(single, tmp_path / "scores.parquet")
    # The run kept for monitoring holds the rows a scorecard reads, as the single machine scored them.
    from churnlens.stages import MONITORED_COLUMNS

    (kept,) = (tmp_path / "runs").iterdir()
    assert_same_frames(single[list(MONITORED_COLUMNS)], pd.read_parquet(kept / "scores.parquet"), ["customer_id"])
    assert report["customers"] == len(single)
    manifest = pd.read_json(tmp_path / "manifest.json", typ="series")
    assert manifest["engine"] == "spark" and manifest["model_version"] == reviewed_project["trained"]["model_version"]
