"""Holdout metrics, curves and baselines for churn scores (pure functions, no MLflow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from churnlens.model import LABEL

RFM_FEATURES = ["days_since_last_purchase", "purchases_365d", "spend_365d"]


def top_fraction_lift(y_true: np.ndarray, score: np.ndarray, fraction: float) -> float:
    """Churn rate among the highest-scored ``fraction`` of customers divided by the overall rate."""
    n_top = max(1, round(len(score) * fraction))
    order = np.argsort(-score, kind="stable")
    base = y_true.mean()
    return float(y_true[order[:n_top]].mean() / base) if base > 0 else float("nan")


def classification_metrics(y_true: np.ndarray, score: np.ndarray, top_fraction: float,
                           is_probability: bool = True) -> dict[str, float]:
    """ROC AUC, PR AUC and lift for any score; log loss and Brier only for probabilities."""
    y_true = np.asarray(y_true, dtype=int)
    if len(np.unique(y_true)) < 2:
        raise ValueError(f"evaluate: the holdout has a single class ({np.unique(y_true)}); cannot compute AUC")
    metrics = {
        "roc_auc": float(roc_auc_score(y_true, score)),
        "pr_auc": float(average_precision_score(y_true, score)),
        "top_decile_lift": top_fraction_lift(y_true, np.asarray(score), top_fraction),
        "churn_rate": float(y_true.mean()),
        "n": len(y_true),
    }
    if is_probability:
        clipped = np.clip(score, 1e-7, 1 - 1e-7)
        metrics["log_loss"] = float(log_loss(y_true, clipped, labels=[0, 1]))
        metrics["brier"] = float(brier_score_loss(y_true, clipped))
        metrics["ece"] = expected_calibration_error(y_true, np.asarray(score, dtype=float))
    return metrics


def expected_calibration_error(y_true: np.ndarray, probability: np.ndarray, bins: int = 10) -> float:
    """Mean |observed churn rate - mean probability| over equal-width probability bins, weighted
    by the share of customers in each bin (the reliability plot's gaps, in one number)."""
    bucket = np.clip(np.digitize(probability, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    gap = sum(abs(float(y_true[bucket == k].sum() - probability[bucket == k].sum())) for k in np.unique(bucket))
    return gap / len(probability)


def curves(y_true: np.ndarray, probability: np.ndarray, bins: int) -> dict[str, pd.DataFrame]:
    """Plot data: ROC, precision-recall, reliability (calibration) and cumulative gains."""
    y_true = np.asarray(y_true, dtype=int)
    fpr, tpr, _ = roc_curve(y_true, probability)
    precision, recall, _ = precision_recall_curve(y_true, probability)
    edges = np.linspace(0, 1, bins + 1)
    bucket = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    reliability = (
        pd.DataFrame({"bucket": bucket, "predicted": probability, "observed": y_true})
        .groupby("bucket", as_index=False).agg(predicted=("predicted", "mean"), observed=("observed", "mean"),
                                               customers=("observed", "size"))
    )
    order = np.argsort(-probability, kind="stable")
    captured = np.cumsum(y_true[order]) / max(y_true.sum(), 1)
    share = np.arange(1, len(order) + 1) / len(order)
    step = max(1, len(order) // 100)
    gains = pd.DataFrame({"share_targeted": share[step - 1::step], "share_of_churners": captured[step - 1::step]})
    return {
        "roc": thin(pd.DataFrame({"false_positive_rate": fpr, "true_positive_rate": tpr})),
        "precision_recall": thin(pd.DataFrame({"recall": recall, "precision": precision})),
        "calibration": reliability,
        "gains": gains,
    }


def thin(frame: pd.DataFrame, points: int = 200) -> pd.DataFrame:
    """Keep plot files small: at most ``points`` evenly spaced rows (first and last kept)."""
    if len(frame) <= points:
        return frame.reset_index(drop=True)
    index = np.unique(np.linspace(0, len(frame) - 1, points).round().astype(int))
    return frame.iloc[index].reset_index(drop=True)


def recency_baseline(holdout: pd.DataFrame) -> np.ndarray:
    """The rule a team would use without a model: the longer since the last purchase, the riskier."""
    return holdout["days_since_last_purchase"].to_numpy(dtype=float)


def rfm_logistic_baseline(train_rows: pd.DataFrame, holdout: pd.DataFrame, seed: int) -> np.ndarray:
    """Logistic regression on log recency, frequency and monetary value, trained on the same rows."""

    def design(frame: pd.DataFrame) -> np.ndarray:
        return np.log1p(frame[RFM_FEATURES].clip(lower=0).fillna(0).to_numpy(dtype=float))

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(design(train_rows), train_rows[LABEL].astype(int))
    return model.predict_proba(design(holdout))[:, 1]


def promotion_score(metrics: dict[str, float], metric: str) -> float:
    """Higher is better for every promotion metric (losses are negated)."""
    if metric.startswith("neg_"):
        return -metrics[metric.removeprefix("neg_")]
    return metrics[metric]


def profit_curve(y_true: np.ndarray, score: np.ndarray, value: np.ndarray, contact_cost: float,
                 incentive_cost: float, acceptance_rate: float) -> pd.DataFrame:
    """Expected campaign profit when contacting the top-scored share of customers (EMP-style).

    Every contacted customer costs ``contact_cost``; a share ``acceptance_rate`` of them accepts
    the incentive (cost ``incentive_cost``), and an accepting churner stays, keeping its ``value``.
    Row k is the profit of contacting the k highest-scored customers (k = 0 .. n).
    """
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    y, v = np.asarray(y_true, dtype=float)[order], np.asarray(value, dtype=float)[order]
    gain = y * acceptance_rate * v - (contact_cost + acceptance_rate * incentive_cost)
    profit = np.r_[0.0, np.cumsum(gain)]
    return pd.DataFrame({"share_targeted": np.arange(len(profit)) / max(len(y), 1), "expected_profit": profit})


def best_campaign(curve: pd.DataFrame) -> dict[str, float]:
    """The profit-maximising share of customers to contact, and that profit."""
    best = curve.loc[curve["expected_profit"].idxmax()]
    return {"best_share_targeted": float(best["share_targeted"]), "max_expected_profit": float(best["expected_profit"])}


def bgnbd_baseline(holdout: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """BG/NBD P(no purchase in the horizon), fitted on the holdout cutoff's own history (no label
    is used, and nothing after the cutoff: the customers' statistics stop at it)."""
    from churnlens.bgnbd import DAYS_PER_UNIT, fit_bgnbd, rfm_inputs

    inputs = rfm_inputs(holdout)
    return fit_bgnbd(*inputs).probability_no_purchase(horizon_days / DAYS_PER_UNIT, *inputs)


HEADLINE_METRICS = ("roc_auc", "pr_auc", "brier", "ece", "top_decile_lift")


def headline_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The few holdout numbers worth comparing across experiments: the model's own, and the best
    baseline's ROC AUC to read them against. Rounded to 4 places so that a diff shows a change
    in the model, not float noise."""
    model = results["model"]
    headline = {name: round(float(model[name]), 4) for name in HEADLINE_METRICS if name in model}
    baselines = [values["roc_auc"] for name, values in results.items() if name != "model"]
    if baselines:
        headline["best_baseline_roc_auc"] = round(float(max(baselines)), 4)
    return headline


def curve_table(name: str, model_curves: dict[str, pd.DataFrame],
                baseline_curves: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """One curve of the model and of every baseline in one long table (``scorer`` says whose), so
    the plot data compares them like the PNG does."""
    parts = [model_curves[name].assign(scorer="model")]
    parts += [curves_of[name].assign(scorer=baseline) for baseline, curves_of in baseline_curves.items()
              if name in curves_of]
    table = pd.concat(parts, ignore_index=True)
    return table[["scorer", *[c for c in table.columns if c != "scorer"]]]
