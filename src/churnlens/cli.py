"""``churnlens``: one thin command per pipeline stage, plus the standalone scoring job and the UI."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from churnlens.config import ConfigError, Params, load_params, parse_params

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)
log = logging.getLogger("churnlens")

ParamsOption = Annotated[list[Path], typer.Option(
    "--params", help="parameter file(s); later files override earlier ones key by key")]
DEFAULT_PARAMS = [Path("params.yaml")]


def _print_version(requested: bool) -> None:
    if requested:
        import importlib.metadata

        typer.echo(f"churnlens {importlib.metadata.version('churnlens')}")
        raise typer.Exit()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="print the version and exit")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _params(paths: list[Path]) -> Params:
    try:
        return load_params(*paths)
    except ConfigError as exc:
        _print_error(str(exc))
        raise typer.Exit(2) from None


def _print_error(message: str) -> None:
    from churnlens.redaction import redact

    # User text (keys, column names, paths) may hold "[/x]", which rich would read as markup.
    console.print(f"[red]error:[/red] {escape(redact(message))}")


def _fail(exc: Exception | str) -> typer.Exit:
    _print_error(str(exc))
    return typer.Exit(1)


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space (or point the output elsewhere) and run again",
    errno.EFBIG: "the file grew past the size this process may write (disk quota or ulimit -f)",
    errno.EDQUOT: "the disk quota is used up: free space and run again",
    errno.EACCES: "no permission: make the folder writable or choose another output path",
    errno.EPERM: "no permission: make the folder writable or choose another output path",
    errno.EROFS: "the file system is read-only: choose an output path on a writable one",
    errno.ENOENT: "not found: check the path, or run the earlier stages first (`dvc repro`)",
    errno.EISDIR: "is a folder: give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def _os_error_message(exc: OSError) -> str:
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
    hint = _OS_HINTS.get(exc.errno or -1, exc.strerror or str(exc))
    detail = f" ({exc.strerror})" if exc.strerror and exc.errno in _OS_HINTS else ""
    return f"{where}: {hint}{detail}"


def _from_store(exc: BaseException) -> bool:
    return any(k.__module__.split(".")[0] in ("sqlalchemy", "mlflow") for k in type(exc).__mro__)


def _user_errors(command: Callable) -> Callable:
    """Every error a user can cause ends as one message and exit code 1, never a traceback."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except ConfigError as exc:
            _print_error(str(exc))
            raise typer.Exit(2) from None
        except Exception as exc:
            log.debug("traceback (shown with --verbose)", exc_info=True)
            if isinstance(exc, OSError):
                raise _fail(_os_error_message(exc)) from None
            if _from_store(exc):
                raise _fail(_store_message(exc)) from None
            if type(exc).__module__.split(".")[0] == "duckdb":
                raise _fail(f"DuckDB: {str(exc).splitlines()[0]}") from None
            if isinstance(exc, ImportError):
                raise _fail(f"a Python package is missing: {exc}; install it into this environment") from None
            if isinstance(exc, ValueError | LookupError | RuntimeError):
                raise _fail(exc) from None
            raise

    return guarded


