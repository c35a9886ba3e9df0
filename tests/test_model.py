from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost

from churnlens.config import FeaturesConfig, TrainConfig
from churnlens.model import build_pipeline, churn_probability, fit_with_early_stopping, rows_at, temporal_split


def grid(n_cutoffs: int, complete_until: int) -> pd.DataFrame:
    cutoffs = pd.date_range("2024-01-01", periods=n_cutoffs, freq="30D")
    return pd.DataFrame({"customer_id": "A", "cutoff": cutoffs, "label_complete": np.arange(n_cutoffs) < complete_until})


def test_split_purges_label_windows_that_reach_the_judged_cutoff() -> None:
    snapshots = grid(12, complete_until=9)  # cutoffs 0..8 fully labelled
    split = temporal_split(snapshots, FeaturesConfig(horizon_days=90), TrainConfig(validation_cutoffs=1))
    cutoffs = list(snapshots["cutoff"])
    assert split.holdout == cutoffs[8]
    assert split.validation == [cutoffs[5]]  # 5 + 90 days = holdout: the last one whose label is known then
    assert split.train == cutoffs[:3]  # labels known by the validation cutoff
    for c in split.train + split.validation:
        assert c + pd.Timedelta(days=90) <= split.holdout
    for c in split.train:
        assert c + pd.Timedelta(days=90) <= split.validation[0]


def test_holdout_rows_never_reach_training() -> None:
    snapshots = grid(12, complete_until=9)
    split = temporal_split(snapshots, FeaturesConfig(), TrainConfig())
    training = rows_at(snapshots, split.train + split.validation)
    holdout = rows_at(snapshots, [split.holdout])
    assert set(training.index).isdisjoint(holdout.index)
    assert training["cutoff"].max() < holdout["cutoff"].min()


def test_split_explains_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"no cutoff has a complete label window"):
        temporal_split(grid(3, 0), FeaturesConfig(), TrainConfig())
    with pytest.raises(ValueError, match=r"only 2 cutoff\(s\) have a complete label window.*every_days"):
        temporal_split(grid(5, 2), FeaturesConfig(), TrainConfig())


def test_short_history_splits_with_overlapping_labels_and_says_so() -> None:
    """Six months of weekly cutoffs with a 90-day horizon: no strict split exists, a flagged one does."""
    cutoffs = pd.date_range("2024-01-01", periods=26, freq="7D")
    snapshots = pd.DataFrame({"customer_id": "A", "cutoff": cutoffs,
                              "label_complete": cutoffs + pd.Timedelta(days=90) <= cutoffs[-1]})
    split = temporal_split(snapshots, FeaturesConfig(horizon_days=90), TrainConfig(validation_cutoffs=1))
    complete = [c for c in cutoffs if c + pd.Timedelta(days=90) <= cutoffs[-1]]
    assert split.overlapping_labels and split.as_dict()["overlapping_labels"]
    assert split.holdout == complete[-1] and split.validation == split.train == complete[:-1]
    # Time cannot separate the rows, so customers do: the trees never see a validated or judged customer.
    customers = pd.DataFrame({"customer_id": [f"c{i}" for i in range(400)]}).merge(
        pd.DataFrame({"cutoff": cutoffs, "label_complete": snapshots["label_complete"]}), how="cross")
    trained_on = set(split.train_rows(customers)["customer_id"])
    judged = set(split.holdout_rows(customers)["customer_id"])
    assert trained_on.isdisjoint(set(split.validation_rows(customers)["customer_id"]))
    assert trained_on.isdisjoint(judged) and 60 < len(judged) < 140
    assert judged == set(split.validation_rows(customers)["customer_id"])
    assert not temporal_split(grid(12, 9), FeaturesConfig(), TrainConfig()).overlapping_labels


