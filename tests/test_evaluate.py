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
