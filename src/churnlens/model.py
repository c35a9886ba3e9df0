"""The churn classifier and the temporal split it is trained and judged on (no MLflow here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder
from xgboost import XGBClassifier

from churnlens.config import FeaturesConfig, TrainConfig

log = logging.getLogger(__name__)
LABEL = "churned"


@dataclass(frozen=True)
class TemporalSplit:
    """Which cutoffs train, validate (early stopping) and hold out the model.

    A training cutoff is used only if its whole label window ends at or before the cutoff it is
    judged on, so no label of a training row was observed after the validation/holdout instant.
    """

    train: list[pd.Timestamp]
    validation: list[pd.Timestamp]
    holdout: pd.Timestamp

    def as_dict(self) -> dict:
        dates = lambda cs: [c.date().isoformat() for c in cs]  # noqa: E731
        return {"train": dates(self.train), "validation": dates(self.validation),
                "holdout": self.holdout.date().isoformat()}


def temporal_split(snapshots: pd.DataFrame, features: FeaturesConfig, train: TrainConfig) -> TemporalSplit:
    complete = sorted(snapshots.loc[snapshots["label_complete"], "cutoff"].unique())
    incomplete = sorted(set(snapshots["cutoff"].unique()) - set(complete))
    if incomplete:
        log.info("not used for training or evaluation (label window extends past the data): %s",
                 [pd.Timestamp(c).date().isoformat() for c in incomplete])
    if not complete:
        raise ValueError("train: no cutoff has a complete label window; add data or shorten features.horizon_days")
    span = pd.Timedelta(days=features.lead_days + features.horizon_days)
    holdout = pd.Timestamp(complete[-1])
    labelled_before = lambda instant: [pd.Timestamp(c) for c in complete if pd.Timestamp(c) + span <= instant]  # noqa: E731
    candidates = labelled_before(holdout)
    if len(candidates) < train.validation_cutoffs + 1:
        raise ValueError(
            f"train: only {len(candidates)} cutoff(s) are fully labelled before the holdout cutoff "
            f"{holdout.date()}; need at least {train.validation_cutoffs + 1}. Add cutoffs (features.cutoffs."
            "every_days) or data, or lower train.validation_cutoffs"
        )
    validation = candidates[-train.validation_cutoffs:]
    training = labelled_before(validation[0])
    if not training:
        raise ValueError(
            f"train: no cutoff is fully labelled before the first validation cutoff {validation[0].date()}; "
            "add cutoffs or data"
        )
    return TemporalSplit(train=training, validation=validation, holdout=holdout)


def backtest_splits(snapshots: pd.DataFrame, features: FeaturesConfig, train: TrainConfig) -> list[TemporalSplit]:
    """Expanding-window folds before the holdout: each fold is judged on one earlier cutoff.

    Fold k trains on every cutoff whose label window closed before its validation cutoff, which
    in turn closed before the fold's test cutoff; the final holdout cutoff is never a fold's test.
    Folds that lack enough history are skipped (and logged).
    """
    final = temporal_split(snapshots, features, train)
    span = pd.Timedelta(days=features.lead_days + features.horizon_days)
    complete = sorted(pd.Timestamp(c) for c in snapshots.loc[snapshots["label_complete"], "cutoff"].unique())
    candidates = [c for c in complete if c + span <= final.holdout][-train.backtest_folds:] if train.backtest_folds else []
    folds = []
    for test_cutoff in candidates:
        try:
            folds.append(temporal_split(snapshots[snapshots["cutoff"] <= test_cutoff], features, train))
        except ValueError as exc:
            log.info("backtest fold at %s skipped: %s", test_cutoff.date(), exc)
    return folds


def rows_at(snapshots: pd.DataFrame, cutoffs: list[pd.Timestamp]) -> pd.DataFrame:
    return snapshots[snapshots["cutoff"].isin(cutoffs)]


def build_pipeline(numeric: list[str], categorical: list[str], config: TrainConfig, n_estimators: int | None = None
                   ) -> Pipeline:
    """An unfitted preprocessing + XGBoost pipeline built from params."""
    xgb = config.xgboost
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                             encoded_missing_value=-1, dtype=np.float64)
    preprocess = ColumnTransformer(
        [("categorical", encoder, categorical), ("numeric", "passthrough", numeric)],
        remainder="drop", verbose_feature_names_out=False,
    )
    classifier = XGBClassifier(
        n_estimators=n_estimators or xgb.n_estimators, max_depth=xgb.max_depth, learning_rate=xgb.learning_rate,
        subsample=xgb.subsample, colsample_bytree=xgb.colsample_bytree, min_child_weight=xgb.min_child_weight,
        reg_lambda=xgb.reg_lambda, tree_method="hist", n_jobs=xgb.n_jobs, random_state=config.seed,
        eval_metric="logloss",
    )
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def model_input(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """The exact columns and dtypes the model is trained and scored on."""
    data = frame[categorical + numeric].copy()
    for name in categorical:
        data[name] = data[name].astype(object).where(data[name].notna(), None)
    data[numeric] = data[numeric].astype("float64")
    return data


@dataclass(frozen=True)
class FittedModel:
    pipeline: Pipeline | CalibratedClassifierCV
    best_iteration: int
    validation_logloss: float


def positive_weight(labels: pd.Series, config: TrainConfig) -> float:
    """XGBoost's scale_pos_weight: 1, or negatives / positives for ``class_weight: balanced``."""
    if config.class_weight == "none":
        return 1.0
    positives = int(labels.sum())
    return float((len(labels) - positives) / positives) if positives else 1.0


