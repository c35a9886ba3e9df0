"""The Spark engine beyond one JVM: the CLI against a standalone cluster (a master and two workers,
executors in processes of their own) and against a Spark Connect server, each checked against
the single-machine engine. Run alone with ``pytest -m "spark_cluster or spark_connect"``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from spark_checks import assert_same_frames, assert_same_scores
from spark_processes import Daemons, connect_server, standalone_cluster

CLI = str(Path(sys.executable).with_name("churnlens"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One small cluster for the module: 2 workers x 1 core x 1 GB, the CI machine's two cores."""
    daemons = Daemons(tmp_path_factory.mktemp("spark-standalone"))
    try:
        yield standalone_cluster(daemons, workers=2, cores=1, memory="1g"), daemons.folder
    finally:
        daemons.stop()


@pytest.fixture(scope="module")
def connect(tmp_path_factory: pytest.TempPathFactory):
    daemons = Daemons(tmp_path_factory.mktemp("spark-connect"))
    try:
        yield connect_server(daemons, master="local[2]")
    finally:
        daemons.stop()


def churnlens(reviewed_project: dict, conf_dir: Path, *args: str) -> None:
    """The CLI in a process of its own: the driver is neither pytest nor an executor."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": reviewed_project["tracking_uri"], "PYSPARK_PYTHON": sys.executable,
           "SPARK_CONF_DIR": str(conf_dir)}
    done = subprocess.run([CLI, *args, "--params", str(reviewed_project["root"] / "params.yaml")],
                          env=env, cwd=reviewed_project["root"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def assert_cli_features_and_scores_equal_duckdb(reviewed_project: dict, master: str, out: Path) -> None:
    root = reviewed_project["root"]
    engine = ["--engine", "spark", "--spark-master", master]
    # A cluster's shuffle partitions are its operator's choice (spark-defaults.conf), not churnlens's:
    # Spark's 200 suit many cores; this cluster has two.
    conf_dir = out / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("spark.sql.shuffle.partitions 4\n")
    churnlens(reviewed_project, conf_dir, "features", "--canonical-dir", str(root / "data/canonical"),
              "--output", str(out / "snapshots.parquet"), "--report", str(out / "features.json"), *engine)
    expected = pd.read_parquet(root / "data/features/snapshots.parquet")
    written = pd.read_parquet(out / "snapshots.parquet")
    assert_same_frames(expected, written[expected.columns], ["customer_id", "cutoff"])

    single = pd.read_parquet(root / "data/scores/scores.parquet")
    as_of = pd.Timestamp(single["as_of"].iloc[0]).date().isoformat()
    churnlens(reviewed_project, conf_dir, "score", "--canonical-dir", str(root / "data/canonical"),
              "--model", "models:/churnlens@champion", "--as-of", as_of, "--output", str(out / "scores.parquet"),
              "--report", str(out / "report.json"), "--manifest", str(out / "manifest.json"), *engine)
    assert_same_scores(single, out / "scores.parquet")
    manifest = pd.read_json(out / "manifest.json", typ="series")
    assert manifest["engine"] == "spark" and manifest["model_version"] == reviewed_project["trained"]["model_version"]


@pytest.mark.spark
@pytest.mark.spark_cluster
def test_cli_on_a_standalone_cluster_equals_duckdb(cluster: tuple[str, Path], reviewed_project: dict,
                                                   tmp_path: Path) -> None:
    master, folder = cluster
    assert master.startswith("spark://127.0.0.1:")
    assert_cli_features_and_scores_equal_duckdb(reviewed_project, master, tmp_path)
    # Both workers ran executors of their own (each keeps a folder per application and executor).
    for worker in ("work-0", "work-1"):
        assert list((folder / worker).glob("app-*/*/stderr")), f"no executor ran on {worker}"


@pytest.mark.spark
@pytest.mark.spark_connect
def test_cli_over_spark_connect_equals_duckdb(connect: str, reviewed_project: dict, tmp_path: Path) -> None:
    assert connect.startswith("sc://127.0.0.1:")
    assert_cli_features_and_scores_equal_duckdb(reviewed_project, connect, tmp_path)
