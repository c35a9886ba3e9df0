from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from churnlens.config import Params, SimulateConfig, parse_params
from churnlens.simulate import SimulatedData, simulate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def project_params_dict() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))


def small_params_dict(**overrides: dict) -> dict:
    """The real params.yaml, shrunk to a data set that runs in seconds."""
    raw = project_params_dict()
    raw["simulate"].update({"n_customers": 600, "n_days": 540, "customers_per_chunk": 250})
    raw["features"]["cutoffs"].update({"min_history_days": 120, "every_days": 30, "short_history_every_days": None})
    raw["train"]["xgboost"].update({"n_estimators": 60, "early_stopping_rounds": 10})
    for section, values in overrides.items():
        raw[section].update(values)
    return raw


@pytest.fixture(scope="session")
def small_params() -> Params:
    return parse_params(small_params_dict())


@pytest.fixture(scope="session")
def small_data(small_params: Params) -> SimulatedData:
    return simulate(small_params.simulate)


def run_small_pipeline(root: Path) -> dict:
    """Every stage in-process on the small data set, with paths as in dvc.yaml under ``root``.
    The caller points MLFLOW_TRACKING_URI at a store of its own and chdirs to ``root``."""
    from churnlens.stages import run_evaluate, run_features, run_ingest_stage, run_simulate, run_train

    raw = small_params_dict()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    params = parse_params(raw)
    run_simulate(params, root / "data/raw", root / "data/truth/ground_truth.parquet")
    run_ingest_stage(params, root, root / "data/canonical", root / "data/quarantine", root / "reports/ingest_report.json")
    run_features(params, root / "data/canonical", root / "data/features/snapshots.parquet", root / "reports/features.json")
    trained = run_train(params, root / "data/features/snapshots.parquet", root / "reports/features.json",
                        root / "models/churn_model", root / "reports/train.json", PROJECT_ROOT)
    evaluated = run_evaluate(params, root / "data/features/snapshots.parquet", root / "models/churn_model",
                             root / "reports/train.json", root / "reports/metrics.json", root / "reports/plots")
    return {"params": params, "root": root, "trained": trained, "evaluated": evaluated}


@pytest.fixture(scope="session")
def reviewed_project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished small project (data, reports, scores, models, an MLflow store) for the review
    surfaces: notebooks, the MLflow server and its UI. Read it, do not change it."""
    from churnlens.score import ScoreJob
    from churnlens.stages import run_monitor, run_score

    root = tmp_path_factory.mktemp("reviewed")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = root / "data/scores/runs"
    with pytest.MonkeyPatch.context() as patch:
        point_mlflow_at(patch, uri)
        patch.chdir(root)
        run = run_small_pipeline(root)
        # An earlier run, whose label window has closed, and today's, as the pipeline keeps them.
        run_score(ScoreJob(run["params"], root / "data/canonical", "models:/churnlens@champion",
                  root / "data/scores/earlier.parquet", root / "reports/earlier_segments.json",
                  as_of=pd.Timestamp("2024-03-01"), archive_dir=runs))
        run_score(ScoreJob(run["params"], root / "data/canonical", "models:/churnlens@champion",
                  root / "data/scores/scores.parquet", root / "reports/segment_report.json",
                  truth=pd.read_parquet(root / "data/truth/ground_truth.parquet"), archive_dir=runs))
        run_monitor(run["params"], runs, root / "data/canonical", root / "reports/monitor.json",
                    root / "reports/monitor.png")
    return {**run, "tracking_uri": uri}


def point_mlflow_at(patch: pytest.MonkeyPatch, uri: str) -> None:
    """Both of MLflow's URIs, so that ``patch`` puts both back: the pipeline's own set-up
    (tracking.configure) writes the registry's into os.environ too."""
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("MLFLOW_REGISTRY_URI", uri)


@pytest.fixture(autouse=True)
def _mlflow_store_left_as_found(monkeypatch: pytest.MonkeyPatch):
    """MLflow keeps its tracking and registry URIs as process globals and writes them into
    os.environ behind monkeypatch's back: without this, a test's store stays the registry of every
    later test that opens a client without naming one."""
    import sys

    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        if variable in os.environ:
            monkeypatch.setenv(variable, os.environ[variable])
        else:
            monkeypatch.delenv(variable, raising=False)
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real MLflow sqlite store in a temporary folder (artifacts beside it)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def tiny_config(**kwargs) -> SimulateConfig:
    return SimulateConfig(**{"n_customers": 300, "n_days": 365, "customers_per_chunk": 100, **kwargs})


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def active_customers(canonical_dir: Path, as_of: pd.Timestamp, lookback_days: int) -> set[str]:
    """The customers a scoring run at ``as_of`` must score, from the canonical tables: a purchase
    within ``lookback_days`` before it, and no cancellation by it."""
    lines = pd.read_parquet(canonical_dir / "transactions.parquet")
    bought = lines[~lines["is_return"] & (lines["timestamp"] <= as_of)].groupby("customer_id")["timestamp"].max()
    recent = set(bought[bought > as_of - pd.Timedelta(days=lookback_days)].index)
    customers = canonical_dir / "customers.parquet"
    if not customers.exists():
        return recent
    table = pd.read_parquet(customers)
    return recent - set(table.loc[table["cancellation_date"] <= as_of, "customer_id"])


# numpy picks its exp/log kernels by the CPU (AVX-512 machines run others) and OpenBLAS its
# products: with these, this machine computes as one without AVX-512 would (on such a machine,
# both runs take the same kernels).
OTHER_VECTOR_UNIT = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Haswell"}
