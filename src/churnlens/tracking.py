"""Everything MLflow and lineage lives here; the core modules never import mlflow.

Tracking store: ``MLFLOW_TRACKING_URI`` when set (a team server), otherwise MLflow 3's own
default, ``sqlite:///mlflow.db`` in the working directory (the project root under DVC).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from churnlens import model_folder
from churnlens.contract import ModelContract
from churnlens.redaction import DEFAULT_TRACKING_URI, redact, tracking_uri_shown

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
# skops refuses unknown types; these are the only module prefixes a churnlens pipeline may hold.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "xgboost.", "numpy.", "builtins.", "collections.")
# Built-ins a fitted pipeline holds as data; any other built-in (eval, exec, getattr, ...) is code.
TRUSTED_BUILTINS = frozenset({"builtins.dict", "builtins.list", "builtins.tuple", "builtins.set", "builtins.str",
                              "builtins.int", "builtins.float", "builtins.bool", "builtins.bytes", "builtins.slice",
                              "builtins.type", "builtins.NoneType", "builtins.frozenset", "builtins.complex",
                              "builtins.bytearray", "builtins.object"})
MODEL_DIGEST_TAG = "model_sha256"


class UntrustedModelError(ValueError):
    """A model would have to run code it carries (pickle) or holds types churnlens does not expect."""


def configure() -> str:
    """Point MLflow at the project's store (or the environment's) and return the URI."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    # The registry lives in the same store. (MLflow exports MLFLOW_REGISTRY_URI to the process
    # environment when it is set, so reading it back would pin a previous store.)
    mlflow.set_registry_uri(uri)
    return uri


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(git("status", "--porcelain"))).lower()}


def dvc_lock_hashes(root: Path, stage: str) -> dict[str, str]:
    """md5 of each data dependency of ``stage``, as dvc.lock records it for the stage that produced it.

    While ``stage`` runs, its own dvc.lock entry is still the previous run's; the producing
    stages' outputs were already written for this run, so they are the current lineage.
    """
    pipeline, lock = root / "dvc.yaml", root / "dvc.lock"
    if not (pipeline.is_file() and lock.is_file()):
        return {}
    deps = (yaml.safe_load(pipeline.read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage, {}).get("deps", [])
    produced = {
        out["path"]: out.get("md5", "")
        for entry in (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}).values()
        for out in entry.get("outs", [])
    }
    return {f"dvc.{stage}.dep.{path}": produced[path] for path in deps if path in produced}


def _trusted_types(pipeline: object) -> list[str]:
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    unexpected = _unexpected_types(untrusted)
    if unexpected:
        raise TypeError(f"refusing to trust unexpected types in the model pipeline: {unexpected}")
    return untrusted


def _unexpected_types(types: list[str]) -> list[str]:
    return [t for t in types if not t.startswith(TRUSTED_MODULE_PREFIXES)
            or (t.startswith("builtins.") and t not in TRUSTED_BUILTINS)]


def _requirements() -> list[str]:
    names = ["scikit-learn", "xgboost", "pandas", "numpy", "skops", "mlflow"]
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


@dataclass(frozen=True)
class RegisteredModel:
    run_id: str
    name: str
    version: str
    model_uri: str


def _model_kwargs(pipeline: object, example: pd.DataFrame, metadata: dict) -> dict:
    from mlflow.models import infer_signature

    probabilities = pipeline.predict_proba(example)
    return {
        "signature": infer_signature(example, probabilities),
        "input_example": example.head(5),
        "pyfunc_predict_fn": "predict_proba",  # pyfunc returns [P(stay), P(churn)], not classes
        "pip_requirements": _requirements(),
        "skops_trusted_types": _trusted_types(pipeline),
        "metadata": metadata,
    }


def _staged_model_dir(pipeline: object, example: pd.DataFrame, metadata: dict, target: Path) -> Path:
    """The model in MLflow format (skops) in a hidden folder beside ``target``; moved in place later.

    Staging folders of killed runs (their process is gone) are removed first.
    """
    import mlflow.sklearn

    from churnlens.io import remove_stale_temporaries

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, f".{target.name}.")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflow.sklearn.save_model(pipeline, staging / "model", serialization_format="skops",
                                  **_model_kwargs(pipeline, example, metadata))
    return staging


