"""A simulated shop scored at a past date by a model trained on what it knew then, and the
later extracts of its log, with the campaign of that run applied (for tests/test_monitor.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from churnlens import control, io
from churnlens.config import Params, parse_params
from churnlens.schemas import CANONICAL_TABLES
from churnlens.simulate import SimulatedData, extract_until, simulate, with_campaign


@dataclass(frozen=True)
class World:
    params: Params
    root: Path
    as_of: pd.Timestamp
    scores: pd.DataFrame
    runs_dir: Path
    full: SimulatedData  # the world after the campaign, every day of it


def write_raw(data: SimulatedData, base: Path) -> None:
    for name in CANONICAL_TABLES:
        io.write_parquet(getattr(data, name), base / "data/raw" / f"{name}.parquet")


def ingest_extract(params: Params, data: SimulatedData, base: Path) -> Path:
    """Ingest ``data`` as the project would a new extract; its canonical folder."""
    from churnlens.stages import run_ingest_stage

    write_raw(data, base)
    run_ingest_stage(params, base, base / "data/canonical", base / "data/quarantine", base / "reports/ingest.json")
    return base / "data/canonical"


def scored_world(root: Path, raw_params: dict, days_before_end: int = 100) -> World:
    """Train and score on the extract taken ``days_before_end`` days before the simulated period
    ends, archive the run, then apply its campaign to the whole simulated world. The caller
    points MLflow at a store of its own and chdirs to ``root``."""
    from churnlens.score import ScoreJob
    from churnlens.stages import run_evaluate, run_features, run_score, run_train

    (root / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False), encoding="utf-8")
    params = parse_params(raw_params)
    data = simulate(params.simulate)
    end = pd.Timestamp(params.simulate.start_date) + pd.Timedelta(days=params.simulate.n_days)
    as_of = end - pd.Timedelta(days=days_before_end)
    canonical = ingest_extract(params, extract_until(data, as_of), root)
    run_features(params, canonical, root / "data/features/snapshots.parquet", root / "reports/features.json")
    run_train(params, root / "data/features/snapshots.parquet", root / "reports/features.json",
              root / "models/churn_model", root / "reports/train.json", root)
    run_evaluate(params, root / "data/features/snapshots.parquet", root / "models/churn_model",
                 root / "reports/train.json", root / "reports/metrics.json", root / "reports/plots")
    runs_dir = root / "data/scores/runs"
    run_score(ScoreJob(params, canonical, "models:/churnlens@champion", root / "data/scores/scores.parquet",
                       as_of=as_of, archive_dir=runs_dir))
    scores = pd.read_parquet(root / "data/scores/scores.parquet")
    treated = scores.loc[control.arms(scores) == "treated", "customer_id"]
    full = with_campaign(data, treated, as_of, params.simulate, params.features.lead_days,
                         params.features.horizon_days)
    return World(params, root, as_of, scores, runs_dir, full)
