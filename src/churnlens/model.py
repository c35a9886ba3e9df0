"""The churn classifier and the temporal split it is trained and judged on (no MLflow here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import VotingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder
from xgboost import XGBClassifier

from churnlens.config import FeaturesConfig, TrainConfig
from churnlens.portable import settled

log = logging.getLogger(__name__)
LABEL = "churned"


class TemporalModelUnsupported(ValueError):
    """The data cannot train and judge a temporal model: too few labelled cutoffs, or one outcome only."""


CUSTOMER_GROUPS = 4  # one in four customers is held out where time alone cannot separate the rows


def held_out_customers(customer_ids: pd.Series) -> np.ndarray:
    """A fixed quarter of the customers (by a seeded hash of the id, so the same on every run and
    every cutoff): never trained on where they serve as validation or calibration rows."""
    hashed = pd.util.hash_pandas_object(customer_ids.astype(str), index=False).to_numpy()
    return hashed % CUSTOMER_GROUPS == 0


@dataclass(frozen=True)
class TemporalSplit:
    """Which cutoffs train, validate (early stopping) and hold out the model.

    A training cutoff is used only if its whole label window ends at or before the cutoff it is
    judged on, so no label of a training row was observed after the validation/holdout instant.
    A short history cannot hold three such generations (with a 90-day horizon that takes 270 days
    of labelled cutoffs); then ``overlapping_labels`` is set: the training cutoffs only precede
    the holdout and their label windows overlap it, so the customers are split too: trees learn
    from three quarters of them, the held-out quarter validates (at the training cutoffs) and is
    judged at the holdout. Their figures are less strict than a purely out-of-time holdout.
    """

    train: list[pd.Timestamp]
    validation: list[pd.Timestamp]
    holdout: pd.Timestamp
    overlapping_labels: bool = False

    def as_dict(self) -> dict:
        dates = lambda cs: [c.date().isoformat() for c in cs]  # noqa: E731
        return {"train": dates(self.train), "validation": dates(self.validation),
                "holdout": self.holdout.date().isoformat(), "overlapping_labels": self.overlapping_labels}

    @classmethod
    def from_dict(cls, data: dict) -> TemporalSplit:
        dates = lambda cs: [pd.Timestamp(c) for c in cs]  # noqa: E731
        return cls(dates(data["train"]), dates(data["validation"]), pd.Timestamp(data["holdout"]),
                   bool(data.get("overlapping_labels", False)))

    def _rows(self, snapshots: pd.DataFrame, cutoffs: list[pd.Timestamp], held_out: bool | None) -> pd.DataFrame:
        rows = rows_at(snapshots, cutoffs)
        if not self.overlapping_labels or held_out is None:
            return rows
        return rows[held_out_customers(rows["customer_id"]) == held_out]

    def train_rows(self, snapshots: pd.DataFrame) -> pd.DataFrame:
        return self._rows(snapshots, self.train, held_out=False)

    def validation_rows(self, snapshots: pd.DataFrame) -> pd.DataFrame:
        return self._rows(snapshots, self.validation, held_out=True)

    def holdout_rows(self, snapshots: pd.DataFrame) -> pd.DataFrame:
        return self._rows(snapshots, [self.holdout], held_out=True)


def labelled_cutoffs(snapshots: pd.DataFrame) -> list[pd.Timestamp]:
    """Cutoffs whose whole label window lies inside the data, in time order."""
    return sorted(pd.Timestamp(c) for c in snapshots.loc[snapshots["label_complete"], "cutoff"].unique())


def temporal_split(snapshots: pd.DataFrame, features: FeaturesConfig, train: TrainConfig,
                   allow_overlap: bool = True) -> TemporalSplit:
    complete = labelled_cutoffs(snapshots)
    incomplete = sorted(set(snapshots["cutoff"].unique()) - set(complete))
    if incomplete:
        log.info("not used for training or evaluation (label window extends past the data): %s",
                 [pd.Timestamp(c).date().isoformat() for c in incomplete])
    if not complete:
        raise TemporalModelUnsupported("train: no cutoff has a complete label window; add data or shorten features.horizon_days")
    span = pd.Timedelta(features.label_end)
    holdout = complete[-1]
    labelled_before = lambda instant: [c for c in complete if c + span <= instant]  # noqa: E731
    candidates = labelled_before(holdout)
    if len(candidates) >= train.validation_cutoffs + 1:
        validation = candidates[-train.validation_cutoffs:]
        training = labelled_before(validation[0])
        if training:
            return TemporalSplit(train=training, validation=validation, holdout=holdout)
    earlier = complete[:-1]
    if not allow_overlap:
        raise ValueError(f"no training cutoff's label window closes before a validation cutoff that closes before "
                         f"{holdout.date()}")
    if len(earlier) < 2:
        raise TemporalModelUnsupported(
            f"train: only {len(complete)} cutoff(s) have a complete label window (the last is {holdout.date()}); "
            "need at least 3 (train, validation, holdout). Add data, use a denser "
            "grid (features.cutoffs.every_days, e.g. 7) or a smaller features.cutoffs.min_history_days, or lower "
            "train.validation_cutoffs"
        )
    log.warning("train: the history is too short for label windows that close before the cutoff they are "
                "judged on (%s of data per generation); the training labels overlap the holdout's label window, "
                "so a held-out quarter of the customers validates and is judged instead", span)
    return TemporalSplit(train=earlier, validation=earlier, holdout=holdout, overlapping_labels=True)


@dataclass(frozen=True)
class SkippedFold:
    test_cutoff: pd.Timestamp
    reason: str


def backtest_splits(snapshots: pd.DataFrame, features: FeaturesConfig, train: TrainConfig
                    ) -> tuple[list[TemporalSplit], list[SkippedFold]]:
    """Expanding-window folds before the holdout: each fold is judged on one earlier cutoff.

    Fold k trains on every cutoff whose label window closed before its validation cutoff, which
    in turn closed before the fold's test cutoff; the final holdout cutoff is never a fold's test.
    Folds that lack enough history are returned as skipped, with the reason.
    """
    final = temporal_split(snapshots, features, train)
    span = pd.Timedelta(features.label_end)
    complete = labelled_cutoffs(snapshots)
    candidates = [c for c in complete if c + span <= final.holdout][-train.backtest_folds:] if train.backtest_folds else []
    if train.backtest_folds and len(candidates) < train.backtest_folds:
        skipped = [SkippedFold(final.holdout, f"only {len(candidates)} cutoff(s) have labels closed by the holdout "
                               f"{final.holdout.date()}; {train.backtest_folds - len(candidates)} fold(s) "
                               "have no test cutoff")]
    else:
        skipped = []
    folds = []
    for test_cutoff in candidates:
        try:
            # A fold is as strict as the final split: overlapping labels only where nothing else exists.
            fold = temporal_split(snapshots[snapshots["cutoff"] <= test_cutoff], features, train,
                                  allow_overlap=final.overlapping_labels)
        except ValueError as exc:
            skipped.append(SkippedFold(test_cutoff, str(exc)))
            log.info("backtest fold at %s skipped: %s", test_cutoff.date(), exc)
            continue
        folds.append(fold)
    return folds, skipped


def refit_cutoffs(snapshots: pd.DataFrame) -> list[pd.Timestamp]:
    """The deployed model's training cutoffs: every cutoff whose labels closed by the data's end."""
    return labelled_cutoffs(snapshots)


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


def customer_weights(rows: pd.DataFrame) -> np.ndarray:
    """1 / (the customer's rows among ``rows``), scaled to mean 1: a customer present at every
    cutoff of a dense grid counts as much as one seen at a single cutoff, not many times more."""
    per_customer = rows.groupby("customer_id", sort=False)["customer_id"].transform("size").to_numpy(dtype=float)
    weights = 1.0 / per_customer
    return weights * len(weights) / weights.sum()


def row_weights(rows: pd.DataFrame, config: TrainConfig) -> np.ndarray | None:
    return customer_weights(rows) if config.equal_customer_weight and "customer_id" in rows else None


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
        sample_weight=row_weights(train_rows, config),
        eval_set=[(preprocess.transform(validation_x), validation_rows[LABEL].astype(int))],
        sample_weight_eval_set=[row_weights(validation_rows, config)] if config.equal_customer_weight else None,
        verbose=False,
    )
    best = int(classifier.best_iteration) + 1
    logloss = float(classifier.evals_result()["validation_0"]["logloss"][best - 1])
    return with_calibration(FittedModel(pipeline, best, logloss), validation_rows, numeric, categorical, config)


def with_calibration(fitted: FittedModel, validation_rows: pd.DataFrame, numeric: list[str], categorical: list[str],
                     config: TrainConfig) -> FittedModel:
    """``fitted`` (trees that never saw ``validation_rows``) with ``config``'s calibration fitted there."""
    if config.calibration == "none":
        return fitted
    return FittedModel(calibrated(fitted.pipeline, validation_rows, numeric, categorical, config),
                       fitted.best_iteration, fitted.validation_logloss)


def fit_trees(rows: pd.DataFrame, numeric: list[str], categorical: list[str], config: TrainConfig,
              n_estimators: int) -> Pipeline:
    """The same pipeline fitted on ``rows`` with a fixed number of trees (chosen out of time)."""
    pipeline = build_pipeline(numeric, categorical, config, n_estimators=n_estimators)
    pipeline.named_steps["classifier"].set_params(scale_pos_weight=positive_weight(rows[LABEL], config))
    return pipeline.fit(model_input(rows, numeric, categorical), rows[LABEL].astype(int),
                        classifier__sample_weight=row_weights(rows, config))


ISOTONIC_MIN_ROWS = 1000  # below this an isotonic step function fits the calibration rows' noise


def calibration_method(configured: str, rows: int) -> str:
    """``auto``: isotonic where there are enough calibration rows, else a two-parameter sigmoid
    (Platt), which cannot overfit a few hundred rows (a young log's held-out quarter)."""
    if configured != "auto":
        return configured
    return "isotonic" if rows >= ISOTONIC_MIN_ROWS else "sigmoid"


def identity_within(floor: float) -> IsotonicRegression:
    """p -> p on [floor, 1 - floor], clipped outside: the trees' own probabilities, never a certain 0 or 1."""
    return IsotonicRegression(out_of_bounds="clip").fit([floor, 1 - floor], [floor, 1 - floor])


def calibrated(pipeline: Pipeline, rows: pd.DataFrame, numeric: list[str], categorical: list[str],
               config: TrainConfig) -> CalibratedClassifierCV:
    """``pipeline`` (frozen) with a probability calibration fitted on ``rows``, which must be out of
    time for its trees. Probabilities stay within [floor, 1 - floor]: an isotonic step fitted on a
    few customers would otherwise promise certainty (p = 0 or 1) that a later season breaks.

    ``trees`` keeps the trees' own probabilities (within the floor): nothing is learned from
    ``rows``, so no one season's churn level is carried into every score.
    """
    floor = config.probability_floor
    method = calibration_method(config.calibration, len(rows))
    y = rows[LABEL].astype(int)
    if method == "sigmoid":
        calibrator = platt_sigmoid(pipeline.predict_proba(model_input(rows, numeric, categorical))[:, 1], y.to_numpy())
    elif method == "trees":
        calibrator = identity_within(floor)
    else:
        calibrator = IsotonicRegression(y_min=floor, y_max=1 - floor, out_of_bounds="clip").fit(
            pipeline.predict_proba(model_input(rows, numeric, categorical))[:, 1], y)
    # scikit-learn's wrapper only exists once fitted: fit it on one row of each class, as a single
    # split (its default 5 folds need 5 rows a class), then put in the calibrator built above, so
    # the rows are scored at most once (``trees``: never).
    one_per_class = one_row_per_class(y)
    both = np.arange(len(one_per_class))
    model = CalibratedClassifierCV(FrozenEstimator(pipeline), method="sigmoid" if method == "sigmoid" else "isotonic",
                                   cv=[(both, both)]).fit(model_input(rows.iloc[one_per_class], numeric, categorical),
                                                          y.iloc[one_per_class])
    model.calibrated_classifiers_[0].calibrators[0] = calibrator
    return model


def one_row_per_class(labels: pd.Series) -> np.ndarray:
    """Positions of the first row of each class, in row order: what a scikit-learn wrapper around
    frozen scorers is fitted on, so that it learns the class labels and nothing else."""
    return np.sort(np.unique(labels.to_numpy(), return_index=True)[1])


PLATT_DIGITS = 10  # far below any decision, far above the last bits a CPU's vector unit leaves


def platt_sigmoid(scores: np.ndarray, y: np.ndarray) -> object:
    """scikit-learn's sigmoid calibrator (Platt 2000: p = 1 / (1 + exp(A x score + B)), fitted on
    Platt's smoothed targets) with (A, B) the same on every machine: scikit-learn's L-BFGS fit on
    float32 scores stops wherever its last-bit arithmetic takes it, so Newton's method on the same
    loss in float64 takes it to the optimum, and (A, B) are kept to PLATT_DIGITS significant digits
    (as the BG/NBD fit is, churnlens.bgnbd)."""
    from scipy.special import expit
    from sklearn.calibration import _sigmoid_calibration, _SigmoidCalibration

    from churnlens.portable import significant

    f = np.asarray(scores, dtype=np.float64)
    positives = float(np.sum(y > 0))
    negatives = len(y) - positives
    target = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a, b = (float(v) for v in _sigmoid_calibration(f, y))
    for _ in range(100):
        p = expit(-(a * f + b))  # the calibrated probability of churn
        residual, curvature = target - p, p * (1 - p)
        gradient = np.array([residual @ f, residual.sum()])
        hessian = np.array([[curvature @ (f * f), curvature @ f], [curvature @ f, curvature.sum()]])
        step = np.linalg.solve(hessian, gradient)
        a, b = a - step[0], b - step[1]
        if np.all(np.abs(step) <= 1e-15 * (1 + np.abs([a, b]))):
            break
    calibrator = _SigmoidCalibration()
    calibrator.a_, calibrator.b_ = significant(a, PLATT_DIGITS), significant(b, PLATT_DIGITS)
    return calibrator


@dataclass(frozen=True)
class DeployedModel:
    pipeline: Pipeline | CalibratedClassifierCV
    train_cutoffs: list[pd.Timestamp]
    calibration_cutoffs: list[pd.Timestamp]


def deployed_model(snapshots: pd.DataFrame, split: TemporalSplit, evaluated: FittedModel, numeric: list[str],
                   categorical: list[str], config: TrainConfig) -> DeployedModel:
    """The model that scores today: the evaluated procedure refit on every labelled cutoff.

    The trees see the freshest labels, with the number of trees the evaluated fit chose on rows it
    did not train on. The calibration cannot be fitted on the refit's own training rows (in-sample
    scores are overconfident), nor carried over from older trees (their scores lag the base rate
    the refit already learned). So a twin of the refit, trained on the same cutoffs without the
    held-out quarter of the customers, scores that quarter at the latest labelled cutoffs
    (``split.validation`` + holdout, or the holdout alone when that is all there is); the
    calibration fitted there is applied to the refit's trees. With ``trees`` the refit's own
    probabilities are kept (within the floor), fitted on no single season.
    """
    cutoffs = refit_cutoffs(snapshots)
    rows = rows_at(snapshots, cutoffs)
    trees = fit_trees(rows, numeric, categorical, config, evaluated.best_iteration)
    if config.calibration == "none":
        return DeployedModel(trees, cutoffs, [])
    if config.calibration == "trees":
        return DeployedModel(calibrated(trees, rows, numeric, categorical, config), cutoffs, [])
    held_out = held_out_customers(rows["customer_id"])
    twin = fit_trees(rows[~held_out], numeric, categorical, config, evaluated.best_iteration)
    latest = cutoffs[-len(split.validation) - 1:] if not split.overlapping_labels else cutoffs[-1:]
    calibration_rows = rows[held_out & rows["cutoff"].isin(latest).to_numpy()]
    model = calibrated(twin, calibration_rows, numeric, categorical, config)
    model.estimator = FrozenEstimator(trees)
    model.calibrated_classifiers_[0].estimator = FrozenEstimator(trees)
    return DeployedModel(model, cutoffs, latest)


def tree_pipeline(model: Pipeline | CalibratedClassifierCV | VotingClassifier) -> Pipeline:
    """The preprocessing + XGBoost pipeline inside a (possibly calibrated, possibly pooled) model."""
    if isinstance(model, VotingClassifier):  # pooled with BG/NBD: the trees are the model's side
        model = model.estimators_[0].estimator
    if isinstance(model, CalibratedClassifierCV):
        return model.calibrated_classifiers_[0].estimator.estimator
    return model


def churn_probability(pipeline: Pipeline | CalibratedClassifierCV, frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> np.ndarray:
    # Settled: a sigmoid calibration and the BG/NBD side of a pool end in numpy's exp, whose last
    # bits depend on the CPU's vector unit (churnlens.portable); the trees' own float32 do not.
    return settled(pipeline.predict_proba(model_input(frame, numeric, categorical))[:, 1])


def contributions(model: Pipeline | CalibratedClassifierCV, frame: pd.DataFrame, numeric: list[str],
                  categorical: list[str], approximate: bool = False) -> pd.DataFrame:
    """Per-row feature contributions on the log-odds scale: XGBoost's exact TreeSHAP
    (``pred_contribs``), or with ``approximate`` the Saabas path attributions, which cost
    O(trees x depth) per row instead of O(trees x leaves x depth^2). Both add up, with the bias,
    to the model's margin.

    Calibration is monotone, so the trees' contributions still explain their ranking. In a pool
    with BG/NBD (churnlens.selection) they explain the trees' share; BG/NBD's share moves with its
    own input, which is itself one of the trees' inputs. BG/NBD alone is explained by that input.
    """
    from xgboost import DMatrix

    pipeline = tree_pipeline(model)
    preprocess, classifier = pipeline.named_steps["preprocess"], pipeline.named_steps["classifier"]
    if isinstance(classifier, LogisticRegression):  # the BG/NBD fallback: its one input explains it all
        values = preprocess.transform(model_input(frame, numeric, categorical)) @ classifier.coef_[0]
        return pd.DataFrame({FALLBACK_FEATURE: values}, index=frame.index)
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
    fitted: FittedModel  # the best trial's trees, not calibrated: the evaluated procedure's own fit


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
    trials, best = [], None
    for candidate in candidates:
        values = {k: (int(v) if k == "max_depth" else float(v)) for k, v in candidate.items()}
        trial = untuned.model_copy(update={"xgboost": config.xgboost.model_copy(update=values)})
        fitted = fit_with_early_stopping(train_rows, validation_rows, numeric, categorical, trial)
        trials.append({**values, "validation_logloss": fitted.validation_logloss, "trees": fitted.best_iteration})
        # Kept, not refitted: the same rows, settings and seed would give the same trees again.
        if best is None or fitted.validation_logloss < best[1].validation_logloss:
            best = (len(trials) - 1, fitted)
    chosen = {k: v for k, v in trials[best[0]].items() if k not in ("validation_logloss", "trees")}
    return TuningResult(config.model_copy(update={"xgboost": config.xgboost.model_copy(update=chosen)}), trials,
                        best[1])


# ---------------------------------------------------------------- fallback: BG/NBD alone
FALLBACK_KIND = "bgnbd_fallback"
FALLBACK_FEATURE = "btyd_p_no_purchase_horizon"


def bgnbd_fallback_model(rows: pd.DataFrame, floor: float) -> Pipeline:
    """The churn model for data that cannot train a temporal one: BG/NBD's P(no purchase in the
    horizon), which needs no label (each cutoff's fit sees only its own history), kept within
    [floor, 1 - floor]. Built from scikit-learn parts so it is saved, loaded and scored like the
    trained model: a logistic regression with weights (1, -1) on (log p, log(1 - p)) returns p.
    """
    one_to_one = {"feature_names_out": "one-to-one"}
    clip = lambda: FunctionTransformer(np.clip, kw_args={"a_min": floor, "a_max": 1 - floor}, **one_to_one)  # noqa: E731
    preprocess = ColumnTransformer(
        [("log_p", make_pipeline(clip(), FunctionTransformer(np.log, **one_to_one)), [FALLBACK_FEATURE]),
         ("log_1_minus_p", make_pipeline(clip(), FunctionTransformer(np.negative, **one_to_one),
                                         FunctionTransformer(np.log1p, **one_to_one)), [FALLBACK_FEATURE])],
        remainder="drop")
    preprocess.fit(model_input(rows, [FALLBACK_FEATURE], []))
    identity = LogisticRegression()
    identity.classes_, identity.coef_, identity.intercept_ = np.array([0, 1]), np.array([[1.0, -1.0]]), np.zeros(1)
    identity.n_features_in_ = 2
    return Pipeline([("preprocess", preprocess), ("classifier", identity)])


def with_probability_layer(pipeline: Pipeline | CalibratedClassifierCV, btyd_weight: float, rows: pd.DataFrame,
                           numeric: list[str], categorical: list[str], floor: float) -> object:
    """``pipeline`` (calibrated as chosen) pooled with BG/NBD at the model weight ``btyd_weight``
    (:mod:`churnlens.selection`); ``rows``: any labelled rows, to build the BG/NBD scorer's inputs."""
    from churnlens import selection

    btyd = bgnbd_fallback_model(rows, floor) if btyd_weight < 1 else None
    two = rows.iloc[one_row_per_class(rows[LABEL])]
    return selection.pooled_model(pipeline, btyd, btyd_weight, model_input(two, numeric, categorical),
                                  two[LABEL].astype(int))


def mean_abs_contributions(model: Pipeline | CalibratedClassifierCV, frame: pd.DataFrame, numeric: list[str],
                           categorical: list[str]) -> pd.DataFrame:
    """Mean absolute contribution per feature over ``frame``, largest first (the importance table)."""
    return (contributions(model, frame, numeric, categorical).abs().mean().sort_values(ascending=False)
            .rename("mean_abs_shap").rename_axis("feature").reset_index())