def _move_into_place(staging: Path, target: Path, metadata: dict) -> None:
    from mlflow.models import Model

    from churnlens.io import honour_umask

    folder = staging / "model"
    model = Model.load(str(folder))
    model.metadata = {**(model.metadata or {}), **metadata}
    _settle(folder, model.to_dict())
    for path in [folder, *folder.rglob("*")]:
        honour_umask(path)
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(staging / "model", target)
    shutil.rmtree(old, ignore_errors=True)


def save_model_dir(pipeline: object, example: pd.DataFrame, metadata: dict, target: Path) -> None:
    """Write the model in MLflow format to ``target`` atomically (a DVC output)."""
    staging = _staged_model_dir(pipeline, example, metadata, target)
    try:
        _move_into_place(staging, target, {})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _settle(folder: Path, fields: dict) -> None:
    """Rewrite an MLflow model folder so its bytes depend on the model alone (see
    :mod:`churnlens.model_folder`): the pipeline's archive canonical, MLmodel without the saving
    process's id and time."""
    pipeline = _pipeline_file(folder, fields)
    pipeline.write_bytes(model_folder.canonical_skops(pipeline.read_bytes()))
    content = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and path.name != "MLmodel")
    (folder / "MLmodel").write_text(yaml.safe_dump(model_folder.settled_mlmodel(fields, content),
                                                   default_flow_style=False))


def _pipeline_file(model_dir: Path, fields: dict) -> Path:
    return model_dir / fields.get("flavors", {}).get("sklearn", {}).get("pickled_model", "model.skops")


def model_digest(model_dir: Path) -> str:
    """sha256 of the pipeline's canonical archive in an MLflow model folder (what the registry
    records): the same for every serialization of the same pipeline, the registry's copy included."""
    file = _pipeline_file(model_dir, mlmodel_fields(model_dir))
    # A file that is no skops archive (a pickle) is hashed as it is: the loader refuses it, by name.
    archive = file.read_bytes()
    return hashlib.sha256(model_folder.canonical_skops(archive) if zipfile.is_zipfile(file) else archive).hexdigest()


def check_store() -> None:
    """Fail fast (before any training) when the tracking store cannot be read."""
    from mlflow import MlflowClient

    configure()
    try:
        MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # sqlalchemy, MLflow and connection errors alike mean the same thing here
        raise TrackingStoreError(
            f"tracking store {tracking_uri_shown()} cannot be read: {redact(str(exc).splitlines()[0])}. "
            "Restore it from a backup or move it aside (a new one is created), or set MLFLOW_TRACKING_URI"
        ) from None


class TrackingStoreError(RuntimeError):
    """The MLflow tracking store is unreachable or corrupt."""


# The MLflow UI groups a run's charts on the part of a metric's name before its last '/' and
# orders the sections by name: these names put the holdout first (evaluate's `holdout/…`), then
# each baseline on the same holdout, then the rolling-origin backtest, segments, training, validation.
BASELINE_GROUP = "holdout_baseline"
BACKTEST_GROUP = "rolling_backtest"


def training_metric_key(name: str) -> tuple[str, int]:
    """The MLflow name and step of a training metric, in its chart group (see BACKTEST_GROUP).
    Each fold's figure is one step of a series (``rolling_backtest/fold_<metric>``, step k for
    fold k), so a metric's folds share one chart, the folds along its x axis, not one chart each."""
    fold = re.fullmatch(r"fold(\d+)_(.+)", name)
    if fold:
        return f"{BACKTEST_GROUP}/fold_{fold[2]}", int(fold[1])
    if name.startswith("backtest_"):
        return f"{BACKTEST_GROUP}/{name.removeprefix('backtest_')}", 0
    if name.startswith("validation_"):
        return f"validation/{name.removeprefix('validation_')}", 0
    return f"train/{name.removeprefix('train_')}", 0