def test_pipeline_learns_a_signal_and_handles_unseen_categories() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame({
        "days_since_last_purchase": rng.exponential(30, n),
        "noise": rng.normal(size=n),
        "contract_type": rng.choice(["annual", "none"], n),
    })
    logit = (frame["days_since_last_purchase"] - 30) / 10 + np.where(frame["contract_type"] == "annual", -1, 1)
    frame["churned"] = rng.random(n) < 1 / (1 + np.exp(-logit))
    numeric, categorical = ["days_since_last_purchase", "noise"], ["contract_type"]
    fitted = fit_with_early_stopping(frame.iloc[:2000], frame.iloc[2000:], numeric, categorical,
                                     TrainConfig(xgboost={"n_estimators": 200, "early_stopping_rounds": 10}))
    assert 1 <= fitted.best_iteration <= 200
    test = frame.iloc[2000:].copy()
    probability = churn_probability(fitted.pipeline, test, numeric, categorical)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(test["churned"], probability) > 0.85
    test.loc[test.index[:5], "contract_type"] = "brand-new-contract"
    assert np.isfinite(churn_probability(fitted.pipeline, test, numeric, categorical)).all()


def test_same_seed_same_model() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=500), "c": rng.choice(["a", "b"], 500)})
    frame["churned"] = rng.random(500) < 0.3
    make = lambda: build_pipeline(["x"], ["c"], TrainConfig(seed=3)).fit(frame[["c", "x"]], frame["churned"])  # noqa: E731
    assert np.array_equal(make().predict_proba(frame[["c", "x"]]), make().predict_proba(frame[["c", "x"]]))


def test_calibration_on_the_validation_fold_repairs_miscalibrated_scores() -> None:
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(5)
    n = 6000
    frame = pd.DataFrame({"x": rng.normal(size=n), "noise": rng.normal(size=n), "c": rng.choice(["a", "b"], n)})
    frame["churned"] = rng.random(n) < 1 / (1 + np.exp(-(2 * frame["x"] - 2.5)))  # ~15% churners
    train, validation, test = frame.iloc[:3000], frame.iloc[3000:4500], frame.iloc[4500:]
    settings = {"class_weight": "balanced", "xgboost": {"n_estimators": 150, "early_stopping_rounds": 15}}
    # Balancing the classes inflates raw probabilities: the miscalibrated case.
    raw = fit_with_early_stopping(train, validation, ["x", "noise"], ["c"], TrainConfig(calibration="none", **settings))
    calibrated = fit_with_early_stopping(train, validation, ["x", "noise"], ["c"],
                                         TrainConfig(calibration="isotonic", **settings))
    y = test["churned"].astype(int)
    raw_brier = brier_score_loss(y, churn_probability(raw.pipeline, test, ["x", "noise"], ["c"]))
    calibrated_brier = brier_score_loss(y, churn_probability(calibrated.pipeline, test, ["x", "noise"], ["c"]))
    assert churn_probability(raw.pipeline, test, ["x", "noise"], ["c"]).mean() > y.mean() + 0.1
    assert calibrated_brier < raw_brier - 0.02


def test_backtest_folds_never_see_their_future_nor_the_holdout() -> None:
    from churnlens.model import backtest_splits

    snapshots = grid(14, complete_until=12)
    features, train = FeaturesConfig(horizon_days=60), TrainConfig(backtest_folds=3)
    final = temporal_split(snapshots, features, train)
    folds, skipped = backtest_splits(snapshots, features, train)
    assert len(folds) == 3 and skipped == []
    span = pd.Timedelta(days=60)
    tests = [fold.holdout for fold in folds]
    assert tests == sorted(tests) and all(t + span <= final.holdout for t in tests)
    for fold in folds:
        assert all(c + span <= fold.validation[0] for c in fold.train)
        assert all(v + span <= fold.holdout for v in fold.validation)
        assert final.holdout not in fold.train + fold.validation + [fold.holdout]
    assert backtest_splits(snapshots, features, TrainConfig(backtest_folds=0)) == ([], [])


