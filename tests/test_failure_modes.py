"""What a careless or hostile user can do to a run, tried with real `churnlens` processes:
every case ends in one clear message and exit code 1/2 (never a traceback), and a killed run
leaves nothing the next run could take for output."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from churnlens import io
from conftest import PROJECT_ROOT

CHURNLENS = str(Path(sys.executable).with_name("churnlens"))
HEADER = "customer_id,timestamp,amount\n"


def run(args: list[str], cwd: Path, env: dict | None = None, preexec=None, timeout: float = 180
        ) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "400", **(env or {})}  # rich wraps at the terminal width
    return subprocess.run([CHURNLENS, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec)


def assert_clean_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output and "MarkupError" not in output, output
    for fragment in fragments:
        assert fragment in output, output


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with params.yaml and an overlay mapping a tiny CSV export."""
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/t.csv").write_text(HEADER + "".join(
        f"C{i % 7},2024-{1 + i % 12:02d}-0{1 + i % 9} 10:00:00,{i}.5\n" for i in range(40)))
    overlay(tmp_path, {"ingest": {"transactions": {"path": "raw/t.csv"}, "interactions": None, "customers": None}})
    return tmp_path


def overlay(folder: Path, values: dict) -> list[str]:
    (folder / "overlay.yaml").write_text(yaml.safe_dump(values))
    return ["--params", "params.yaml", "--params", "overlay.yaml"]


PARAMS = ["--params", "params.yaml", "--params", "overlay.yaml"]


# ------------------------------------------------------------------ user text, params
def test_markup_characters_in_a_column_name_are_printed_not_interpreted(project: Path) -> None:
    args = overlay(project, {"ingest": {"transactions": {"path": "raw/t.csv", "columns": {"customer_id": "cust[/x]"}},
                                        "interactions": None, "customers": None}})
    assert_clean_error(run(["ingest", *args], project), 1, "customer_id -> 'cust[/x]' is not in the file")


def test_invalid_spark_memory_and_duplicate_keys_fail_validation(project: Path) -> None:
    args = overlay(project, {"engine": {"spark_driver_memory": "lots"},
                             "ingest": {"transactions": {"path": "raw/t.csv"}}})
    assert_clean_error(run(["ingest", *args], project), 2, "engine.spark_driver_memory")
    (project / "overlay.yaml").write_text("ingest:\n  max_quarantine_share: 0.1\n  max_quarantine_share: 0.9\n")
    assert_clean_error(run(["ingest", *PARAMS], project), 2, "duplicate key 'max_quarantine_share'")


# ------------------------------------------------------------------ missing and wrong inputs/outputs
def test_train_without_snapshots_names_the_file_and_the_fix(project: Path) -> None:
    assert_clean_error(run(["train", *PARAMS], project), 1, "data/features/snapshots.parquet",
                       "run the earlier stages first")


