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
    raw["features"]["cutoffs"].update({"min_history_days": 120, "every_days": 30})
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