def test_backtest_reports_every_fold_it_cannot_run_with_the_reason() -> None:
    from churnlens.model import backtest_splits

    snapshots = grid(14, complete_until=12)
    folds, skipped = backtest_splits(snapshots, FeaturesConfig(horizon_days=60), TrainConfig(backtest_folds=8))
    assert len(folds) + len(skipped) >= 8 - 1 and skipped
    assert all(fold.reason for fold in skipped)


@pytest.mark.parametrize("approximate", [False, True], ids=["exact", "approximate"])
def test_contributions_explain_predictions_and_name_the_driver(approximate: bool) -> None:
    from churnlens.model import contributions, top_reasons

    rng = np.random.default_rng(2)
    n = 2000
    frame = pd.DataFrame({"days_since_last_purchase": rng.exponential(30, n), "noise": rng.normal(size=n),
                          "contract_type": rng.choice(["annual", "none"], n)})
    frame["churned"] = frame["days_since_last_purchase"] > 40
    fitted = fit_with_early_stopping(frame.iloc[:1500], frame.iloc[1500:], ["days_since_last_purchase", "noise"],
                                     ["contract_type"], TrainConfig(calibration="none"))
    contrib = contributions(fitted.pipeline, frame.head(50), ["days_since_last_purchase", "noise"], ["contract_type"],
                            approximate=approximate)
    margin = fitted.pipeline.named_steps["classifier"].get_booster().predict(
        xgboost.DMatrix(fitted.pipeline.named_steps["preprocess"].transform(
            frame.head(50)[["contract_type", "days_since_last_purchase", "noise"]])), output_margin=True)
    bias = margin - contrib.sum(axis=1).to_numpy()
    assert np.allclose(bias, bias[0], atol=1e-4)  # contributions + one bias = the model's log-odds
    risky = frame.head(50)["days_since_last_purchase"] > 60
    reasons = top_reasons(contrib)
    assert reasons[risky].str.startswith("days_since_last_purchase").all()


def test_tuning_is_budgeted_seeded_and_keeps_the_best_trial() -> None:
    from churnlens.model import tune

    rng = np.random.default_rng(4)
    n = 2000
    frame = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n), "c": rng.choice(["a", "b"], n)})
    frame["churned"] = rng.random(n) < 1 / (1 + np.exp(-(frame["x"] * frame["z"] * 2)))
    config = TrainConfig(seed=1, tuning={"n_trials": 3},
                         xgboost={"n_estimators": 60, "early_stopping_rounds": 5, "max_depth": 1})
    first = tune(frame.iloc[:1400], frame.iloc[1400:], ["x", "z"], ["c"], config)
    second = tune(frame.iloc[:1400], frame.iloc[1400:], ["x", "z"], ["c"], config)
    assert len(first.trials) == 4 and first.trials == second.trials  # params.yaml values + 3 samples, seeded
    best = min(first.trials, key=lambda t: t["validation_logloss"])
    assert first.config.xgboost.max_depth == best.get("max_depth", 1)
    assert first.trials[0]["validation_logloss"] >= best["validation_logloss"]
    # The kept trees are the best trial's, and the very trees a refit with the chosen settings gives.
    assert (first.fitted.validation_logloss, first.fitted.best_iteration) == (best["validation_logloss"], best["trees"])
    refit = fit_with_early_stopping(frame.iloc[:1400], frame.iloc[1400:], ["x", "z"], ["c"],
                                    first.config.model_copy(update={"calibration": "none"}))
    assert np.array_equal(churn_probability(first.fitted.pipeline, frame, ["x", "z"], ["c"]),
                          churn_probability(refit.pipeline, frame, ["x", "z"], ["c"]))
    off = config.model_copy(update={"tuning": config.tuning.model_copy(update={"n_trials": 0})})
    assert tune(frame.iloc[:1400], frame.iloc[1400:], ["x", "z"], ["c"], off).config == off


