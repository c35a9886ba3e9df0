"""The deployed probability, chosen out of time: a calibration of the trees, pooled with BG/NBD.

No single way of turning the trees' scores into a churn probability was best at every date of the
shared two-year retail log (benchmarks/realdata_benchmark.py): the trees' own probabilities carry
the churn level of every labelled cutoff, a calibration on the latest cutoffs carries theirs, and
BG/NBD's P(no purchase in the horizon), fitted on each cutoff's own purchase-days, was the best
calibrated at some dates and the best ranked at others. So the data chooses, by one rule:

* a candidate is a calibration (``train.selection.calibrations``) and a weight w of the model in a
  linear pool with BG/NBD, p = w * model + (1 - w) * BG/NBD (``train.selection.btyd_weights``;
  w = 1 is the model alone, w = 0 BG/NBD alone);
* every candidate is scored on the test cutoff of every backtest fold, where its trees, early
  stopping and calibration were all fitted on cutoffs whose labels closed before that cutoff;
* the lowest mean Brier score over the folds wins (ties: the earlier candidate in params order).

So on those folds the deployed scorer is at least as good as the model alone and as BG/NBD alone,
by construction; the holdout, which the choice never sees, says whether that held. A linear pool,
not a blend of log-odds: it is scikit-learn's VotingClassifier over the two frozen scorers, saved
and loaded like any pipeline, and it stays within the probability floor both scorers keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import VotingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import brier_score_loss, roc_auc_score

from churnlens.config import SelectionConfig

BTYD_INPUT = "btyd_p_no_purchase_horizon"  # the BG/NBD feature every purchase log has


@dataclass(frozen=True)
class ProbabilityLayer:
    """How the trees' scores become the deployed probability."""

    calibration: str
    btyd_weight: float = 1.0

    def as_dict(self) -> dict:
        return {"calibration": self.calibration, "btyd_weight": self.btyd_weight}

    @property
    def name(self) -> str:
        return (f"{self.calibration}" if self.btyd_weight == 1 else "bgnbd" if self.btyd_weight == 0
                else f"{self.calibration} x {self.btyd_weight:g} + bgnbd x {1 - self.btyd_weight:g}")


@dataclass(frozen=True)
class FoldScores:
    """One backtest fold's test cutoff: the labels, BG/NBD's probability (None where the model has
    no BG/NBD input) and the trees' probability under each calibration."""

    test_cutoff: pd.Timestamp
    y: np.ndarray
    btyd: np.ndarray | None
    by_calibration: dict[str, np.ndarray]

    def probability(self, layer: ProbabilityLayer, floor: float) -> np.ndarray:
        return pooled(self.by_calibration[layer.calibration], self.btyd, layer.btyd_weight, floor)


def pooled(model: np.ndarray, btyd: np.ndarray | None, weight: float, floor: float) -> np.ndarray:
    """w * model + (1 - w) * BG/NBD, BG/NBD within [floor, 1 - floor] as the deployed pool has it."""
    if weight == 1 or btyd is None:
        return model
    return weight * model + (1 - weight) * np.clip(btyd, floor, 1 - floor)


def candidates(config: SelectionConfig, has_btyd: bool) -> list[ProbabilityLayer]:
    """Every calibration x every weight, in params order; without a BG/NBD input, the model alone."""
    weights = config.btyd_weights if has_btyd else (1.0,)
    layers = [ProbabilityLayer(c, w) for c in config.calibrations for w in weights if w > 0]
    # BG/NBD alone does not depend on the calibration: one candidate, after the others.
    return layers + ([ProbabilityLayer(config.calibrations[0], 0.0)] if has_btyd and 0 in weights else [])


@dataclass(frozen=True)
class Selection:
    chosen: ProbabilityLayer
    table: list[dict]  # per candidate, in order: its layer, mean Brier and AUC over the folds, each fold's Brier
    reason: str

    def as_dict(self) -> dict:
        return {**self.chosen.as_dict(), "reason": self.reason, "candidates": self.table}


def choose(folds: list[FoldScores], layers: list[ProbabilityLayer], fallback: ProbabilityLayer, floor: float
           ) -> Selection:
    """The candidate with the lowest mean Brier over the folds; a single candidate needs no fold;
    ``fallback`` where several wait for a fold that does not exist."""
    if len(layers) == 1:
        return Selection(layers[0], [], "the only candidate in train.selection")
    if not folds:
        return Selection(fallback, [], "no backtest fold to choose on: train.calibration, the model alone")
    table = []
    for layer in layers:
        briers = [float(brier_score_loss(f.y, f.probability(layer, floor))) for f in folds]
        aucs = [float(roc_auc_score(f.y, f.probability(layer, floor))) for f in folds]
        table.append({**layer.as_dict(), "name": layer.name, "brier_mean": float(np.mean(briers)),
                      "roc_auc_mean": float(np.mean(aucs)), "fold_brier": briers})
    # Rounded far below any real difference, so the last bits of a machine's arithmetic never decide.
    best = min(range(len(table)), key=lambda i: (round(table[i]["brier_mean"], 9), i))
    alone = next((row for row in table if row["btyd_weight"] == 1), table[0])
    return Selection(layers[best], table,
                     f"lowest mean Brier on {len(folds)} backtest fold(s): {table[best]['brier_mean']:.4f} "
                     f"(the model alone, {alone['calibration']}: {alone['brier_mean']:.4f})")


def pooled_model(model: object, btyd: object, weight: float, rows_x: pd.DataFrame, rows_y: pd.Series) -> object:
    """The deployed scorer of weight ``weight``: ``model`` alone (1), the BG/NBD scorer ``btyd``
    alone (0), else scikit-learn's soft vote of the two, frozen (``rows_x``/``rows_y``: a row of
    each class, which fit nothing but the vote's class labels)."""
    if weight == 1:
        return model
    if weight == 0:
        return btyd
    vote = VotingClassifier([("model", FrozenEstimator(model)), ("bgnbd", FrozenEstimator(btyd))], voting="soft",
                            weights=[weight, 1 - weight])
    return vote.fit(rows_x, rows_y)