def _log_metrics(run_id: str, points: list[tuple[str, float, int]]) -> None:
    """Log (key, value, step) points to a run by id, open or not (the client splits large batches)."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value, step in points])


# The MLflow 3 UI keeps a runs-table view (columns, their order, chart sections) in an experiment
# tag with this prefix and opens it from `?viewStateShareKey=<key>` (its "Share" button does the same).
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
REVIEW_VIEW = "churnlens-review"
# The columns a reviewer compares runs on, holdout figures first.
REVIEW_COLUMNS = ("holdout/roc_auc", "holdout/pr_auc", "holdout/brier", "holdout/ece", "holdout/top_decile_lift",
                  f"{BASELINE_GROUP}/rfm_logistic/roc_auc", f"{BACKTEST_GROUP}/roc_auc_mean",
                  f"{BACKTEST_GROUP}/roc_auc_std")


def review_view_state() -> str:
    """The experiment's review view, as the UI stores a shared view: the run name, the holdout
    metrics as columns, then the model and dataset."""
    import json
    import time

    columns = [*(f"metrics.`{key}`" for key in REVIEW_COLUMNS), "attributes.`Models`", "attributes.`Dataset`"]
    state = {"selectedColumns": columns, "runListHidden": False, "viewMaximized": False}
    now = int(time.time() * 1000)
    return json.dumps({"name": "churnlens review", "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def run_name(stage: str, params: dict, lineage: dict[str, str]) -> str:
    """A run name that says what ran: the stage, the DVC experiment (or the git revision) and the
    parameters a reviewer compares first."""
    xgboost = params.get("train", {}).get("xgboost", {})
    where = lineage.get("dvc.exp_name") or lineage.get("git_commit", "unknown")[:8]
    knobs = " ".join(f"{short}={xgboost[key]}" for key, short in
                     (("max_depth", "depth"), ("learning_rate", "lr"), ("n_estimators", "trees")) if key in xgboost)
    return " ".join(part for part in (stage, where, knobs) if part)


def dvc_experiment() -> dict[str, str]:
    """The DVC experiment this process runs in (`dvc exp run` sets these), else nothing."""
    names = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}
    return {tag: os.environ[variable] for variable, tag in names.items() if os.environ.get(variable)}


@dataclass(frozen=True)
class TrainingData:
    """What the model learnt from, for MLflow's Datasets panel: file, fingerprint and extent."""
    frame: pd.DataFrame  # the training rows (features and label)
    source: str  # the snapshots file they came from
    digest: str  # its content fingerprint
    target: str
    first_cutoff: str
    last_cutoff: str


