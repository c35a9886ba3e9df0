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
