"""How good a scoring run will prove, estimated before any label exists.

Confidence-based performance estimation (CBPE, as NannyML names it): if the probabilities are
calibrated, customer i churns with probability p_i, so the labels a run will see are draws of
independent Bernoulli(p_i). The expected ROC AUC, PR AUC, lift and ECE are their means over label
sets drawn from the run's own probabilities (the Brier score's and the churn rate's are exact:
mean p(1 - p) and mean p); the spread of the draws is what chance alone moves the realised
figure by. Two assumptions carry it, and both fail in practice:

- calibration: where the model's probabilities are off (its holdout ECE is large), the estimate
  is off by as much;
- no concept shift: a market that changes how behaviour turns into churn (a competitor, a price
  rise) moves the realised figures, and nothing in the probabilities shows it. A shift of the
  customers themselves (covariate shift) is what the method handles.

``churnlens monitor`` sets this estimate beside the realised figure once the window has closed,
so how far to trust it is measured, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

# Label draws per block: bounds memory at about this many cells, whatever the customer count.
_BLOCK_CELLS = 8_000_000
# The label draws' seed: fixed, so a run's estimate is a function of its probabilities alone.
SEED = 0
# A calibration this far off (holdout ECE) makes the estimate's level unreliable.
ECE_CAVEAT = 0.05


def expected_metrics(probability: np.ndarray, top_fraction: float, draws: int, seed: int = SEED,
                     bins: int = 10) -> dict[str, float]:
    """The figures a calibrated model's run would realise on average, with their 5% and 95% points."""
    p = np.asarray(probability, dtype=np.float64)
    n = len(p)
    if n < 2:
        return {}
    rng = np.random.default_rng(seed)
    ranking = Ranking.of(p, top_fraction, bins)
    samples: dict[str, list[np.ndarray]] = {}
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, draws, block):
        labels = rng.random((min(block, draws - start), n)) < p  # one label set per row
        for name, values in label_set_figures(labels, ranking).items():
            samples.setdefault(name, []).append(values)
    result = {"churn_rate": float(p.mean()), "brier": float(np.mean(p * (1 - p)))}
    for name, parts in samples.items():
        values = np.concatenate(parts)
        if len(values):
            result[name] = float(values.mean())
            result[f"{name}_p05"], result[f"{name}_p95"] = (float(q) for q in np.quantile(values, [0.05, 0.95]))
    return result


@dataclass(frozen=True)
class Ranking:
    """What every label set's figures read of the probabilities, computed once."""

    probability: np.ndarray
    ranks: np.ndarray  # ties share a rank, as in roc_auc_score
    order: np.ndarray  # highest first, stable
    distinct_end: np.ndarray  # in that order, the last row of each run of equal scores
    top: int  # rows in the top fraction
    bucket: np.ndarray  # the calibration bin of each row
    expected_in_bucket: np.ndarray  # the probabilities' sum per bin

    @classmethod
    def of(cls, probability: np.ndarray, top_fraction: float, bins: int) -> Ranking:
        p = np.asarray(probability, dtype=np.float64)
        n = len(p)
        order = np.argsort(-p, kind="stable")
        bucket = np.clip(np.digitize(p, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
        return cls(p, rankdata(p), order, np.r_[np.flatnonzero(np.diff(p[order])), n - 1],
                   max(1, round(n * top_fraction)), bucket, np.bincount(bucket, weights=p, minlength=bins))


def label_set_figures(labels: np.ndarray, ranking: Ranking) -> dict[str, np.ndarray]:
    """ROC AUC, PR AUC, top-fraction lift and ECE of the probabilities against each row of
    ``labels`` (label sets x customers), as :func:`churnlens.evaluate.classification_metrics`
    computes them for one; rows of a single class are dropped."""
    n = len(ranking.probability)
    positives = labels.sum(axis=1)
    labels = labels[(positives > 0) & (positives < n)]
    positives = labels.sum(axis=1).astype(np.float64)
    auc = (labels @ ranking.ranks - positives * (positives + 1) / 2) / (positives * (n - positives))
    # Average precision as scikit-learn computes it: the precision at each distinct threshold,
    # weighted by the recall gained there.
    ranked = labels[:, ranking.order]
    true_positives = np.cumsum(ranked, axis=1, dtype=np.int64)[:, ranking.distinct_end]
    gained = np.diff(true_positives, axis=1, prepend=0)
    average_precision = (gained * true_positives / (ranking.distinct_end + 1)).sum(axis=1) / positives
    lift = ranked[:, :ranking.top].mean(axis=1) / (positives / n)
    bins = len(ranking.expected_in_bucket)
    churners_in_bucket = np.array([np.bincount(ranking.bucket, weights=row, minlength=bins) for row in labels])
    ece = np.abs(churners_in_bucket - ranking.expected_in_bucket).sum(axis=1) / n if len(labels) else np.zeros(0)
    return {"roc_auc": auc, "pr_auc": average_precision, "top_decile_lift": lift, "ece": ece}


def caveats(holdout_ece: float | None, drift_warnings: list[str]) -> list[str]:
    """Where this run's estimate should not be trusted, in words: the two assumptions checked
    against what is known at scoring time."""
    notes = []
    if holdout_ece is None:
        notes.append("the model's calibration is unknown (no holdout ECE on record): the estimate assumes it")
    elif holdout_ece > ECE_CAVEAT:
        notes.append(f"the model's holdout ECE is {holdout_ece:.3f} (over {ECE_CAVEAT}): its probabilities are not "
                     "calibrated, so the estimated figures can be off by about as much")
    if drift_warnings:
        notes.append(f"features drifted since training ({', '.join(drift_warnings)}): the estimate follows a shift of "
                     "the customers, not a change in how behaviour turns into churn")
    notes.append("a concept shift (the same behaviour churning more or less than it did) cannot be seen without labels")
    return notes
