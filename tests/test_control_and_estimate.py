"""The campaign's control group (churnlens.control) and the label-free estimate (churnlens.estimate)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from churnlens import control, estimate
from churnlens.evaluate import classification_metrics

AS_OF = pd.Timestamp("2024-06-01", tz="UTC")
IDS = pd.Series([f"C{i:08d}" for i in range(20_000)])


def test_the_control_draw_is_each_customers_own_in_every_run_batch_and_order() -> None:
    held = control.held_out(IDS, 0.1, seed=0)
    assert np.array_equal(held, control.held_out(IDS, 0.1, seed=0))
    shuffled = IDS.sample(frac=1.0, random_state=3)
    assert np.array_equal(control.held_out(shuffled, 0.1, seed=0), held[shuffled.index])
    assert np.array_equal(control.held_out(IDS[:500], 0.1, seed=0), held[:500])
    # About the share asked for (4 binomial standard deviations); another seed draws anew.
    assert abs(held.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(IDS))
    both = (held & control.held_out(IDS, 0.1, seed=1)).mean()
    assert abs(both - 0.01) < 4 * np.sqrt(0.01 * 0.99 / len(IDS))
    # A larger share holds out the same customers and more: raising it never treats a control customer.
    assert (held <= control.held_out(IDS, 0.2, seed=0)).all()
    assert not control.held_out(IDS, 0.0, seed=0).any()


def test_the_control_group_is_a_share_of_the_campaign_only(small_params) -> None:
    from churnlens.score import select_campaign

    rng = np.random.default_rng(0)
    planned = pd.DataFrame({"customer_id": IDS[:4000], "as_of": AS_OF, "priority": rng.normal(5, 10, 4000),
                            "action_cost": rng.uniform(1, 5, 4000)})
    config = small_params.score.model_copy(update={"control_share": 0.3, "campaign_budget": 3000.0})
    out = select_campaign(planned, config)
    assert out["in_campaign"].sum() > 500
    assert not (out["control_group"] & ~out["in_campaign"]).any()
    share = out.loc[out["in_campaign"], "control_group"].mean()
    assert 0.25 < share < 0.35
    assert control.arms(out).value_counts().to_dict() == {
        "none": int((~out["in_campaign"]).sum()), "treated": int((out["in_campaign"] & ~out["control_group"]).sum()),
        "control": int(out["control_group"].sum())}


def test_treated_against_control_measures_the_share_of_churners_kept() -> None:
    halved = control.treatment_effect(100, 1000, 200, 1000, confidence=0.95)
    assert halved["success_rate"] == pytest.approx(0.5)
    low, high = halved["success_rate_interval"]
    assert 0.3 < low < 0.5 < high < 0.65
    assert halved["difference_interval"][1] < 0
    same = control.treatment_effect(150, 1000, 150, 1000, confidence=0.95)
    assert same["success_rate"] == 0 and same["success_rate_interval"][0] < 0 < same["success_rate_interval"][1]
    # Every treated customer kept: the rate is 1 and its interval holds it.
    everyone_kept = control.treatment_effect(0, 50, 10, 50, confidence=0.95)
    low, high = everyone_kept["success_rate_interval"]
    assert everyone_kept["success_rate"] == 1 and low < 1 <= high + 1e-9
    # Newcombe's hybrid score interval, his 1998 example (56/70 against 48/80): [0.0524, 0.3339].
    newcombe = control.treatment_effect(56, 70, 48, 80, confidence=0.95)["difference_interval"]
    assert newcombe == pytest.approx([0.0524, 0.3339], abs=1e-4)
    nobody_churned = control.treatment_effect(0, 100, 0, 100, confidence=0.95)
    assert nobody_churned["success_rate"] is None and "no churner" in nobody_churned["success_rate_note"]


def test_an_arm_below_the_minimum_gets_counts_and_no_figures() -> None:
    scores = pd.DataFrame({"customer_id": IDS[:60], "segment": "brand_user", "action": "a", "action_success_rate": 0.2,
                           "in_campaign": True, "control_group": [True] * 10 + [False] * 50})
    (whole, cell) = control.campaign_effects(scores, pd.Series([True, False] * 30), min_customers=30, confidence=0.95)
    assert whole["segment"] == "all" and whole["control"] == 10 and "success_rate" not in whole
    assert cell["assumed_success_rate"] == 0.2 and "fewer than 30" in cell["note"]


def test_each_label_sets_figures_equal_the_evaluation_metrics_ties_included() -> None:
    rng = np.random.default_rng(1)
    p = np.round(rng.beta(2, 3, 3000), 2)  # many ties
    labels = rng.random((4, 3000)) < p
    figures = estimate.label_set_figures(labels, estimate.Ranking.of(p, top_fraction=0.1, bins=10))
    for k in range(4):
        metrics = classification_metrics(labels[k], p, 0.1)
        for name in ("roc_auc", "pr_auc", "top_decile_lift", "ece"):
            assert figures[name][k] == pytest.approx(metrics[name], abs=1e-12), name


def test_the_estimate_is_what_a_calibrated_models_runs_realise_on_average() -> None:
    """Probabilities that are the true churn chances: the realised AUC of independent runs
    averages to the estimate, and the estimate's 5-95% spread holds about 90% of them."""
    rng = np.random.default_rng(7)
    p = rng.beta(1.5, 4, 4000)
    expected = estimate.expected_metrics(p, top_fraction=0.1, draws=300)
    realised = np.array([roc_auc_score(rng.random(4000) < p, p) for _ in range(300)])
    assert expected["roc_auc"] == pytest.approx(realised.mean(), abs=3 * realised.std() / np.sqrt(300) + 1e-3)
    inside = np.mean((realised >= expected["roc_auc_p05"]) & (realised <= expected["roc_auc_p95"]))
    assert 0.84 < inside < 0.96
    brier = np.array([np.mean(((rng.random(4000) < p) - p) ** 2) for _ in range(300)])
    assert expected["brier"] == pytest.approx(brier.mean(), abs=4 * brier.std() / np.sqrt(300))
    # Overconfident probabilities (the same ranking, pushed towards 0 and 1) promise a better AUC
    # than the labels give them: why the estimate carries a calibration caveat.
    log_odds = np.log(p / (1 - p))
    overconfident = 1 / (1 + np.exp(-2.5 * log_odds))
    assert estimate.expected_metrics(overconfident, 0.1, 100)["roc_auc"] > realised.mean() + 0.05


def test_the_caveats_name_the_assumptions_known_to_fail() -> None:
    assert any("not calibrated" in note for note in estimate.caveats(0.12, []))
    assert not any("not calibrated" in note for note in estimate.caveats(0.02, []))
    assert any("drifted" in note and "recency" in note for note in estimate.caveats(0.02, ["recency"]))
    assert any("unknown" in note for note in estimate.caveats(None, []))