def drifting_snapshots(n_cutoffs: int = 12, per_cutoff: int = 1500, seed: int = 5) -> pd.DataFrame:
    """Monthly cutoffs whose churn base rate climbs over time; x carries the same signal throughout.
    The last three cutoffs' labels are not complete yet."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, cutoff in enumerate(pd.date_range("2024-01-01", periods=n_cutoffs, freq="30D")):
        x = rng.normal(size=per_cutoff)
        churned = rng.random(per_cutoff) < 1 / (1 + np.exp(-(2 * x - 2.0 + 0.25 * k)))
        frames.append(pd.DataFrame({"customer_id": [f"c{i}" for i in range(per_cutoff)], "cutoff": cutoff, "x": x,
                                    "noise": rng.normal(size=per_cutoff), "churned": churned,
                                    "label_complete": k < n_cutoffs - 3}))
    return pd.concat(frames, ignore_index=True)


def test_deployed_refit_trains_on_exactly_the_labelled_cutoffs_and_calibrates_out_of_time() -> None:
    from churnlens.model import deployed_model

    snapshots = drifting_snapshots()
    # Make the still-open cutoffs poison: if they reached the refit, x's sign would flip.
    open_rows = ~snapshots["label_complete"]
    snapshots.loc[open_rows, "churned"] = snapshots.loc[open_rows, "x"] < 0
    features, config = FeaturesConfig(horizon_days=60), TrainConfig(calibration="isotonic",
                                                                     xgboost={"n_estimators": 80, "max_depth": 2})
    split = temporal_split(snapshots, features, config)
    evaluated = fit_with_early_stopping(rows_at(snapshots, split.train), rows_at(snapshots, split.validation),
                                        ["x", "noise"], [], config)
    deployed = deployed_model(snapshots, split, evaluated, ["x", "noise"], [], config)
    labelled = sorted(pd.Timestamp(c) for c in snapshots.loc[snapshots["label_complete"], "cutoff"].unique())
    assert deployed.train_cutoffs == labelled
    assert deployed.calibration_cutoffs == labelled[-2:]  # the latest labelled cutoffs
    assert max(split.train) < split.holdout <= max(deployed.train_cutoffs)

    from sklearn.metrics import roc_auc_score

    future = drifting_snapshots(n_cutoffs=9, seed=9)
    future = future[future["cutoff"] == future["cutoff"].max()]  # the base rate of the latest labelled cutoff
    probability = churn_probability(deployed.pipeline, future, ["x", "noise"], [])
    assert roc_auc_score(future["churned"], probability) > 0.8
    floor = config.probability_floor - 1e-6  # float32 scores
    assert probability.min() >= floor and probability.max() <= 1 - floor
    # Calibrated on the latest out-of-time cutoffs, the mean tracks the moved base rate.
    stale = churn_probability(evaluated.pipeline, future, ["x", "noise"], [])
    assert abs(probability.mean() - future["churned"].mean()) < 0.03
    assert abs(probability.mean() - future["churned"].mean()) < abs(stale.mean() - future["churned"].mean())


def test_trees_calibration_keeps_the_trees_probabilities_but_never_certainty() -> None:
    rng = np.random.default_rng(8)
    n = 4000
    frame = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(["a", "b"], n)})
    frame["churned"] = frame["x"] > 0  # separable: the raw trees drive many scores past the floor
    train, validation = frame.iloc[:3000], frame.iloc[3000:]
    settings = {"xgboost": {"n_estimators": 300, "learning_rate": 0.3, "early_stopping_rounds": 300}}
    raw = fit_with_early_stopping(train, validation, ["x"], ["c"], TrainConfig(calibration="none", **settings))
    kept = fit_with_early_stopping(train, validation, ["x"], ["c"], TrainConfig(calibration="trees", **settings))
    floor = TrainConfig().probability_floor
    raw_p = churn_probability(raw.pipeline, frame, ["x"], ["c"])
    kept_p = churn_probability(kept.pipeline, frame, ["x"], ["c"])
    inside = (raw_p > floor) & (raw_p < 1 - floor)
    assert (~inside).sum() > 100  # the case the floor exists for
    assert kept_p.min() >= floor - 1e-6 and kept_p.max() <= 1 - floor + 1e-6
    assert np.allclose(kept_p[inside], raw_p[inside], atol=1e-6)  # nothing fitted on any one season


def seasonal_snapshots(levels: list[float], per_cutoff: int = 1500, seed: int = 6) -> pd.DataFrame:
    """Monthly cutoffs whose churn log-odds are ``2 x + level``: x carries the same signal throughout,
    the base rate swings with the season. The last three cutoffs' labels are not complete yet."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, (cutoff, level) in enumerate(zip(pd.date_range("2024-01-01", periods=len(levels), freq="30D"), levels, strict=True)):
        x = rng.normal(size=per_cutoff)
        churned = rng.random(per_cutoff) < 1 / (1 + np.exp(-(2 * x + level)))
        frames.append(pd.DataFrame({"customer_id": [f"c{i}" for i in range(per_cutoff)], "cutoff": cutoff, "x": x,
                                    "noise": rng.normal(size=per_cutoff), "churned": churned,
                                    "label_complete": k < len(levels) - 3}))
    return pd.concat(frames, ignore_index=True)


