"""Holdout metrics, curves and baselines for churn scores (pure functions, no MLflow)."""

from __future__ import annotations

import logging

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

from churnlens.config import EvaluateConfig, Params, SegmentRules
from churnlens.model import LABEL, FittedModel
from churnlens.selection import BTYD_INPUT, FoldScores, ProbabilityLayer
from churnlens.portable import settled

log = logging.getLogger(__name__)

MONETARY = "spend_365d"  # absent from the snapshots of a log without amounts
RFM_FEATURES = ["days_since_last_purchase", "purchases_365d", MONETARY]


def rfm_columns(frame: pd.DataFrame) -> list[str]:
    """The RFM columns the snapshots have: recency and frequency always, monetary value where the
    transactions have an amount (a log of customers and times has no spend to stand in for)."""
    return [c for c in RFM_FEATURES if c != MONETARY or c in frame.columns]


def top_fraction_lift(y_true: np.ndarray, score: np.ndarray, fraction: float,
                      sample_weight: np.ndarray | None = None) -> float:
    """Churn rate among the highest-scored ``fraction`` of customers divided by the overall rate
    (with ``sample_weight``, of the weighted customers: the top rows holding that share of the weight)."""
    order = np.argsort(-score, kind="stable")
    if sample_weight is None:
        n_top = max(1, round(len(score) * fraction))
        base = y_true.mean()
        return float(y_true[order[:n_top]].mean() / base) if base > 0 else float("nan")
    weight = np.asarray(sample_weight, dtype=float)[order]
    top = np.cumsum(weight) <= max(fraction * weight.sum(), weight[0])
    base = np.average(y_true, weights=sample_weight)
    return float(np.average(y_true[order][top], weights=weight[top]) / base) if base > 0 else float("nan")


def classification_metrics(y_true: np.ndarray, score: np.ndarray, top_fraction: float,
                           is_probability: bool = True, sample_weight: np.ndarray | None = None
                           ) -> dict[str, float]:
    """ROC AUC, PR AUC and lift for any score; log loss and Brier only for probabilities.
    ``sample_weight`` weighs customers (a control group standing for the campaign it was drawn from)."""
    y_true = np.asarray(y_true, dtype=int)
    if len(np.unique(y_true)) < 2:
        raise ValueError(f"evaluate: the holdout has a single class ({np.unique(y_true)}); cannot compute AUC")
    metrics = {
        "roc_auc": float(roc_auc_score(y_true, score, sample_weight=sample_weight)),
        "pr_auc": float(average_precision_score(y_true, score, sample_weight=sample_weight)),
        "top_decile_lift": top_fraction_lift(y_true, np.asarray(score), top_fraction, sample_weight),
        "churn_rate": float(np.average(y_true, weights=sample_weight)),
        "n": len(y_true),
    }
    if is_probability:
        clipped = np.clip(score, 1e-7, 1 - 1e-7)
        metrics["log_loss"] = float(log_loss(y_true, clipped, labels=[0, 1], sample_weight=sample_weight))
        metrics["brier"] = float(brier_score_loss(y_true, clipped, sample_weight=sample_weight))
        metrics["ece"] = expected_calibration_error(y_true, np.asarray(score, dtype=float),
                                                    sample_weight=sample_weight)
    return metrics