def fit_with_early_stopping(train_rows: pd.DataFrame, validation_rows: pd.DataFrame, numeric: list[str],
                            categorical: list[str], config: TrainConfig) -> FittedModel:
    """Fit on the training cutoffs, stop early on the validation cutoffs, calibrate on them.

    The validation cutoffs never train trees; they choose the number of trees and fit the
    probability calibration (isotonic or sigmoid) on the frozen model's scores.
    """
    pipeline = build_pipeline(numeric, categorical, config)
    preprocess = pipeline.named_steps["preprocess"].fit(model_input(train_rows, numeric, categorical))
    classifier = pipeline.named_steps["classifier"]
    classifier.set_params(early_stopping_rounds=config.xgboost.early_stopping_rounds,
                          scale_pos_weight=positive_weight(train_rows[LABEL], config))
    validation_x = model_input(validation_rows, numeric, categorical)
    classifier.fit(
        preprocess.transform(model_input(train_rows, numeric, categorical)), train_rows[LABEL].astype(int),
        eval_set=[(preprocess.transform(validation_x), validation_rows[LABEL].astype(int))], verbose=False,
    )
    best = int(classifier.best_iteration) + 1
    logloss = float(classifier.evals_result()["validation_0"]["logloss"][best - 1])
    if config.calibration == "none":
        return FittedModel(pipeline, best, logloss)
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method=config.calibration)
    calibrated.fit(validation_x, validation_rows[LABEL].astype(int))
    return FittedModel(calibrated, best, logloss)


def tree_pipeline(model: Pipeline | CalibratedClassifierCV) -> Pipeline:
    """The preprocessing + XGBoost pipeline inside a (possibly calibrated) model."""
    if isinstance(model, CalibratedClassifierCV):
        return model.calibrated_classifiers_[0].estimator.estimator
    return model


def churn_probability(pipeline: Pipeline | CalibratedClassifierCV, frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> np.ndarray:
    return pipeline.predict_proba(model_input(frame, numeric, categorical))[:, 1]


def contributions(model: Pipeline | CalibratedClassifierCV, frame: pd.DataFrame, numeric: list[str],
                  categorical: list[str], approximate: bool = False) -> pd.DataFrame:
    """Per-row feature contributions on the log-odds scale: XGBoost's exact TreeSHAP
    (``pred_contribs``), or with ``approximate`` the Saabas path attributions, which cost
    O(trees x depth) per row instead of O(trees x leaves x depth^2). Both add up, with the bias,
    to the model's margin.

    Calibration is monotone, so the trees' contributions still explain the ranking.
    """
    from xgboost import DMatrix

    pipeline = tree_pipeline(model)
    preprocess, classifier = pipeline.named_steps["preprocess"], pipeline.named_steps["classifier"]
    matrix = DMatrix(preprocess.transform(model_input(frame, numeric, categorical)),
                     feature_names=list(preprocess.get_feature_names_out()))
    values = classifier.get_booster().predict(matrix, pred_contribs=True,
                                              approx_contribs=approximate)[:, :-1]  # last column: bias
    return pd.DataFrame(values, columns=matrix.feature_names, index=frame.index)


def top_reasons(contribution: pd.DataFrame, k: int = 3) -> pd.Series:
    """The k features pushing each customer's churn risk up the most, as 'name (+0.42); ...'."""
    values = contribution.to_numpy()
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    names = np.asarray(contribution.columns)
    reasons = [
        "; ".join(f"{names[j]} ({values[i, j]:+.2f})" for j in row if values[i, j] > 0)
        for i, row in enumerate(order)
    ]
    return pd.Series(reasons, index=contribution.index, dtype="string")


@dataclass(frozen=True)
class TuningResult:
    config: TrainConfig  # the input config with the best XGBoost parameters
    trials: list[dict]  # every trial's parameters and validation log loss, in order


def tune(train_rows: pd.DataFrame, validation_rows: pd.DataFrame, numeric: list[str], categorical: list[str],
         config: TrainConfig) -> TuningResult:
    """Seeded random search: the params.yaml values are trial 0, then ``n_trials`` samples.

    The budget is a number of trials, never seconds, so the result does not depend on how fast
    or how loaded the machine is.
    """
    from sklearn.model_selection import ParameterSampler

    budget = config.tuning
    untuned = config.model_copy(update={"calibration": "none"})
    candidates = [{}, *ParameterSampler(budget.space, n_iter=budget.n_trials, random_state=config.seed)]
    trials = []
    for candidate in candidates:
        values = {k: (int(v) if k == "max_depth" else float(v)) for k, v in candidate.items()}
        trial = untuned.model_copy(update={"xgboost": config.xgboost.model_copy(update=values)})
        fitted = fit_with_early_stopping(train_rows, validation_rows, numeric, categorical, trial)
        trials.append({**values, "validation_logloss": fitted.validation_logloss, "trees": fitted.best_iteration})
    best = min(range(len(trials)), key=lambda i: trials[i]["validation_logloss"])
    chosen = {k: v for k, v in trials[best].items() if k not in ("validation_logloss", "trees")}
    return TuningResult(config.model_copy(update={"xgboost": config.xgboost.model_copy(update=chosen)}), trials)
