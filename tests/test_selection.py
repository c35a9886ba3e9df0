"""The probability layer chosen out of time: the rule, the pooled scorer and its round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnlens import model, tracking
from churnlens.config import SelectionConfig, TrainConfig
from churnlens.contract import ModelContract
from churnlens.selection import FoldScores, ProbabilityLayer, candidates, choose

FLOOR = 0.005


def _fold(rng: np.random.Generator, model_noise: float, btyd_noise: float, n: int = 4000) -> FoldScores:
    """A test cutoff whose true churn probability both scorers see through their own noise (on the
    log-odds), each noise independent of the other's."""
    truth = rng.normal(0, 1.2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(int)
    seen = lambda noise: 1 / (1 + np.exp(-(truth + rng.normal(0, noise, n))))  # noqa: E731
    return FoldScores(pd.Timestamp("2024-01-01"), y, seen(btyd_noise), {"trees": seen(model_noise)})


@pytest.mark.parametrize(("model_noise", "btyd_noise", "expected"), [
    (0.2, 2.0, 1.0),  # the model sees the truth, BG/NBD barely: the model alone
    (2.0, 0.2, 0.0),  # the other way round: BG/NBD alone
    (0.8, 0.8, 0.5),  # as good, independent errors: the even pool averages them away
])
def test_the_fold_scores_choose_the_pool(model_noise, btyd_noise, expected) -> None:
    rng = np.random.default_rng(3)
    folds = [_fold(rng, model_noise, btyd_noise) for _ in range(3)]
    layers = candidates(SelectionConfig(calibrations=("trees",)), has_btyd=True)
    chosen = choose(folds, layers, ProbabilityLayer("trees"), FLOOR)
    assert chosen.chosen.btyd_weight == expected
    briers = {row["btyd_weight"]: row["brier_mean"] for row in chosen.table}
    assert briers[expected] == min(briers.values()) and len(briers) == 5


def test_without_folds_or_btyd_the_model_stands_alone() -> None:
    fallback = ProbabilityLayer("sigmoid")
    several = [ProbabilityLayer("trees", 0.5), ProbabilityLayer("trees")]
    assert choose([], several, fallback, FLOOR).chosen == fallback
    assert choose([], several[:1], fallback, FLOOR).chosen == several[0]  # one candidate: nothing to choose
    assert {layer.btyd_weight for layer in candidates(SelectionConfig(), has_btyd=False)} == {1.0}
    # BG/NBD alone is one candidate, whatever the number of calibrations.
    assert [layer.btyd_weight for layer in candidates(SelectionConfig(), has_btyd=True)].count(0.0) == 1


def test_weights_must_be_distinct_shares() -> None:
    from pydantic import ValidationError

    for weights in ([1.2], [0.5, 0.5], [-0.1]):
        with pytest.raises(ValidationError, match="distinct weights"):
            SelectionConfig(btyd_weights=weights)


def test_a_pooled_model_scores_between_its_two_scorers_and_survives_its_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    n = 3000
    rows = pd.DataFrame({"x": rng.normal(size=n), "btyd_p_no_purchase_horizon": rng.uniform(0, 1, n)})
    rows["churned"] = rng.random(n) < 1 / (1 + np.exp(-2 * rows["x"]))
    numeric = ["x", "btyd_p_no_purchase_horizon"]
    config = TrainConfig(xgboost={"n_estimators": 30, "max_depth": 2})
    trees = model.fit_trees(rows, numeric, [], config, 30)
    frame = model.model_input(rows, numeric, [])
    alone = model.churn_probability(trees, rows, numeric, [])
    btyd = np.clip(rows["btyd_p_no_purchase_horizon"].to_numpy(), FLOOR, 1 - FLOOR)
    for weight in (1.0, 0.75, 0.0):
        pooled = model.with_probability_layer(trees, weight, rows, numeric, [], FLOOR)
        probability = model.churn_probability(pooled, rows, numeric, [])
        low, high = np.minimum(alone, btyd), np.maximum(alone, btyd)
        assert ((probability >= low - 1e-6) & (probability <= high + 1e-6)).all()
        assert np.allclose(probability, alone) == (weight == 1)
        assert np.allclose(probability, btyd) == (weight == 0)
        folder = tmp_path / f"w{weight}"
        tracking.save_model_dir(pooled, frame.head(5), ModelContract(numeric, []).to_metadata(), folder)
        loaded = tracking.load_model(str(folder))
        assert np.array_equal(model.churn_probability(loaded.pipeline, rows, numeric, []), probability)
        # The reasons still read the trees (or BG/NBD's one input, where it stands alone).
        explained = model.contributions(loaded.pipeline, rows.head(50), numeric, [])
        assert list(explained.columns) == (["btyd_p_no_purchase_horizon"] if weight == 0 else numeric)
