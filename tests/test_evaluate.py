from __future__ import annotations

import numpy as np
import pytest

from churnlens.evaluate import classification_metrics, curves, promotion_score, top_fraction_lift


def test_lift_by_hand() -> None:
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert top_fraction_lift(y, score, 0.2) == pytest.approx(0.5 / 0.2)  # top 2 hold 1 churner; base rate 0.2


def test_metrics_of_a_perfect_and_a_useless_score() -> None:
    y = np.array([0, 0, 1, 1])
    perfect = classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), 0.5)
    assert perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == 1.0 and perfect["top_decile_lift"] == 2.0
    assert perfect["brier"] == pytest.approx(np.mean([0.01, 0.04, 0.04, 0.01]))
    ranking = classification_metrics(y, np.array([5, 7, 1, 2]), 0.5, is_probability=False)
    assert ranking["roc_auc"] == 0.0 and "brier" not in ranking


def test_single_class_holdout_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="single class"):
        classification_metrics(np.array([1, 1]), np.array([0.2, 0.3]), 0.1)


def test_curves_are_consistent() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(1000)
    y = (rng.random(1000) < p).astype(int)
    plot = curves(y, p, bins=10)
    assert plot["gains"]["share_of_churners"].iloc[-1] == pytest.approx(1.0)
    assert plot["calibration"]["customers"].sum() == 1000
    assert np.allclose(plot["calibration"]["predicted"], plot["calibration"]["observed"], atol=0.12)


def test_promotion_score_negates_losses() -> None:
    assert promotion_score({"log_loss": 0.3}, "neg_log_loss") > promotion_score({"log_loss": 0.5}, "neg_log_loss")
    assert promotion_score({"roc_auc": 0.8}, "roc_auc") == 0.8


def test_profit_curve_by_hand() -> None:
    from churnlens.evaluate import best_campaign, profit_curve

    y = np.array([1, 0, 1, 0])
    score = np.array([0.9, 0.8, 0.4, 0.1])
    value = np.array([100.0, 50.0, 20.0, 10.0])
    curve = profit_curve(y, score, value, contact_cost=1.0, incentive_cost=10.0, acceptance_rate=0.5)
    # per contact: cost 1 + 0.5 x 10 = 6; churners keep 0.5 x value: +50 (first), +10 (third)
    assert curve["expected_profit"].tolist() == pytest.approx([0.0, 44.0, 38.0, 42.0, 36.0])
    assert curve["share_targeted"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert best_campaign(curve) == {"best_share_targeted": 0.25, "max_expected_profit": 44.0}


def test_no_campaign_when_nothing_pays() -> None:
    from churnlens.evaluate import best_campaign, profit_curve

    curve = profit_curve(np.array([0, 0]), np.array([0.5, 0.4]), np.array([10.0, 10.0]), 1.0, 1.0, 0.5)
    assert best_campaign(curve) == {"best_share_targeted": 0.0, "max_expected_profit": 0.0}


def test_expected_calibration_error_measures_the_reliability_gap() -> None:
    from churnlens.evaluate import expected_calibration_error

    rng = np.random.default_rng(3)
    probability = rng.uniform(0.05, 0.95, 50_000)
    y = (rng.random(50_000) < probability).astype(int)
    assert expected_calibration_error(y, probability) < 0.01
    shifted = np.clip(probability + 0.1, 0, 1)
    assert expected_calibration_error(y, shifted) == pytest.approx(np.mean(shifted - probability), abs=0.01)
    metrics = classification_metrics(y, probability, 0.1)
    assert metrics["ece"] == expected_calibration_error(y, probability)


PROMOTION = {"metric": "roc_auc", "version": "3", "min_improvement": 0.01}


@pytest.mark.parametrize(("challenger", "champion", "promoted", "reason"), [
    (0.80, 0.75, True, "beats champion v2 on roc_auc"),
    (0.755, 0.75, False, "champion v2 is as good or better on roc_auc"),  # within min_improvement
    (0.70, 0.75, False, "champion v2 is as good or better on roc_auc"),
], ids=["beats-champion", "within-min-improvement", "worse-than-champion"])
def test_promotion_compares_a_challenger_that_beats_the_baselines_with_the_champion(
        challenger: float, champion: float, promoted: bool, reason: str) -> None:
    from churnlens.evaluate import needs_champion_score, promotion_decision

    beats = {"recency_rule": True, "rfm_logistic": True}
    assert needs_champion_score(beats, "3", "2")
    decision = promotion_decision(PROMOTION["metric"], "3", challenger, beats, "2", champion,
                                  PROMOTION["min_improvement"])
    assert decision["promoted"] is promoted and decision["reason"] == reason
    assert decision["champion_score"] == champion and decision["previous_champion_version"] == "2"


def test_a_challenger_losing_to_a_baseline_is_never_promoted_even_without_a_champion() -> None:
    from churnlens.evaluate import needs_champion_score, promotion_decision

    beats = {"recency_rule": True, "rfm_logistic": False}
    assert not needs_champion_score(beats, "1", None)
    decision = promotion_decision("roc_auc", "1", 0.99, beats, None, None, 0.0)
    assert decision["promoted"] is False and "rfm_logistic" in decision["reason"]
    first = promotion_decision("roc_auc", "1", 0.99, {"recency_rule": True}, None, None, 0.0)
    assert first["promoted"] is True and first["reason"] == "no champion yet"


def test_backtest_summary_of_no_fold_reports_none() -> None:
    from churnlens.evaluate import backtest_summary

    assert backtest_summary([], 2) == {"backtest_folds": 0, "backtest_folds_skipped": 2}
    folds = [{n: v for n in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift")}
             for v in (0.6, 0.8)]
    summary = backtest_summary(folds, 0)
    assert summary["fold2_roc_auc"] == 0.8 and summary["backtest_roc_auc_mean"] == pytest.approx(0.7)
    assert summary["backtest_roc_auc_std"] == pytest.approx(0.1) and summary["backtest_folds"] == 2


def test_rfm_baseline_of_a_log_without_amounts_uses_recency_and_frequency() -> None:
    """No spend_365d (a log of customers and times): the baseline still learns from recency and
    frequency, and it reads the monetary value wherever the snapshots have one."""
    import pandas as pd

    from churnlens.evaluate import rfm_logistic_baseline

    rng = np.random.default_rng(3)
    recency = rng.exponential(60, 400)
    rows = pd.DataFrame({"days_since_last_purchase": recency, "purchases_365d": rng.poisson(6, 400),
                         "churned": rng.random(400) < recency / (recency + 60)})
    train, holdout = rows.iloc[:300], rows.iloc[300:]
    without_spend = rfm_logistic_baseline(train, holdout, seed=0)
    assert classification_metrics(holdout["churned"].to_numpy(int), without_spend, 0.1)["roc_auc"] > 0.7
    spend = pd.Series(rng.gamma(2, 50, 400), index=rows.index)
    with_spend = rfm_logistic_baseline(train.assign(spend_365d=spend), holdout.assign(spend_365d=spend), seed=0)
    assert not np.allclose(without_spend, with_spend)