def test_a_seasonal_peak_in_the_latest_labels_is_not_carried_into_every_score() -> None:
    """Real logs swing with the season: the latest labelled cutoffs can sit on a peak that has passed
    by the scoring date. The trees, fitted on every labelled cutoff, keep the long-run base rate; a
    calibration fitted on the latest cutoffs carries the peak."""
    from churnlens.model import deployed_model

    levels = [-1.0] * 7 + [0.5, 0.8] + [-1.0] * 3  # a peak at the two latest labelled cutoffs
    snapshots = seasonal_snapshots(levels)
    features = FeaturesConfig(horizon_days=60)
    scored = seasonal_snapshots([-1.0], seed=11)  # after the peak: back to the usual level
    error = {}
    for method in ("trees", "isotonic"):
        config = TrainConfig(calibration=method, xgboost={"n_estimators": 80, "max_depth": 2})
        split = temporal_split(snapshots, features, config)
        evaluated = fit_with_early_stopping(rows_at(snapshots, split.train), rows_at(snapshots, split.validation),
                                            ["x", "noise"], [], config)
        deployed = deployed_model(snapshots, split, evaluated, ["x", "noise"], [], config)
        assert deployed.calibration_cutoffs == ([] if method == "trees" else deployed.train_cutoffs[-2:])
        probability = churn_probability(deployed.pipeline, scored, ["x", "noise"], [])
        error[method] = abs(probability.mean() - scored["churned"].mean())
    assert error["trees"] < 0.06 < error["isotonic"]


def test_platts_sigmoid_is_the_same_whatever_order_the_sums_run_in() -> None:
    """A CPU with other vector units adds in another order; so does a shuffle. The fitted (A, B)
    must not move with it (the same-bytes rule), and must be scikit-learn's optimum."""
    from sklearn.calibration import _sigmoid_calibration

    from churnlens.model import platt_sigmoid

    rng = np.random.default_rng(12)
    scores = rng.uniform(0, 1, 20000).astype(np.float32)  # the trees' float32 probabilities
    y = (rng.random(20000) < 0.2 + 0.5 * scores).astype(int)
    fitted = platt_sigmoid(scores, y)
    order = rng.permutation(len(y))
    shuffled = platt_sigmoid(scores[order], y[order])
    assert (fitted.a_, fitted.b_) == (shuffled.a_, shuffled.b_)
    a, b = _sigmoid_calibration(scores.astype(np.float64), y)
    assert fitted.a_ == pytest.approx(a, rel=1e-4) and fitted.b_ == pytest.approx(b, rel=1e-4)
    probability = fitted.predict(scores)
    assert abs(probability.mean() - y.mean()) < 0.01  # Platt's smoothed targets keep the level