def log_training_run(*, experiment: str, model_name: str, params: dict, metrics: dict[str, float],
                     tags: dict[str, str], pipeline: object, example: pd.DataFrame, metadata: dict,
                     artifacts: dict[str, Path], model_dir: Path, data: TrainingData | None = None,
                     trained_between: tuple[int, int] | None = None) -> RegisteredModel:
    """Log params, metrics, lineage tags, the training data and the model; write the model folder;
    register it and point ``challenger`` at it. ``trained_between`` (epoch milliseconds) is when
    the training work began and ended: the run spans it, so its duration is the training's, not
    the logging's that comes after.

    Order matters for a run killed half-way: a version is registered only once the run's model
    artifact and the staged model folder are complete, and the alias moves last.
    """
    import mlflow
    from mlflow import MlflowClient

    configure()
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    # Older MLflow 3 UIs open an experiment in the GenAI view unless told this is model training
    # (newer ones need ?workflowType=machine_learning in the URL: see experiment_url).
    mlflow.set_experiment_tag("mlflow.experimentKind", "custom_model_development")
    mlflow.set_experiment_tag(f"{SHARED_VIEW_TAG_PREFIX}{REVIEW_VIEW}", review_view_state())
    tags = {**tags, **dvc_experiment(), "stage": "train"}
    if "git_commit" in tags:
        tags["mlflow.source.git.commit"] = tags["git_commit"]
    staging = None
    try:
        with _training_run(experiment_id, run_name("train", params, tags), trained_between) as run:
            mlflow.log_params(flatten(params))
            _log_metrics(run.info.run_id, [(key, value, step) for name, value in metrics.items()
                                           for key, step in [training_metric_key(name)]])
            mlflow.set_tags(tags)
            if data is not None:
                _log_training_data(data)
            for name, path in artifacts.items():
                mlflow.log_artifact(str(path), artifact_path=name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                info = mlflow.sklearn.log_model(pipeline, name="model", serialization_format="skops",
                                                **_model_kwargs(pipeline, example, metadata))
            staging = _staged_model_dir(pipeline, example, metadata, model_dir)
            digest = model_digest(staging / "model")
            mlflow.set_tag(MODEL_DIGEST_TAG, digest)
        if trained_between is not None:
            MlflowClient().set_terminated(run.info.run_id, "FINISHED", end_time=trained_between[1])
        version = mlflow.register_model(info.model_uri, model_name,
                                        tags={"run_id": run.info.run_id, MODEL_DIGEST_TAG: digest})
        _move_into_place(staging, model_dir, {"registered_model_name": model_name,
                                              "registered_version": str(version.version)})
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    client = MlflowClient()
    client.update_model_version(model_name, version.version,
                                description=f"Trained in run {run.info.run_name}; awaiting evaluation on the "
                                            "holdout (alias challenger).")
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    log.info("registered %s version %s as %s", model_name, version.version, CHALLENGER)
    return RegisteredModel(run.info.run_id, model_name, str(version.version), info.model_uri)


def _training_run(experiment_id: str, name: str, trained_between: tuple[int, int] | None):
    """The active run to log the training into, started when the training began if known. Made
    by the client (start_run cannot take a start time) with the context tags start_run would add:
    user, source, git."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    client = MlflowClient()
    created = client.create_run(experiment_id, start_time=trained_between[0] if trained_between else None,
                                tags=resolve_tags(), run_name=name)
    try:
        return mlflow.start_run(run_id=created.info.run_id)
    except Exception:
        client.set_terminated(created.info.run_id, "FAILED")  # never left RUNNING
        raise


def register_baseline(*, model_name: str, train_run_id: str, baseline: str, pipeline: object,
                      example: pd.DataFrame, metadata: dict, tags: dict[str, str]) -> RegisteredModel:
    """Register a deployable baseline (e.g. the BG/NBD fallback) as a version of the churn model,
    logged in a run of its own in the train run's experiment, so that it is loaded, scored and
    audited like any trained version. No alias moves here: the caller promotes it."""
    import mlflow
    from mlflow import MlflowClient

    configure()
    client = MlflowClient()
    experiment_id = client.get_run(train_run_id).info.experiment_id
    tags = {**tags, **dvc_experiment(), "stage": "evaluate", "scorer": "baseline", "baseline": baseline,
            "challenger_run_id": train_run_id}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"baseline {baseline}") as run:
        mlflow.set_tags(tags)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.sklearn.log_model(pipeline, name="model", serialization_format="skops",
                                            **_model_kwargs(pipeline, example,
                                                            {**metadata, "run_id": run.info.run_id}))
    version = mlflow.register_model(info.model_uri, model_name,
                                    tags={"run_id": run.info.run_id, "scorer": "baseline", "baseline": baseline})
    log.info("registered baseline %s as %s version %s", baseline, model_name, version.version)
    return RegisteredModel(run.info.run_id, model_name, str(version.version), info.model_uri)


def _log_training_data(data: TrainingData) -> None:
    import mlflow
    import mlflow.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the dataset source can be interpreted in multiple ways"
        dataset = mlflow.data.from_pandas(data.frame, source=data.source, targets=data.target,
                                          name=Path(data.source).name, digest=data.digest[:36])
    # The schema is a cached property: given here, MLflow does not infer it value by value.
    dataset.schema = dataset_schema(data.frame)
    mlflow.log_input(dataset, context="training",
                     tags={"rows": str(len(data.frame)), "first_cutoff": data.first_cutoff,
                           "last_cutoff": data.last_cutoff, "fingerprint": data.digest})


def dataset_schema(frame: pd.DataFrame) -> object:
    """MLflow's schema of ``frame`` (an ``mlflow.types.Schema``), as MLflow would infer it, in
    vectorised time: MLflow tests every value for a null in Python (10 s for the default data's
    258k x 56 training rows, minutes at millions). Types come from a few rows holding each
    column's first non-null value; whether a column is required, from the whole frame."""
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema

    present = frame.notna().to_numpy()
    rows = sorted({0, *(int(np.argmax(present[:, j])) for j in range(frame.shape[1]))}) if len(frame) else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # schema inference notes on integer columns
        sampled = infer_signature(frame.iloc[rows]).inputs
    required = present.all(axis=0)
    return Schema([ColSpec(spec.type, spec.name, required=bool(required[frame.columns.get_loc(spec.name)]))
                   for spec in sampled.inputs])


def log_evaluation(run_id: str, metrics: dict[str, float], artifact_dir: Path | None = None) -> None:
    """Add the evaluation to the training run without reopening it: resuming and ending a run
    restamps its end time, so its duration would become train's and evaluate's together."""
    from mlflow import MlflowClient

    configure()
    _log_metrics(run_id, [(key, value, 0) for key, value in metrics.items()])
    if artifact_dir is not None and artifact_dir.exists():
        MlflowClient().log_artifacts(run_id, str(artifact_dir), artifact_path="evaluation")


def run_metrics(run_id: str | None) -> dict[str, float]:
    """The latest value of every metric of a run ({} when the run is unknown)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    configure()
    try:
        return dict(MlflowClient().get_run(run_id).data.metrics)
    except MlflowException:
        return {}


def version_run_id(model_name: str, version: str) -> str | None:
    """The run that trained a registered version (None when the registry does not know it)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure()
    try:
        return MlflowClient().get_model_version(model_name, version).run_id
    except MlflowException:
        return None


def log_monitoring(model_name: str, version: str, points: list[tuple[str, float, int, int]],
                   plot: Path | None, recommendation: dict) -> str | None:
    """A scorecard on the version that scored: (key, value, step, timestamp ms) points on its
    training run (the scoring date as the step), the plot of performance over scoring dates as an
    artifact, and the retrain recommendation as version tags. None when the version is unknown."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    run_id = version_run_id(model_name, version)
    if run_id is None:
        return None
    client = MlflowClient()
    # A point already logged (the same key, step, time and value: a rerun over the same data) is
    # not logged twice.
    logged = {(m.key, m.step, m.timestamp, m.value) for key in {k for k, *_ in points}
              for m in client.get_metric_history(run_id, key)}
    fresh = [Metric(key, float(value), timestamp, step) for key, value, step, timestamp in points
             if (key, step, timestamp, float(value)) not in logged]
    if fresh:
        client.log_batch(run_id, metrics=fresh)
    if plot is not None and plot.exists():
        client.log_artifact(run_id, str(plot), artifact_path="monitor")
    client.set_model_version_tag(model_name, version, "monitor.retrain", str(recommendation["retrain"]).lower())
    client.set_model_version_tag(model_name, version, "monitor.why", recommendation["why"])
    return run_id


def record_promotion(model_name: str, version: str, promotion: dict, results: dict[str, dict],
                     holdout_cutoff: str) -> None:
    """State the promotion decision on the model version, with its figures: the challenger, the
    champion it was compared with and every baseline, all on the same holdout."""
    from mlflow import MlflowClient

    configure()
    client = MlflowClient()
    client.update_model_version(model_name, version, description=promotion_text(promotion, results, holdout_cutoff))
    figures = {"promotion.decision": "promoted" if promotion["promoted"] else "not promoted",
               "promotion.reason": promotion["reason"], "promotion.metric": promotion["metric"],
               "promotion.holdout_cutoff": holdout_cutoff,
               "promotion.challenger_score": f"{promotion['challenger_score']:.4f}"}
    if promotion.get("champion_score") is not None:
        figures["promotion.champion_score"] = f"{promotion['champion_score']:.4f}"
        figures["promotion.champion_version"] = str(promotion.get("previous_champion_version"))
    for name, values in results.items():
        if name != "model" and "roc_auc" in values:
            figures[f"baseline.{name}.roc_auc"] = f"{values['roc_auc']:.4f}"
    deployed = promotion.get("deployed")
    if deployed:
        figures.update({"deployed.version": deployed["model_version"], "deployed.kind": deployed["kind"],
                        "deployed.reason": deployed["reason"]})
    for key, value in figures.items():
        client.set_model_version_tag(model_name, version, key, value)
    if deployed and deployed["model_version"] != version and deployed["decision"] == "baseline":
        # The baseline that serves instead says why, on its own version, in the same words.
        client.update_model_version(model_name, deployed["model_version"],
                                    description=f"Promoted to champion: {deployed['reason']}.")
        for key, value in {"promotion.decision": "promoted", "promotion.reason": deployed["reason"],
                           "promotion.metric": promotion["metric"], "promotion.holdout_cutoff": holdout_cutoff,
                           "promotion.challenger_version": version}.items():
            client.set_model_version_tag(model_name, deployed["model_version"], key, value)


def promotion_text(promotion: dict, results: dict[str, dict], holdout_cutoff: str) -> str:
    """The model version's description: the decision, then one line per scorer on the holdout."""
    metric = promotion["metric"]
    verdict = "Promoted to champion" if promotion["promoted"] else "Not promoted"
    deployed = promotion.get("deployed")
    serving = ([f"Serving instead: {deployed['kind']} v{deployed['model_version']} ({deployed['reason']}).", ""]
               if deployed and not promotion["promoted"] else [])
    lines = [f"{verdict}: {promotion['reason']}.", "", *serving,
             f"Holdout cutoff {holdout_cutoff}; promotion metric {metric} (higher is better).", "",
             "| scorer | ROC AUC | PR AUC | Brier | lift@top |", "|---|---|---|---|---|"]
    champion = promotion.get("champion_score")

    def shown(values: dict, key: str, decimals: int = 4) -> str:
        value = values.get(key)  # a ranking baseline has no Brier score: it is no probability
        return "–" if value is None or value != value else f"{value:.{decimals}f}"

    for name, values in results.items():
        label = f"challenger v{promotion['challenger_version']}" if name == "model" else f"baseline {name}"
        lines.append(f"| {label} | {shown(values, 'roc_auc')} | {shown(values, 'pr_auc')} | {shown(values, 'brier')} "
                     f"| {shown(values, 'top_decile_lift', 2)} |")
    if champion is not None and champion != float("-inf"):
        lines += ["", f"Champion v{promotion.get('previous_champion_version')} on the same holdout: "
                      f"{metric} {champion:.4f} (challenger {promotion['challenger_score']:.4f})."]
    return "\n".join(lines)


def experiment_url(base_url: str, experiment: str) -> str:
    """Where a review starts in the UI: the experiment's runs table. MLflow 3's UI opens its GenAI
    view (traces) unless the URL asks for the machine-learning view, whatever the experiment's
    kind tag says."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure()
    try:
        found = MlflowClient().get_experiment_by_name(experiment)
    except MlflowException:
        found = None
    if not found:
        return f"{base_url}/#/experiments?workflowType=machine_learning"
    view = f"&viewStateShareKey={REVIEW_VIEW}" if f"{SHARED_VIEW_TAG_PREFIX}{REVIEW_VIEW}" in found.tags else ""
    return f"{base_url}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning{view}"


def alias_version(model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure()
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def version_tags(model_name: str, version: str) -> dict[str, str]:
    """A registered version's tags ({} when the registry does not know it)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure()
    try:
        return dict(MlflowClient().get_model_version(model_name, version).tags)
    except MlflowException:
        return {}


def set_alias(model_name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    configure()
    MlflowClient().set_registered_model_alias(model_name, alias, version)


@dataclass(frozen=True)
class LoadedModel:
    pipeline: object
    name: str
    version: str
    contract: ModelContract


class ModelNotFoundError(LookupError):
    """The requested model URI does not resolve in this project's registry or paths."""


@dataclass(frozen=True)
class ResolvedModel:
    uri: str  # a URI MLflow loads from: models:/<name>/<version> or a local folder
    name: str
    version: str
    run_id: str | None


def resolve_model(uri: str, project_root: Path | None = None) -> ResolvedModel:
    """Check ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a local model directory
    and pin it to one version. Only the project's own registry and paths are accepted: no
    http(s), s3 or runs of other stores. A folder's claim to be a registered version is believed
    only when the registry's record of that version (run id, model digest) matches the folder."""
    if uri.startswith("models:/"):
        # Only the registry needs mlflow (seconds of imports); a local folder is read as YAML.
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        configure()
        reference = uri.removeprefix("models:/")
        name, _, selector = reference.partition("@") if "@" in reference else reference.partition("/")
        client = MlflowClient()
        try:
            version = (client.get_model_version_by_alias(name, selector) if "@" in reference
                       else client.get_model_version(name, selector))
        except MlflowException as exc:
            raise ModelNotFoundError(
                f"model {uri!r} not found in the registry at {redact(mlflow.get_tracking_uri())}: "
                f"{redact(str(exc).splitlines()[0])}. {_registered_choices(client)} {_how_to_get_a_model(project_root, client)}"
            ) from None
        return ResolvedModel(f"models:/{name}/{version.version}", name, str(version.version), version.run_id)
    if "://" in uri:
        raise ModelNotFoundError(f"model {redact(uri)!r}: only models:/ URIs of this project's registry or local "
                                 "paths are loaded")
    path = Path(uri) if Path(uri).is_absolute() or project_root is None else project_root / uri
    if not (path / "MLmodel").is_file():
        raise ModelNotFoundError(f"model path {str(path)!r} holds no MLmodel file; run `dvc repro train`")
    metadata = mlmodel_fields(path).get("metadata") or {}
    name, version = metadata.get("registered_model_name"), metadata.get("registered_version")
    if not (name and version):
        return ResolvedModel(str(path), path.name, "unregistered", None)
    return ResolvedModel(str(path), str(name), str(version), _verified_claim(path, str(name), str(version)))


def _verified_claim(path: Path, name: str, version: str) -> str:
    """The run of the registered version a folder claims to be, once the registry's digest of that
    version matches the folder's."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure()
    try:
        record = MlflowClient().get_model_version(name, version)
    except MlflowException:
        raise UntrustedModelError(
            f"model folder {str(path)!r} claims to be {name} v{version}, which the registry at "
            f"{tracking_uri_shown()} does not know; load it from the registry that trained it, or retrain "
            "(`dvc repro --force train`)") from None
    digest = model_digest(path)
    recorded = record.tags.get(MODEL_DIGEST_TAG)
    if recorded != digest:
        raise UntrustedModelError(
            f"model folder {str(path)!r} claims to be {name} v{version}, but the registry records "
            f"digest {recorded} for it and the folder holds digest {digest}; use models:/{name}/{version}, "
            "or retrain (`dvc repro --force train`)")
    return record.run_id


def _how_to_get_a_model(project_root: Path | None, client: object) -> str:
    """What to run in this project to get a champion without re-running the stages before train:
    `--force` on a stage reruns every stage upstream of it too (re-reading, or in this repository
    re-simulating, the data), so the DVC advice names the stages alone (`--single-item`). Every
    successful evaluate leaves a champion; a registry without one predates that, or lost it."""
    from mlflow.exceptions import MlflowException

    try:
        empty = not client.search_registered_models(max_results=1)
    except MlflowException:
        empty = True
    dvc = (project_root or Path.cwd()).joinpath("dvc.yaml").is_file()
    if empty and dvc:
        return ("Run `dvc repro --force --single-item train evaluate` (train and evaluate alone, on this project's "
                "features), then `dvc repro score`")
    if empty:
        return "Run `churnlens train`, then `churnlens evaluate` (it always leaves a champion)"
    advice = ("run `dvc repro --force --single-item evaluate` (it decides on the model this project's train "
              "registered last, and always leaves a champion: the model, the previous one or the BG/NBD baseline), "
              "then `dvc repro score`") if dvc else (
              "run `churnlens evaluate` on the model train wrote (--model-dir, --train-report): it always leaves a "
              "champion (the model, the previous one or the BG/NBD baseline)")
    return f"To set a champion, {advice}; or pass one of the versions above as --model models:/<name>/<version>"


def _registered_choices(client: object) -> str:
    """What the registry holds, for an error message: each model with its aliases and versions."""
    from mlflow.exceptions import MlflowException

    try:
        models = client.search_registered_models()
    except MlflowException:
        return ""
    if not models:
        return "The registry holds no model yet."
    listed = []
    for model in models:
        aliases = ", ".join(f"models:/{model.name}@{alias}" for alias in sorted(model.aliases)) or "no alias"
        versions = [str(v.version) for v in client.search_model_versions(f"name='{model.name}'")]
        listed.append(f"{aliases} (versions {', '.join(sorted(versions, key=int))})")
    return "It holds " + "; ".join(listed) + "."


def load_model(uri: str, project_root: Path | None = None) -> LoadedModel:
    """Load a model :func:`resolve_model` accepts, with its metadata (feature lists, drift profile)."""
    return load_resolved(resolve_model(uri, project_root))


def load_resolved(resolved: ResolvedModel) -> LoadedModel:
    local = _local_model_dir(resolved.uri)
    fields = mlmodel_fields(local)  # read once: ~1,200 lines of YAML with the drift profile
    pipeline = _load_skops_pipeline(local, fields, resolved.uri)
    metadata = {**(fields.get("metadata") or {}), "run_id": resolved.run_id}
    return LoadedModel(pipeline, resolved.name, resolved.version, ModelContract.from_metadata(metadata))


def _local_model_dir(uri: str) -> Path:
    """The model folder: a registry version is downloaded by mlflow; a local folder is used as is."""
    if not uri.startswith("models:/"):
        return Path(uri)
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))


def mlmodel_fields(model_dir: Path) -> dict:
    """The MLmodel file of a model folder (flavors, metadata), read as the YAML it is: the scoring
    job needs two of its keys, and importing mlflow to read them costs seconds per run."""
    file = Path(model_dir) / "MLmodel"
    try:
        fields = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not a readable MLmodel file ({str(exc).splitlines()[0]}); restore the model "
                         "folder or retrain (`dvc repro --force train`)") from None
    return fields if isinstance(fields, dict) else {}


def _load_skops_pipeline(model_dir: Path, fields: dict, shown: str) -> object:
    """The pipeline of an MLflow sklearn model (``fields``: its MLmodel file), read with skops and
    our own list of trusted types.

    Never unpickles: pickle and cloudpickle run whatever code the file names while loading, and
    the trusted types in the model's own MLmodel file are the model's claim, not ours.
    """
    import skops.io

    flavor = fields.get("flavors", {}).get("sklearn")
    if flavor is None:
        raise UntrustedModelError(f"model {shown!r} is not a scikit-learn MLflow model; churnlens loads only "
                                  "the models `churnlens train` writes")
    serialization = flavor.get("serialization_format", "pickle")
    if serialization != "skops":
        raise UntrustedModelError(
            f"model {shown!r} is serialized with {serialization}, which runs any code the file carries when it "
            "is loaded; churnlens loads only skops models. Retrain it with `churnlens train` (it writes skops)")
    if flavor.get("code"):
        raise UntrustedModelError(f"model {shown!r} ships Python code ({flavor['code']}); refusing to load it")
    file = (model_dir / flavor.get("pickled_model", "")).resolve()
    if not file.is_file() or model_dir.resolve() not in file.parents:
        raise UntrustedModelError(f"model {shown!r}: its model file {flavor.get('pickled_model')!r} is not inside "
                                  "the model folder")
    types = skops.io.get_untrusted_types(file=file)
    unexpected = _unexpected_types(types)
    if unexpected:
        raise UntrustedModelError(f"model {shown!r} holds types churnlens does not trust: {unexpected}; only "
                                  f"{', '.join(TRUSTED_MODULE_PREFIXES)} types are loaded")
    return skops.io.load(file, trusted=types)