def test_corrupt_tracking_store_fails_before_training(project: Path) -> None:
    (project / "mlflow.db").write_bytes(b"this is not a database" * 100)
    for name in ("data/features/snapshots.parquet", "reports/features.json"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("not read: the store is checked first")
    assert_clean_error(run(["train", *PARAMS], project), 1, "tracking store sqlite:///mlflow.db cannot be read",
                       "move it aside")


@pytest.fixture
def ingested(project: Path) -> Path:
    assert run(["ingest", *PARAMS], project).returncode == 0
    return project


def test_duckdb_out_of_its_memory_share_names_the_setting_to_raise(ingested: Path) -> None:
    args = overlay(ingested, {"ingest": {"transactions": {"path": "raw/t.csv"}, "interactions": None,
                                         "customers": None},
                              "features": {"memory_limit": "1MB"}})
    assert_clean_error(run(["features", *args], ingested), 1, "features.memory_limit = 1MB",
                       "raise features.memory_limit")
    assert not (ingested / "data/features/snapshots.parquet").exists()


@pytest.mark.parametrize(("output", "message"), [
    ("data/canonical", "give a path ending in .parquet"),
    ("scores.csv", "give a path ending in .parquet"),
    ("folder.parquet", "folder.parquet: is a folder: give a file path"),
])
def test_score_output_that_is_a_folder_or_another_format(ingested: Path, output: str, message: str) -> None:
    (ingested / "folder.parquet").mkdir()
    assert_clean_error(run(["score", *PARAMS, "--output", output], ingested), 1, message)


def test_missing_truth_file_is_an_error_not_ignored(ingested: Path) -> None:
    assert_clean_error(run(["score", *PARAMS, "--truth", "nowhere/truth.parquet"], ingested), 1,
                       "nowhere/truth.parquet: not found")


def test_corrupt_store_and_credentials_in_score_messages(ingested: Path) -> None:
    (ingested / "mlflow.db").write_bytes(b"garbage" * 100)
    assert_clean_error(run(["score", *PARAMS], ingested), 1, "tracking store sqlite:///mlflow.db", "move it aside")
    secret = {"MLFLOW_TRACKING_URI": "http://bob:s3cr3t@127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = run(["score", *PARAMS], ingested, env=secret)
    assert_clean_error(result, 1, "http://***@127.0.0.1:9")
    assert "s3cr3t" not in result.stdout + result.stderr


def test_champion_missing_advice_works_when_the_pipeline_is_up_to_date(ingested: Path) -> None:
    assert_clean_error(run(["score", *PARAMS], ingested), 1, "models:/churnlens@champion",
                       "`churnlens train`, then `churnlens evaluate`")


# ------------------------------------------------------------------ disk full, read-only
def small_file_limit() -> None:
    """In the child: files may not grow past 64 kB, as on a full disk (EFBIG instead of a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))


def test_disk_full_during_ingest_is_one_message(project: Path) -> None:
    (project / "raw/t.csv").write_text(HEADER + "".join(f"C{i},2024-01-01 10:00:00,{i}\n" for i in range(40_000)))
    result = run(["ingest", *PARAMS], project, preexec=small_file_limit)
    assert_clean_error(result, 1, "File too large", "Free disk space")
    assert not list((project / "data/canonical").glob(".ingest.*"))


def test_unwritable_output_folder_is_one_message(project: Path) -> None:
    # /sys refuses new folders to everyone (read-only or not permitted), root included.
    result = run(["catalog", *PARAMS, "--output", "/sys/churnlens/features.md"], project)
    assert_clean_error(result, 1, "/sys/churnlens", "no permission")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder; needs an ordinary user")
def test_read_only_report_folder_leaves_the_scores_unchanged(ingested: Path) -> None:
    (ingested / "data/scores").mkdir(parents=True)
    (ingested / "data/scores/scores.parquet").write_bytes(b"previous scores")
    (ingested / "locked").mkdir()
    (ingested / "locked").chmod(0o555)
    try:
        result = run(["score", *PARAMS, "--report", "locked/segment_report.json"], ingested)
    finally:
        (ingested / "locked").chmod(0o755)
    assert_clean_error(result, 1, "locked", "make the folder writable")
    assert (ingested / "data/scores/scores.parquet").read_bytes() == b"previous scores"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder; needs an ordinary user")
def test_read_only_output_folder_for_ingest(project: Path) -> None:
    (project / "data").mkdir()
    (project / "data").chmod(0o555)
    try:
        result = run(["ingest", *PARAMS], project)
    finally:
        (project / "data").chmod(0o755)
    assert_clean_error(result, 1, "data/canonical", "no permission")


# ------------------------------------------------------------------ killed runs, leftovers, modes
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_killed_ingest_leaves_nothing_behind_after_the_next_run(project: Path) -> None:
    rows = "".join(f"C{i % 5000},2024-01-01 10:{i % 60:02d}:00,{i}\n" for i in range(200_000))
    (project / "raw/t.csv").write_text(HEADER + rows)
    process = subprocess.Popen([CHURNLENS, "ingest", *PARAMS], cwd=project, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any((project / "data/canonical").glob(".ingest.*/ingest.duckdb*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any((project / "data/canonical").glob(".ingest.*")), "the kill came too late to leave a work folder"
    assert run(["ingest", *PARAMS], project).returncode == 0
    assert sorted(p.name for p in (project / "data/canonical").iterdir()) == ["transactions.parquet"]
    report = io.read_json(project / "reports/ingest_report.json")
    assert report["rows_read"] == 200_000 == report["accepted"]


def test_a_killed_writers_temporary_is_removed_and_outputs_honour_the_umask(tmp_path: Path) -> None:
    folder = tmp_path / "data/scores"
    folder.mkdir(parents=True)
    leftover = folder / f".scores.parquet.{dead_pid()}.x1y2.tmp"
    leftover.write_bytes(b"half-written")
    previous = os.umask(0o022)
    try:
        io.write_parquet(pd.DataFrame({"customer_id": ["A"], "p": [0.5]}), folder / "scores.parquet")
    finally:
        os.umask(previous)
    assert sorted(p.name for p in folder.iterdir()) == ["scores.parquet"]
    assert (folder / "scores.parquet").stat().st_mode & 0o777 == 0o644


def test_ingest_outputs_are_0644_under_umask_022(project: Path) -> None:
    result = run(["ingest", *PARAMS], project, preexec=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    for path in ("data/canonical/transactions.parquet", "data/quarantine/transactions.parquet",
                 "reports/ingest_report.json"):
        assert (project / path).stat().st_mode & 0o777 == 0o644, path


# ------------------------------------------------------------------ one-class labels
def test_every_customer_churned_is_a_clear_message(tracking_store: str, tmp_path: Path) -> None:
    from churnlens.config import load_params
    from churnlens.stages import run_train

    cutoffs = pd.date_range("2023-01-01", periods=12, freq="30D")
    snapshots = pd.DataFrame([{"customer_id": f"C{i}", "cutoff": c, "churned": 1, "label_complete": True,
                               "recency_days": float(i)} for c in cutoffs for i in range(20)])
    snapshots.to_parquet(tmp_path / "snapshots.parquet")
    report = {"features": ["recency_days"], "categorical": []}
    io.write_json(report, tmp_path / "features.json")
    params = load_params(PROJECT_ROOT / "params.yaml")
    with pytest.raises(ValueError, match=r"no 'model_features' list .* rerun `dvc repro features`"):
        run_train(params, tmp_path / "snapshots.parquet", tmp_path / "features.json", tmp_path / "model",
                  tmp_path / "train.json", tmp_path)
    io.write_json({**report, "model_features": ["recency_days"]}, tmp_path / "features.json")
    with pytest.raises(ValueError, match=r"every labelled customer in the training cutoffs has churned=1.*needs "
                                         r"both outcomes"):
        run_train(params, tmp_path / "snapshots.parquet", tmp_path / "features.json", tmp_path / "model",
                  tmp_path / "train.json", tmp_path)
    assert not (tmp_path / "model").exists()


# ------------------------------------------------------------------ the UI
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_stopping_the_ui_stops_its_mlflow_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "COLUMNS": "400"}
    ui = subprocess.Popen([CHURNLENS, "ui", "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not port_open(port) and time.monotonic() < deadline and ui.poll() is None:
            time.sleep(0.2)
        assert port_open(port), "the MLflow server did not start"
        ui.send_signal(signal.SIGTERM)  # what `kill` and service managers send; Ctrl-C takes the same path
        ui.wait(timeout=30)
        deadline = time.monotonic() + 15
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not port_open(port), "the MLflow server outlived churnlens ui"
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()


def test_ui_start_line_redacts_credentials(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": "postgresql://bob:s3cr3t@127.0.0.1:9/mlflow", "COLUMNS": "400"}
    ui = subprocess.Popen([CHURNLENS, "ui", "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = ui.communicate(timeout=90)  # the server cannot reach the store and stops
    finally:
        if ui.poll() is None:
            os.kill(ui.pid, signal.SIGTERM)
            output, _ = ui.communicate(timeout=30)
    assert "postgresql://***@127.0.0.1:9/mlflow" in output
    assert "s3cr3t" not in output.split("MLflow UI on", 1)[1].splitlines()[0]

