"""What computes features and scores: one interface, two engines.

:mod:`churnlens.engines.duckdb` runs on this machine (DuckDB + numpy running totals);
:mod:`churnlens.engines.spark` runs the portable SQL of :mod:`churnlens.sql` on Apache Spark.
Both offer the same few operations, so a stage calls one code path whichever engine is
configured:

* ``tables(canonical_dir)``: the canonical tables (transactions required, the others optional);
* ``data_span(tables)``: first and last transaction instant;
* ``write_snapshots(tables, cutoffs, config, target, label_complete_until)``: every cutoff's
  features and labels written to ``target``; returns the feature plan and per-cutoff counts;
* ``score(tables, instant, model, job, laps)``: the scoring job's outputs written, and what the
  report needs read back (:class:`Scored`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol


if TYPE_CHECKING:
    import pandas as pd

    from churnlens.config import EngineConfig, FeaturesConfig
    from churnlens.features import FeaturePlan
    from churnlens.score import ScoreJob
    from churnlens.tracking import LoadedModel, ResolvedModel

# Per cutoff: (cutoff, customers, churn rate).
CutoffCounts = list[tuple[object, int, float]]


@dataclass
class Laps:
    """Wall-clock time of each step of a run, for its manifest."""

    timings: dict[str, float] = field(default_factory=dict)
    _clock: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 3)
        self._clock = now


@dataclass(frozen=True)
class Scored:
    """What a scoring run's report and manifest need, whichever engine scored: the scores (at
    least the report's columns), the feature rows the drift check compares (all, or a sample),
    the model used, and where the outputs went."""

    scores: pd.DataFrame
    snapshot: pd.DataFrame
    model: LoadedModel
    data_fingerprint: str
    output: str
    csv_output: str | None


class Engine(Protocol):
    name: str

    def tables(self, canonical_dir: str) -> dict: ...

    def data_span(self, tables: dict) -> tuple[pd.Timestamp, pd.Timestamp]: ...

    def write_snapshots(self, tables: dict, cutoffs: list[pd.Timestamp], config: FeaturesConfig, target: str,
                        label_complete_until: pd.Timestamp | None) -> tuple[FeaturePlan, CutoffCounts]: ...

    def score(self, tables: dict, instant: pd.Timestamp, model: ResolvedModel, job: ScoreJob,
              laps: Laps) -> Scored: ...

    def close(self) -> None: ...


def engine_for(config: EngineConfig) -> Engine:
    """The configured engine (Spark is imported only when asked for)."""
    if config.name == "spark":
        import importlib.util

        if importlib.util.find_spec("pyspark") is None:
            raise ValueError("engine spark needs pyspark; install it with pip install 'churnlens[spark]' "
                             "or use --engine duckdb")
        from churnlens.engines.spark import SparkEngine

        return SparkEngine(config)
    from churnlens.engines.duckdb import DuckDBEngine

    return DuckDBEngine()