def _store_message(exc: BaseException) -> str:
    from churnlens.redaction import tracking_uri_shown

    return (f"tracking store {tracking_uri_shown()}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            "If the store is corrupt, restore it or move it aside (a new one is created); or set MLFLOW_TRACKING_URI")


@app.command()
@_user_errors
def simulate(
    params: ParamsOption = DEFAULT_PARAMS,
    raw_dir: Annotated[Path, typer.Option(help="where the raw tables go")] = Path("data/raw"),
    truth: Annotated[Path, typer.Option(help="ground truth (persona, churn date); evaluation only")] = Path(
        "data/truth/ground_truth.parquet"),
    campaign: Annotated[Path | None, typer.Option(
        help="a scoring run `churnlens score --archive-dir` kept: simulate the world in which its campaign treated "
             "the customers it selected and did not hold out (simulate.campaign_effects), to check what "
             "`churnlens monitor` measures")] = None,
) -> None:
    """Generate the embedded default data set (seeded)."""
    from churnlens.stages import run_simulate

    counts = run_simulate(_params(params), raw_dir, truth, campaign)
    log.info("simulated %s", counts)


@app.command()
@_user_errors
def ingest(
    params: ParamsOption = DEFAULT_PARAMS,
    base: Annotated[Path, typer.Option(help="folder the source paths in params are relative to")] = Path("."),
    canonical_dir: Annotated[Path, typer.Option()] = Path("data/canonical"),
    quarantine_dir: Annotated[Path, typer.Option()] = Path("data/quarantine"),
    report: Annotated[Path, typer.Option()] = Path("reports/ingest_report.json"),
) -> None:
    """Validate raw tables into canonical Parquet; quarantine bad rows with a reason."""
    from churnlens.ingest import IngestError
    from churnlens.stages import run_ingest_stage

    try:
        result = run_ingest_stage(_params(params), base, canonical_dir, quarantine_dir, report)
    except IngestError as exc:
        raise _fail(exc) from None
    log.info("ingest: read %d, accepted %d, quarantined %d, duplicates removed %d", result["rows_read"],
             result["accepted"], result["quarantined"], result["duplicates_removed"])


EngineOption = Annotated[str | None, typer.Option(
    help="duckdb (this machine) or spark; default: engine.name in params")]
CanonicalDirOption = Annotated[str, typer.Option(help="folder (or URI, on Spark) of canonical Parquet")]
SparkMasterOption = Annotated[str | None, typer.Option(
    help="Spark master URL (local[4], spark://host:7077, yarn, k8s://...); default: engine.spark_master")]


def _with_engine(params: Params, engine: str | None, spark_master: str | None) -> Params:
    """Params with the engine the command line asks for (validated like params.yaml)."""
    raw = params.model_dump(mode="json")
    if engine is not None:
        raw["engine"]["name"] = engine
    if spark_master is not None:
        raw["engine"]["spark_master"] = spark_master
    try:
        return parse_params(raw, "--engine/--spark-master")
    except ConfigError as exc:
        raise _fail(exc) from None


@app.command()
@_user_errors
def features(
    params: ParamsOption = DEFAULT_PARAMS,
    canonical_dir: CanonicalDirOption = "data/canonical",
    output: Annotated[str, typer.Option(help="snapshots keyed by (customer_id, cutoff)")
                      ] = "data/features/snapshots.parquet",
    report: Annotated[Path, typer.Option()] = Path("reports/features.json"),
    engine: EngineOption = None,
    spark_master: SparkMasterOption = None,
) -> None:
    """Point-in-time features and churn labels at every cutoff."""
    from churnlens.stages import run_features

    try:
        result = run_features(_with_engine(_params(params), engine, spark_master), canonical_dir, output, report)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    log.info("features: %d rows, %d cutoffs (%d fully labelled), %d features; left out: %s", result["rows"],
             result["cutoffs"], result["complete_cutoffs"], len(result["features"]), result["left_out"] or "none")


@app.command()
@_user_errors
def train(
    params: ParamsOption = DEFAULT_PARAMS,
    snapshots: Annotated[Path, typer.Option()] = Path("data/features/snapshots.parquet"),
    features_report: Annotated[Path, typer.Option()] = Path("reports/features.json"),
    model_dir: Annotated[Path, typer.Option(help="model in MLflow format (DVC output)")] = Path("models/churn_model"),
    report: Annotated[Path, typer.Option()] = Path("reports/train.json"),
) -> None:
    """Train on earlier cutoffs, early-stop on later ones, log to MLflow, register as challenger."""
    from churnlens.stages import run_train

    try:
        result = run_train(_params(params), snapshots, features_report, model_dir, report, Path.cwd())
    except ValueError as exc:
        raise _fail(exc) from None
    log.info("trained %s v%s (run %s), %d trees", result["model_name"], result["model_version"], result["run_id"],
             result["metrics"]["best_iteration"])


@app.command()
@_user_errors
def evaluate(
    params: ParamsOption = DEFAULT_PARAMS,
    snapshots: Annotated[Path, typer.Option()] = Path("data/features/snapshots.parquet"),
    model_dir: Annotated[Path, typer.Option()] = Path("models/churn_model"),
    train_report: Annotated[Path, typer.Option()] = Path("reports/train.json"),
    metrics: Annotated[Path, typer.Option()] = Path("reports/metrics.json"),
    plots_dir: Annotated[Path, typer.Option()] = Path("reports/plots"),
    headline: Annotated[Path | None, typer.Option(help="the few headline metrics (JSON) that DVC compares")
                        ] = None,
    deployed: Annotated[Path | None, typer.Option(help="where to write the registered version this run deployed "
                                                       "(what `score --deployed` scores); default: beside --metrics")
                        ] = None,
) -> None:
    """Holdout metrics against baselines, plots, and the champion: the challenger, the current
    champion or a baseline, so that one always serves."""
    from churnlens.stages import run_evaluate

    try:
        result = run_evaluate(_params(params), snapshots, model_dir, train_report, metrics, plots_dir, headline,
                              deployed)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    m, promotion = result["model"], result["promotion"]
    best = max((name for name in result["beats_baselines"]), key=lambda name: result[name].get("roc_auc", 0.0))
    log.info("holdout %s: ROC AUC %.3f (best baseline %s %.3f), PR AUC %.3f, Brier %.4f, lift@10%% %.2f",
             result["holdout_cutoff"], m["roc_auc"], best, result[best].get("roc_auc", float("nan")), m["pr_auc"],
             m["brier"], m["top_decile_lift"])
    log.info("v%s %s: %s", promotion["challenger_version"], "promoted to champion" if promotion["promoted"]
             else "not promoted", promotion["reason"])
    serving = promotion["deployed"]
    log.info("champion: %s v%s (%s, %s)", serving["model_name"], serving["model_version"], serving["kind"],
             serving["decision"])
    log.info("wrote %s and %s/", metrics, plots_dir)


@app.command()
@_user_errors
def score(
    params: ParamsOption = DEFAULT_PARAMS,
    canonical_dir: CanonicalDirOption = "data/canonical",
    model: Annotated[str | None, typer.Option(help="models:/<name>@<alias>, models:/<name>/<version> or a "
                                                   "model folder; default: score.model_uri")] = None,
    deployed: Annotated[Path | None, typer.Option(
        help="score the exact version evaluate deployed, as its deployed.json names it (what the pipeline "
             "does); instead of --model")] = None,
    as_of: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="scoring date (its midnight, UTC)")
                     ] = None,
    output: Annotated[str, typer.Option(help="Parquet file (a Parquet folder on Spark; URIs allowed there)")
                      ] = "data/scores/scores.parquet",
    csv: Annotated[str | None, typer.Option(help="the rounded CSV copy (for a CRM); default: beside --output, "
                                                 "scores.csv (see docs/scores.md)")] = None,
    report: Annotated[Path | None, typer.Option(help="segment report JSON (and a PNG beside it); default: "
                                                     "beside --output")] = None,
    manifest: Annotated[Path | None, typer.Option(help="run manifest JSON; default: beside --output")] = None,
    headline: Annotated[Path | None, typer.Option(help="the headline segment metrics (JSON) that DVC compares")
                        ] = None,
    truth: Annotated[Path | None, typer.Option(help="known personas (simulated data): report segment macro-F1")
                     ] = None,
    outcomes: Annotated[Path | None, typer.Option(
        help="canonical transactions of a later extract: report how each segment behaved in the "
             "features.horizon_days after the as-of date (construct validity)")] = None,
    archive_dir: Annotated[Path | None, typer.Option(
        help="keep this run (its scores and manifest) in a folder of its own here, for `churnlens monitor`")] = None,
    engine: EngineOption = None,
    spark_master: SparkMasterOption = None,
) -> None:
    """Score every active customer: churn probability, risk tier, segment, action, priority.

    Runs inside `dvc repro` or alone (cron, Airflow). The previous scores at --output, if any,
    are compared with the new ones to report how many customers changed segment.
    """
    import sys

    import pandas as pd

    from churnlens.score import ScoreJob
    from churnlens.stages import run_score
    from churnlens.tracking import ModelNotFoundError

    loaded_params = _with_engine(_params(params), engine, spark_master)
    if deployed is not None and model is not None:
        raise _fail(ValueError("score: give --deployed (the version evaluate deployed) or --model, not both"))
    _check_score_paths(loaded_params.engine.name, output, csv, report, manifest, truth)
    local_output = "://" not in output and Path(output).exists()
    previous = pd.read_parquet(output, columns=["customer_id", "segment"]) if local_output else None
    known = pd.read_parquet(truth, columns=["customer_id", "persona"]) if truth is not None else None
    try:
        result = run_score(ScoreJob(loaded_params, canonical_dir, model or loaded_params.score.model_uri, output, report,
                           pd.Timestamp(as_of) if as_of else None, csv, Path.cwd(), previous=previous,
                           manifest_path=manifest, truth=known, show_progress=sys.stderr.isatty(),
                           headline_path=headline, outcomes=outcomes, archive_dir=archive_dir), deployed)
    except (ModelNotFoundError, ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    log.info("scored %d customers as of %s with %s v%s; campaign: %d customers, expected value saved %.0f",
             result["customers"], result["as_of"], result["model_name"], result["model_version"],
             result["campaign_customers"], result["campaign_expected_value_saved"])
    log.info("wrote %s", ", ".join(str(path) for path in result["outputs"].values() if path))


@app.command()
def monitor(
    params: ParamsOption = DEFAULT_PARAMS,
    runs: Annotated[Path, typer.Option(help="the folder `churnlens score --archive-dir` keeps runs in")
                    ] = Path("data/scores/runs"),
    canonical_dir: CanonicalDirOption = "data/canonical",
    report: Annotated[Path, typer.Option(help="the scorecards (JSON)")] = Path("reports/monitor.json"),
    plot: Annotated[Path, typer.Option(help="figures over scoring dates (PNG)")] = Path("reports/monitor.png"),
    headline: Annotated[Path | None, typer.Option(help="the newest closed run's figures (JSON) that DVC compares")
                        ] = None,
) -> None:
    """Scorecards of earlier scoring runs against newer data: realised figures once a label window
    closes (interim before), the label-free estimate beside them, treated against control, and a
    retrain recommendation; logged to MLflow on the model version that scored."""
    from churnlens.stages import run_monitor

    loaded_params = _params(params)
    try:
        result = run_monitor(loaded_params, runs, Path(canonical_dir), report, plot, headline)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    closed = sum(card["status"] == "closed" for card in result["runs"])
    log.info("monitored %d scoring runs (%d with a closed window); wrote %s and %s", len(result["runs"]), closed,
             report, plot)


def _check_score_paths(engine: str, output: str, csv: str | None, report: Path | None, manifest: Path | None,
                      truth: Path | None) -> None:
    """Refuse outputs that cannot be written before scoring, so no output is replaced while another fails."""
    from churnlens.io import ensure_writable

    if truth is not None and not truth.is_file():
        raise FileNotFoundError(errno.ENOENT, "not found", str(truth))
    local = [Path(p) for p in (output, csv) if p is not None and "://" not in p]
    if engine == "duckdb":
        if Path(output).suffix != ".parquet":
            raise ValueError(f"--output {output}: the scores are written as Parquet; give a path ending in .parquet")
        if csv is not None and Path(csv).suffix != ".csv":
            raise ValueError(f"--csv {csv}: give a path ending in .csv")
        ensure_writable(*local)
    # Reports and manifest not given go beside the output, whose folder is checked above.
    side_files = [*([report, report.with_suffix(".png")] if report else []), *([manifest] if manifest else [])]
    ensure_writable(*side_files)


@app.command()
@_user_errors
def catalog(output: Annotated[Path, typer.Option()] = Path("docs/features.md"),
            params: ParamsOption = DEFAULT_PARAMS,
            scores: Annotated[Path, typer.Option(help="the scores file's data dictionary")] = Path("docs/scores.md"),
            ) -> None:
    """Regenerate the feature catalog and the scores dictionary from their definitions."""
    from churnlens.features import definitions_for, feature_catalog_markdown
    from churnlens.io import atomic_path
    from churnlens.score import scores_dictionary_markdown

    texts = {output: feature_catalog_markdown(definitions_for(_params(params).features)),
             scores: scores_dictionary_markdown()}
    for target, text in texts.items():
        with atomic_path(target) as temporary:
            temporary.write_text(text, encoding="utf-8")
        log.info("wrote %s", target)


@app.command()
@_user_errors
def init(
    folder: Annotated[Path, typer.Argument(help="new (or empty) folder for the project")],
    transactions: Annotated[list[str], typer.Option(
        help="transaction export: file, folder or glob; repeat for several exports of one log")],
    interactions: Annotated[list[str] | None, typer.Option(help="interaction log export (optional)")] = None,
    customers: Annotated[list[str] | None, typer.Option(help="customer table export (optional)")] = None,
) -> None:
    """Create a DVC project for your own data: `cd <folder> && dvc repro` runs the whole pipeline on it."""
    from churnlens.project import init_project, summary

    result = init_project(folder, transactions, interactions, customers)
    for line in summary(result):
        log.info("%s", line)
    log.info("created %s: cd %s && dvc repro", folder, folder)


@app.command()
@_user_errors
def ui(
    port: Annotated[int, typer.Option()] = 5000,
    host: Annotated[str, typer.Option(help="bind address; keep 127.0.0.1 unless you know why")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the project's tracking store (127.0.0.1 by default)."""
    from churnlens.redaction import DEFAULT_TRACKING_URI, redact

    store = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", host,
               "--port", str(port), "--workers", "1"]
    console.print(escape(f"MLflow UI on http://{host}:{port} (store {redact(store)}); Ctrl-C to stop"))
    console.print(escape(f"runs of this project: {_runs_page(f'http://{host}:{port}')}"))
    raise typer.Exit(_serve(command, env))


def _runs_page(base_url: str) -> str:
    """The experiment's runs table, or the experiments list when the store cannot say which one
    (the server itself reports why it cannot start)."""
    from churnlens.tracking import experiment_url

    try:
        experiment = load_params(Path("params.yaml")).train.experiment_name
    except (ConfigError, FileNotFoundError):
        experiment = "churnlens"
    try:
        return experiment_url(base_url, experiment)
    except Exception:  # an unreachable store or a missing driver must not keep the UI from starting
        log.debug("experiment lookup failed", exc_info=True)
        return f"{base_url}/#/experiments?workflowType=machine_learning"


def _serve(command: list[str], env: dict[str, str]) -> int:
    """Run the server in a process group of its own and take the whole group down when this
    process is stopped (Ctrl-C, kill, a closed terminal): the server's workers would outlive it."""
    server = subprocess.Popen(command, env=env, start_new_session=True)

    def stop(signum: int, frame: object) -> None:
        _stop_group(server)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        return server.wait()
    finally:
        _stop_group(server)


def _stop_group(server: subprocess.Popen, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        server.poll()
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    app()