def expected_calibration_error(y_true: np.ndarray, probability: np.ndarray, bins: int = 10,
                               sample_weight: np.ndarray | None = None) -> float:
    """Mean |observed churn rate - mean probability| over equal-width probability bins, weighted
    by the share of customers in each bin (the reliability plot's gaps, in one number)."""
    weight = np.ones(len(probability)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    bucket = np.clip(np.digitize(probability, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    gap = sum(abs(float((weight * y_true)[bucket == k].sum() - (weight * probability)[bucket == k].sum()))
              for k in np.unique(bucket))
    return gap / weight.sum()


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
    """Logistic regression on log recency, frequency and monetary value (where the log has one),
    trained on the same rows."""
    columns = rfm_columns(train_rows)
    if MONETARY not in columns:
        log.info("rfm_logistic baseline: no %s (the transactions have no amount); recency and frequency only",
                 MONETARY)

    def design(frame: pd.DataFrame) -> np.ndarray:
        return np.log1p(frame[columns].clip(lower=0).fillna(0).to_numpy(dtype=float))

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(design(train_rows), train_rows[LABEL].astype(int))
    return settled(model.predict_proba(design(holdout))[:, 1])


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


def baseline_scores(train_rows: pd.DataFrame, holdout: pd.DataFrame, seed: int, horizon_days: int
                    ) -> dict[str, tuple[np.ndarray, bool]]:
    """Each baseline's scores on the holdout, and whether they are probabilities."""
    return {
        "recency_rule": (recency_baseline(holdout), False),
        "rfm_logistic": (rfm_logistic_baseline(train_rows, holdout, seed), True),
        "bgnbd_no_purchase": (bgnbd_baseline(holdout, horizon_days), True),
    }


def baseline_comparison(results: dict[str, dict[str, float]], baselines: list[str], metric: str) -> dict:
    """Whether the model beats each baseline on the promotion metric, and by how much."""
    key = metric.removeprefix("neg_")
    compared = [name for name in baselines if key in results[name]]
    return {"beats_baselines": {name: promotion_score(results["model"], metric) > promotion_score(results[name], metric)
                                for name in compared},
            "improvement_over": {name: results["model"][key] - results[name][key] for name in compared}}


def campaign_profits(y_true: np.ndarray, scores: dict[str, np.ndarray], value: np.ndarray, config: EvaluateConfig
                     ) -> dict[str, tuple[pd.DataFrame, dict[str, float]]]:
    """Per scorer: its (thinned) profit curve and its best campaign, under the configured economics."""
    economics = {"contact_cost": config.contact_cost, "incentive_cost": config.incentive_cost,
                 "acceptance_rate": config.acceptance_rate}
    profits = {}
    for name, score in scores.items():
        full = profit_curve(y_true, score, value, **economics)
        profits[name] = (thin(full), best_campaign(full))
    return profits


def segment_metrics(holdout: pd.DataFrame, y: np.ndarray, probability: np.ndarray, rules: SegmentRules,
                    top_fraction: float) -> dict:
    """Holdout metrics within each loyalty segment (AUCs only where both classes occur)."""
    from churnlens.segments import assign_segments

    assigned = assign_segments(holdout.reset_index(drop=True), rules)["segment"].to_numpy()
    result = {}
    for segment in sorted(set(assigned)):
        inside = assigned == segment
        result[segment] = {"n": int(inside.sum()), "churn_rate": float(y[inside].mean()),
                           "mean_churn_probability": float(probability[inside].mean())}
        if len(np.unique(y[inside])) == 2:
            result[segment].update(classification_metrics(y[inside], probability[inside], top_fraction))
    return result


def backtest_summary(per_fold: list[dict[str, float]], skipped: int) -> dict[str, float]:
    """Each fold's metrics (``fold<k>_<metric>``), their mean and spread, and the fold counts."""
    metrics: dict[str, float] = {}
    for number, result in enumerate(per_fold, start=1):
        metrics.update({f"fold{number}_{name}": result[name] for name in BACKTEST_METRICS})
    for name in BACKTEST_METRICS if per_fold else ():
        values = [result[name] for result in per_fold]
        metrics[f"backtest_{name}_mean"] = float(np.mean(values))
        metrics[f"backtest_{name}_std"] = float(np.std(values))
    metrics["backtest_folds"] = len(per_fold)
    metrics["backtest_folds_skipped"] = skipped
    return metrics


def promotion_decision(metric: str, version: str, challenger_score: float, beats_baselines: dict[str, bool],
                       champion_version: str | None, champion_score: float | None, min_improvement: float) -> dict:
    """Champion/challenger on the same holdout; a model that loses to a baseline is never promoted.
    ``champion_score`` is needed only when there is another champion to compare with."""
    decision = {"metric": metric, "challenger_version": version, "challenger_score": challenger_score,
                "previous_champion_version": champion_version}
    if not all(beats_baselines.values()):
        losers = [b for b, ok in beats_baselines.items() if not ok]
        return {**decision, "promoted": False, "reason": f"does not beat baseline(s) {losers} on {metric}"}
    if champion_version is None or champion_version == version:
        return {**decision, "promoted": True, "reason": "no champion yet" if champion_version is None else "re-run"}
    decision["champion_score"] = champion_score
    if challenger_score > champion_score + min_improvement:
        return {**decision, "promoted": True, "reason": f"beats champion v{champion_version} on {metric}"}
    return {**decision, "promoted": False, "reason": f"champion v{champion_version} is as good or better on {metric}"}


def needs_champion_score(beats_baselines: dict[str, bool], version: str, champion_version: str | None) -> bool:
    """Whether :func:`promotion_decision` will compare the challenger with a champion."""
    return all(beats_baselines.values()) and champion_version not in (None, version)


CHALLENGER_WINS, CHAMPION_KEPT, BASELINE_WINS = "challenger", "champion", "baseline"


def deployment_decision(promotion: dict, champion_score: float | None, deployable: dict[str, float],
                        min_improvement: float) -> dict:
    """Which scorer serves after this run, so that there is always one: the challenger (when
    :func:`promotion_decision` promotes it and it beats every deployable baseline), else the
    current champion, else the best deployable baseline (a registered scorer such as the BG/NBD
    fallback). One rule on this run's holdout and promotion metric: whoever serves stays unless
    another scores more than ``min_improvement`` better. ``champion_score`` is the champion's
    out-of-time figure (None when there is no other champion; -inf when it cannot score)."""
    metric, challenger = promotion["metric"], promotion["challenger_version"]
    champion = promotion["previous_champion_version"]
    # Sorted by score, then name: the same data always deploys the same baseline.
    best = max(deployable, key=lambda name: (deployable[name], name)) if deployable else None
    best_score = deployable[best] if best is not None else float("-inf")
    if promotion["promoted"] and promotion["challenger_score"] > best_score:
        return {"deploy": CHALLENGER_WINS, "version": challenger, "reason": promotion["reason"]}
    why = promotion["reason"] if not promotion["promoted"] else (
        f"does not beat the deployable baseline {best} on {metric} ({promotion['challenger_score']:.4f} vs "
        f"{best_score:.4f})")
    has_champion = champion not in (None, challenger) and champion_score is not None
    if has_champion and champion_score + min_improvement >= best_score:
        return {"deploy": CHAMPION_KEPT, "version": champion,
                "reason": f"challenger v{challenger}: {why}; champion v{champion} kept ({metric} "
                          f"{champion_score:.4f}, best deployable baseline {best} {best_score:.4f})"}
    if best is None:
        raise ValueError(f"evaluate: challenger v{challenger}: {why}; there is no champion and no deployable baseline "
                         "(the snapshots lack the BG/NBD feature): nothing can serve. Keep the btyd features in "
                         "the features stage, or improve the model")
    against = (f"better than champion v{champion} ({champion_score:.4f})" if has_champion and champion_score > float("-inf")
               else "and there is no champion that can score this holdout")
    return {"deploy": BASELINE_WINS, "baseline": best, "baseline_score": best_score,
            "reason": f"challenger v{challenger}: {why}; baseline {best} scores {best_score:.4f} on {metric}, {against}"}


BACKTEST_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift")


def backtest(snapshots: pd.DataFrame, numeric: list[str], categorical: list[str], params: Params
             ) -> tuple[list[FoldScores], list[dict]]:
    """The expanding-window backtest: each fold's test-cutoff scores under every calibration the
    selection may choose (its trees, early stopping and calibration fitted before that cutoff),
    and the folds that could not be run, each with its reason."""
    from churnlens import model

    scores = []
    folds, skipped = model.backtest_splits(snapshots, params.features, params.train)
    uncalibrated = params.train.model_copy(update={"calibration": "none"})
    for split in folds:
        validation = split.validation_rows(snapshots)
        # One fit of the trees per fold; each calibration is fitted on its validation rows.
        trees = model.fit_with_early_stopping(split.train_rows(snapshots), validation, numeric, categorical, uncalibrated)
        scores.append(fold_scores(trees, validation, split.holdout_rows(snapshots), split.holdout, numeric,
                                  categorical, params))
    for fold in skipped:
        log.warning("backtest fold at %s skipped: %s", fold.test_cutoff.date(), fold.reason)
    return scores, [{"test_cutoff": f.test_cutoff.date().isoformat(), "reason": f.reason} for f in skipped]


def fold_scores(trees: FittedModel, validation: pd.DataFrame, test: pd.DataFrame, test_cutoff: pd.Timestamp,
                numeric: list[str], categorical: list[str], params: Params) -> FoldScores:
    """Uncalibrated ``trees`` (never trained on ``validation`` nor ``test``) scored on ``test``
    under every calibration the selection may choose, each fitted on ``validation``."""
    from churnlens import model

    by_calibration = {
        method: model.churn_probability(
            model.with_calibration(trees, validation, numeric, categorical,
                                   params.train.model_copy(update={"calibration": method})).pipeline,
            test, numeric, categorical)
        for method in params.train.selection.calibrations}
    return FoldScores(test_cutoff, test[LABEL].to_numpy(dtype=int),
                      test[BTYD_INPUT].to_numpy(dtype=float) if BTYD_INPUT in numeric else None, by_calibration)


def backtest_metrics(folds: list[FoldScores], layer: ProbabilityLayer, skipped: int, params: Params) -> dict[str, float]:
    """The backtest figures of the chosen probability layer (chosen on these folds: the holdout is
    the figure the choice never saw)."""
    per_fold = []
    for number, fold in enumerate(folds, start=1):
        per_fold.append(classification_metrics(fold.y, fold.probability(layer, params.train.probability_floor),
                                               params.evaluate.top_fraction))
        log.info("backtest fold %d (test cutoff %s): ROC AUC %.3f", number, fold.test_cutoff.date(),
                 per_fold[-1]["roc_auc"])
    return backtest_summary(per_fold, skipped)
