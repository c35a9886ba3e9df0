"""Stage wiring: read inputs, call the pure functions, write outputs atomically, track in MLflow.

Each ``run_*`` function is what one ``churnlens <stage>`` command does; the CLI only parses
options. Paths come from ``dvc.yaml`` (as CLI options), knobs from ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlens import features as ft
from churnlens import drift, io, playbook, score, segments, tracking
from churnlens.config import FeaturesConfig, Params, ScoreConfig
from churnlens.contract import ModelContract
from churnlens.engines import Laps, Scored, engine_for
from churnlens.ingest import run_ingest
from churnlens.schemas import CANONICAL_TABLES
from churnlens.score import ScoreJob
from churnlens.simulate import simulate, worker_count

log = logging.getLogger(__name__)
# Every stage runs in its own process: scikit-learn, XGBoost and matplotlib are imported only by
# the stages that use them (together they cost ~8 s of start-up on a 2-core machine).

HOLDOUT_KEYS = ["customer_id", "cutoff"]  # a snapshot row: the holdout scores train hands to evaluate


def run_simulate(params: Params, raw_dir: Path, truth_path: Path, campaign: Path | None = None) -> dict[str, int]:
    """The simulated tables and their ground truth; with ``campaign`` (a run `churnlens score
    --archive-dir` kept) the world in which that run's campaign treated who it selected and did
    not hold out, over its label window (:func:`churnlens.simulate.with_campaign`)."""
    data = simulate(params.simulate, workers=worker_count(params.simulate))
    if campaign is not None:
        from churnlens import control
        from churnlens.simulate import with_campaign

        run = kept_run(Path(campaign))
        scores, manifest = run.scores, run.manifest
        if "label" not in manifest:
            raise ValueError(f"simulate --campaign {campaign}: its manifest does not say the label window; keep "
                             "runs with `churnlens score --archive-dir`")
        treated = scores.loc[control.arms(scores) == "treated", "customer_id"]
        data = with_campaign(data, treated, run.as_of, params.simulate, manifest["label"]["lead_days"],
                             manifest["label"]["horizon_days"])
    counts = {}
    for name in CANONICAL_TABLES:
        target = raw_dir / f"{name}.parquet"
        if name not in params.simulate.tables:
            target.unlink(missing_ok=True)  # a withheld table must not be read from an earlier run
            continue
        frame = getattr(data, name)
        io.write_parquet(frame, target)
        counts[name] = len(frame)
    io.write_parquet(data.ground_truth, truth_path)
    return counts


def run_ingest_stage(params: Params, base: Path, canonical_dir: Path, quarantine_dir: Path, report: Path) -> dict:
    return run_ingest(params.ingest, base, canonical_dir, quarantine_dir, report)


def run_features(params: Params, canonical_dir: Path | str, snapshots_path: Path | str, report_path: Path) -> dict:
    """Snapshots at every cutoff of the grid, on the configured engine, and their report."""
    with engine_for(params.engine) as engine:
        tables = engine.tables(str(canonical_dir))
        data_start, data_end = engine.data_span(tables)
        cutoffs, complete = _cutoffs(params.features, data_start, data_end)
        plan, per_cutoff = engine.write_snapshots(tables, cutoffs, params.features, str(snapshots_path), data_end)
    model_inputs = plan.model_inputs(ft.seasonal_gap(params.features, cutoffs, data_end),
                                     params.features.calendar_season)
    return _features_report(data_start, data_end, cutoffs, complete, plan, model_inputs, per_cutoff, report_path)


def _cutoffs(config: FeaturesConfig, data_start: pd.Timestamp, data_end: pd.Timestamp) -> tuple[list[pd.Timestamp], dict]:
    cutoffs = ft.cutoff_grid(config, data_start, data_end)
    complete = ft.label_complete(cutoffs, config, data_end)
    for cutoff, ok in complete.items():
        if not ok:
            log.info("cutoff %s: label window ends after the data (%s); never used for training",
                     cutoff.date(), data_end)
    return cutoffs, complete


def _features_report(data_start: pd.Timestamp, data_end: pd.Timestamp, cutoffs: list[pd.Timestamp], complete: dict,
                     plan: ft.FeaturePlan, model_inputs: tuple[list[str], dict[str, str]], per_cutoff: list[tuple],
                     report_path: Path) -> dict:
    report = {
        "data_start": data_start.isoformat(), "data_end": data_end.isoformat(),
        "rows": int(sum(n for _, n, _ in per_cutoff)), "cutoffs": len(cutoffs),
        "complete_cutoffs": int(sum(complete.values())),
        "features": plan.names, "categorical": plan.categorical, "model_features": model_inputs[0],
        "families": plan.families(),
        "left_out": plan.left_out, "left_out_of_model": model_inputs[1],
        "per_cutoff": {pd.Timestamp(c).date().isoformat(): {"customers": int(n), "churn_rate": float(rate),
                                                              "label_complete": complete[pd.Timestamp(c)]}
                       for c, n, rate in per_cutoff},
    }
    io.write_json(report, report_path)
    return report


@dataclass(frozen=True)
class FeatureLists:
    numeric: list[str]
    categorical: list[str]

    @classmethod
    def of(cls, inputs: list[str], categorical: list[str]) -> FeatureLists:
        """The model's inputs split into numeric and categorical, each in the inputs' order."""
        return cls([n for n in inputs if n not in categorical], [n for n in inputs if n in categorical])

    @classmethod
    def from_report(cls, report: dict, path: Path) -> FeatureLists:
        """The churn model's inputs, as the features stage listed them."""
        if "model_features" not in report:
            raise ValueError(f"{path}: no 'model_features' list (a features report from an older churnlens); "
                             "rerun `dvc repro features` or `churnlens features` to regenerate it")
        return cls.of(report["model_features"], report["categorical"])


def run_train(params: Params, snapshots_path: Path, features_report: Path, model_dir: Path, report_path: Path,
              project_root: Path) -> dict:
    from churnlens import evaluate as ev
    from churnlens import model, selection

    began_ms = time.time_ns() // 1_000_000
    _require_inputs(snapshots_path, features_report)
    tracking.check_store()  # a broken store should fail now, not after the training
    snapshots = pd.read_parquet(snapshots_path)
    lists = FeatureLists.from_report(io.read_json(features_report), features_report)
    try:
        split = model.temporal_split(snapshots, params.features, params.train)
        train_rows, validation_rows = split.train_rows(snapshots), split.validation_rows(snapshots)
        _require_both_classes(train_rows[model.LABEL], "training cutoffs")
        _require_both_classes(validation_rows[model.LABEL], "validation cutoffs")
    except model.TemporalModelUnsupported as exc:
        return _train_fallback(params, snapshots, snapshots_path, lists, features_report, model_dir, report_path,
                               project_root, str(exc), began_ms)
    # Training takes minutes on real data: say what is running.
    log.info("train: %d training rows, %d validation rows; tuning: %d trials", len(train_rows),
             len(validation_rows), params.train.tuning.n_trials)
    tuned = model.tune(train_rows, validation_rows, lists.numeric, lists.categorical, params.train)
    params = params.model_copy(update={"train": tuned.config})
    # Out-of-time scores choose how the trees' scores become a probability (churnlens.selection):
    # the evaluated procedure's on the backtest folds alone, so that the holdout judges a choice it
    # never made; the deployed model's on the folds and the holdout, as its trees see every label.
    log.info("train: backtest folds, to choose the calibration and the pool with BG/NBD")
    folds, skipped_folds = ev.backtest(snapshots, lists.numeric, lists.categorical, params)
    floor = params.train.probability_floor
    layers = selection.candidates(params.train.selection, selection.BTYD_INPUT in lists.numeric)
    fallback = selection.ProbabilityLayer(params.train.calibration)
    holdout = split.holdout_rows(snapshots)
    chosen = selection.choose(folds, layers, fallback, floor)
    latest = ev.fold_scores(tuned.fitted, validation_rows, holdout, split.holdout, lists.numeric, lists.categorical,
                            params)
    chosen_to_deploy = selection.choose([*folds, latest], layers, fallback, floor)
    log.info("train: probability layer %s for the holdout (%s), %s deployed (%s)", chosen.chosen.name, chosen.reason,
             chosen_to_deploy.chosen.name, chosen_to_deploy.reason)
    # The evaluated procedure (trained strictly before the holdout, the best trial's trees) fixes
    # the number of trees and gives the out-of-time scores the deployed refit is calibrated on.
    fitted = model.with_calibration(tuned.fitted, validation_rows, lists.numeric, lists.categorical,
                                    params.train.model_copy(update={"calibration": chosen.chosen.calibration}))
    procedure = model.with_probability_layer(fitted.pipeline, chosen.chosen.btyd_weight, validation_rows,
                                             lists.numeric, lists.categorical, floor)
    holdout_scores = holdout_scores_frame(
        holdout, model.churn_probability(procedure, holdout, lists.numeric, lists.categorical))
    to_deploy = params.train.model_copy(update={"calibration": chosen_to_deploy.chosen.calibration})
    deployed = model.deployed_model(snapshots, split, fitted, lists.numeric, lists.categorical, to_deploy)
    deployed_rows = model.rows_at(snapshots, deployed.train_cutoffs)
    deployed_pipeline = model.with_probability_layer(deployed.pipeline, chosen_to_deploy.chosen.btyd_weight,
                                                     deployed_rows, lists.numeric, lists.categorical, floor)
    # The run's span and train/seconds are one measurement: the training (tuning, backtest, fits).
    trained_between = (began_ms, time.time_ns() // 1_000_000)
    seconds = (trained_between[1] - trained_between[0]) / 1000
    log.info("train: backtest and final model in %.0f s (%d trees); logging the run and the model to MLflow",
             seconds, fitted.best_iteration)

    lineage = {"deployed_train_cutoffs": [c.date().isoformat() for c in deployed.train_cutoffs],
               "deployed_calibration_cutoffs": [c.date().isoformat() for c in deployed.calibration_cutoffs]}
    metrics = {"best_iteration": fitted.best_iteration, "validation_logloss": fitted.validation_logloss,
               "train_rows": len(train_rows), "validation_rows": len(validation_rows),
               "deployed_train_rows": len(deployed_rows),
               "train_churn_rate": float(train_rows[model.LABEL].mean()), "train_seconds": seconds,
               "tuning_trials": len(tuned.trials),
               **ev.backtest_metrics(folds, chosen.chosen, len(skipped_folds), params)}
    tags = {**tracking.git_commit(project_root), **tracking.dvc_lock_hashes(project_root, "train"),
            "data_fingerprint": io.file_fingerprint(snapshots_path), "holdout_cutoff": split.as_dict()["holdout"]}
    catalog = report_path.with_name("feature_catalog.md")
    with io.atomic_path(catalog) as temporary:
        used = [f for f in ft.definitions_for(params.features)
                if f.name in set(lists.numeric + lists.categorical)]
        temporary.write_text(ft.feature_catalog_markdown(used), encoding="utf-8")
    example = model.model_input(deployed_rows.head(50), lists.numeric, lists.categorical)
    latest = deployed_rows[deployed_rows["cutoff"] == deployed_rows["cutoff"].max()]
    contract = ModelContract(lists.numeric, lists.categorical, split.as_dict()["holdout"], **lineage,
                             # The reference population for drift checks: the latest training snapshot,
                             # closest in time to what will be scored (pooled cutoffs mix younger histories in).
                             drift_profile=drift.drift_profile(latest, lists.numeric, lists.categorical))
    registered = tracking.log_training_run(
        experiment=params.train.experiment_name, model_name=params.train.registered_model_name,
        params={"features": params.features.model_dump(mode="json"), "train": params.train.model_dump(mode="json"),
                "split": split.as_dict(), "probability_layer": chosen_to_deploy.chosen.as_dict(),
                "holdout_probability_layer": chosen.chosen.as_dict(), **lineage},
        metrics=metrics, tags=tags, pipeline=deployed_pipeline, example=example, metadata=contract.to_metadata(),
        artifacts={"features": features_report, "features/catalog": catalog}, model_dir=model_dir,
        data=tracking.TrainingData(model.model_input(deployed_rows, lists.numeric, lists.categorical)
                                   .assign(**{model.LABEL: deployed_rows[model.LABEL].to_numpy()}),
                                   str(snapshots_path), tags["data_fingerprint"], model.LABEL,
                                   str(deployed_rows["cutoff"].min().date()),
                                   str(deployed_rows["cutoff"].max().date())),
        trained_between=trained_between,
    )
    report = {"model_name": registered.name, "model_version": registered.version,
              "split": split.as_dict(), **lineage,
              "metrics": {name: value for name, value in metrics.items() if name not in RUN_ONLY_METRICS},
              "tuning_trials": tuned.trials, "skipped_backtest_folds": skipped_folds,
              "probability_layer": chosen_to_deploy.as_dict(), "holdout_probability_layer": chosen.as_dict(),
              "chosen_xgboost": params.train.xgboost.model_dump(),
              "holdout_scores_fingerprint": write_holdout_scores(holdout_scores, report_path)}
    return _written_train_report(report, report_path, registered)


# How long a fit took is the run's, not the model's: MLflow keeps it; the report DVC tracks
# holds what the same data and params always give.
RUN_ONLY_METRICS = ("train_seconds",)


def _written_train_report(report: dict, report_path: Path, registered: tracking.RegisteredModel) -> dict:
    """Write the train report, which names the registered version (the registry knows its run:
    a run id is new in every store, so the DVC-tracked report leaves it out); return it with the run."""
    io.write_json(report, report_path)
    return {**report, "run_id": registered.run_id}


def _train_fallback(params: Params, snapshots: pd.DataFrame, snapshots_path: Path, lists: FeatureLists,
                    features_report: Path, model_dir: Path, report_path: Path, project_root: Path,
                    reason: str, began_ms: int) -> dict:
    """Register the BG/NBD model as the churn model when the data cannot support a temporal one,
    so that scoring still works, its scores labelled as coming from the fallback."""
    from churnlens import model

    if model.FALLBACK_FEATURE not in lists.numeric:
        raise model.TemporalModelUnsupported(f"{reason}; and the BG/NBD fallback needs the feature "
                                             f"{model.FALLBACK_FEATURE}, which the snapshots do not have")
    log.warning("%s.\ntrain: registering the BG/NBD fallback instead: churn probability = BG/NBD P(no purchase in "
                "the next %d days), fitted per cutoff on history only (no label needed). Retrain when more "
                "cutoffs are labelled to get the temporal model.", reason, params.features.horizon_days)
    latest = snapshots[snapshots["cutoff"] == snapshots["cutoff"].max()]
    fallback = model.bgnbd_fallback_model(latest, params.train.probability_floor)
    trained_between = (began_ms, time.time_ns() // 1_000_000)
    numeric = [model.FALLBACK_FEATURE]
    contract = ModelContract(numeric, [], model_kind=model.FALLBACK_KIND, fallback_reason=reason,
                             drift_profile=drift.drift_profile(latest, numeric, []))
    tags = {**tracking.git_commit(project_root), **tracking.dvc_lock_hashes(project_root, "train"),
            "data_fingerprint": io.file_fingerprint(snapshots_path), "model_kind": model.FALLBACK_KIND}
    registered = tracking.log_training_run(
        experiment=params.train.experiment_name, model_name=params.train.registered_model_name,
        params={"features": params.features.model_dump(mode="json"), "model_kind": model.FALLBACK_KIND},
        metrics={}, tags=tags, pipeline=fallback, example=model.model_input(latest.head(50), numeric, []),
        metadata=contract.to_metadata(), artifacts={"features": features_report}, model_dir=model_dir,
        trained_between=trained_between)
    # No procedure is judged on a holdout (evaluate judges the fallback on its own feature): no scores.
    report = {"model_name": registered.name, "model_version": registered.version,
              "model_kind": model.FALLBACK_KIND, "fallback_reason": reason, "split": None,
              "deployed_train_cutoffs": [], "metrics": {},
              "holdout_scores_fingerprint": write_holdout_scores(
                  holdout_scores_frame(snapshots.iloc[:0], np.empty(0)), report_path)}
    return _written_train_report(report, report_path, registered)


def _require_inputs(*paths: Path) -> None:
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(2, "not found; run the earlier stages first (`dvc repro` or `churnlens features`)",
                                ", ".join(missing))


def _require_both_classes(labels: pd.Series, where: str) -> None:
    """A classifier needs churners and stayers; say so instead of scikit-learn's class error."""
    from churnlens.model import TemporalModelUnsupported

    classes = sorted(labels.dropna().astype(int).unique().tolist())
    if len(classes) < 2:
        raise TemporalModelUnsupported(
            f"train: every labelled customer in the {where} has churned={classes[0] if classes else 'nothing'} "
            "(e.g. every customer bought once, or the data is shorter than features.horizon_days); a churn model "
            "needs both outcomes. Use a longer history, a shorter features.horizon_days, or earlier cutoffs")


def _score_holdout(pipeline: object, contract: ModelContract, holdout: pd.DataFrame) -> np.ndarray:
    from churnlens import model

    missing = contract.missing_from(holdout.columns)
    if missing:
        raise ValueError(f"features {missing} are not in the snapshots")
    return model.churn_probability(pipeline, holdout, contract.numeric_features, contract.categorical_features)


def holdout_scores_path(train_report: Path) -> Path:
    """Where train writes, beside its report, the evaluated procedure's probabilities on the holdout."""
    return Path(train_report).with_name(f"{Path(train_report).stem}_holdout_scores.parquet")


def holdout_scores_frame(holdout: pd.DataFrame, probability: np.ndarray) -> pd.DataFrame:
    return holdout[HOLDOUT_KEYS].assign(churn_probability=probability)


def write_holdout_scores(scores: pd.DataFrame, train_report: Path) -> str:
    """Write the holdout scores beside the train report; return the fingerprint the report keeps."""
    return io.file_fingerprint(io.write_parquet(scores, holdout_scores_path(train_report)))


def procedure_holdout_scores(train_report: Path, trained: dict, holdout: pd.DataFrame) -> np.ndarray:
    """The evaluated procedure's probabilities (trained strictly before the holdout), in ``holdout``'s
    row order, as train wrote them: the very model that was judged, not a refit of it. ``trained``
    (the train report) names the file's fingerprint, so scores of another run are refused."""
    path = holdout_scores_path(train_report)
    if not path.is_file():
        raise FileNotFoundError(2, "not found; train writes it beside its report: rerun `dvc repro train`",
                                str(path))
    if io.file_fingerprint(path) != trained.get("holdout_scores_fingerprint"):
        raise ValueError(f"{path} is not the holdout scores file {train_report} was written with (another train "
                         "run's, or a report from an older churnlens): rerun `dvc repro train`")
    scores = pd.read_parquet(path)
    keyed = holdout[HOLDOUT_KEYS].merge(scores, on=HOLDOUT_KEYS, how="left", validate="one_to_one")
    if len(scores) != len(holdout) or keyed["churn_probability"].isna().any():
        raise ValueError(f"{path}: {len(scores)} scores for the {len(holdout)} holdout rows of these snapshots, "
                         "which changed since train ran: rerun `dvc repro train`")
    return keyed["churn_probability"].to_numpy(dtype=float)


def run_evaluate(params: Params, snapshots_path: Path, model_dir: Path, train_report: Path, metrics_path: Path,
                 plots_dir: Path, headline_path: Path | None = None, deployed_path: Path | None = None) -> dict:
    """Judge the challenger on the holdout and decide which scorer serves (always one): writes the
    metrics, plots and, at ``deployed_path`` (default: beside the metrics, deployed.json), the exact
    registered version this run deployed, which the pipeline's score stage scores."""
    deployed_path = deployed_path or Path(metrics_path).with_name("deployed.json")
    payload = _judge(params, snapshots_path, model_dir, train_report, metrics_path, plots_dir, headline_path)
    io.write_json(payload["promotion"]["deployed"], deployed_path)
    return payload


def _judge(params: Params, snapshots_path: Path, model_dir: Path, train_report: Path, metrics_path: Path,
           plots_dir: Path, headline_path: Path | None) -> dict:
    from churnlens import evaluate as ev
    from churnlens import model, plots

    config = params.evaluate
    trained = io.read_json(train_report)
    snapshots = pd.read_parquet(snapshots_path)
    if trained.get("model_kind") == model.FALLBACK_KIND:
        return _evaluate_fallback(params, snapshots, trained, metrics_path, headline_path)
    challenger = tracking.load_model(str(model_dir))
    # The train run, as the registry records it for the version the folder proved to be.
    trained = {**trained, "run_id": challenger.contract.run_id}
    split = model.TemporalSplit.from_dict(trained["split"])
    holdout = split.holdout_rows(snapshots)
    train_rows = model.rows_at(snapshots, sorted(set(split.train + split.validation)))
    y = holdout[model.LABEL].to_numpy(dtype=int)

    # The deployed model was refit on the holdout's labels: its score there would be in-sample. The
    # honest figure is the procedure's, trained strictly before the holdout.
    probability = procedure_holdout_scores(train_report, trained, holdout)
    baselines = ev.baseline_scores(train_rows, holdout, params.train.seed, params.features.horizon_days)
    results = {"model": ev.classification_metrics(y, probability, config.top_fraction)}
    for name, (values, is_probability) in baselines.items():
        results[name] = ev.classification_metrics(y, values, config.top_fraction, is_probability)
    comparison = ev.baseline_comparison(results, list(baselines), config.promotion_metric)
    promotion = _promotion(params, trained, snapshots, holdout, results["model"], comparison["beats_baselines"])
    if trained["split"].get("overlapping_labels"):
        promotion["warning"] = ("short history: the training labels overlap the holdout's label window, so the "
                                "holdout figures are optimistic")

    curves = {"model": ev.curves(y, probability, config.calibration_bins)}
    curves.update({name: ev.curves(y, (values - values.min()) / (np.ptp(values) or 1.0), config.calibration_bins)
                   for name, (values, _) in baselines.items()})
    value = score.customer_value(holdout, params.score.value_horizon_days,
                                 params.score.value_per_purchase).to_numpy(dtype=float)
    scores = {"model": probability, **{name: values for name, (values, _) in baselines.items()}}
    for name, (profit, best) in ev.campaign_profits(y, scores, value, config).items():
        curves[name]["profit"] = profit
        results[name].update(best)
    model_curves, baseline_curves = curves.pop("model"), curves
    per_segment = ev.segment_metrics(holdout, y, probability, params.score.segments, config.top_fraction)
    holdout_cutoff = split.holdout.date().isoformat()
    payload = {"holdout_cutoff": holdout_cutoff, **results, **comparison, "promotion": promotion,
               "per_segment": per_segment}

    sample = holdout.sample(min(len(holdout), 5000), random_state=params.train.seed)
    importance = model.mean_abs_contributions(challenger.pipeline, sample, challenger.contract.numeric_features,
                                              challenger.contract.categorical_features)
    io.write_csv(importance, plots_dir / "importance.csv")
    plots.importance_plot(importance, plots_dir / "importance.png")
    # A rescaled rank is no probability: reliability data only for the baselines that are.
    probability_baselines = {b: c for b, c in baseline_curves.items() if baselines[b][1]}
    for name in model_curves:
        io.write_csv(ev.curve_table(name, model_curves,
                                    probability_baselines if name == "calibration" else baseline_curves),
                     plots_dir / f"{name}.csv")
    plots.evaluation_plots(model_curves, baseline_curves, holdout_cutoff, plots_dir)
    io.write_json(payload, metrics_path)
    if headline_path is not None:
        io.write_json(ev.headline_metrics(results), headline_path)
    # Grouped for the UI's charts, which it orders by group name: the model on the holdout first,
    # then each baseline on it, then each segment.
    flat = {f"{'holdout' if name == 'model' else f'{tracking.BASELINE_GROUP}/{name}'}/{k}": v
            for name, values in results.items() for k, v in values.items()}
    flat.update({f"segment/{segment}/{k}": v for segment, values in per_segment.items() for k, v in values.items()})
    tracking.log_evaluation(trained["run_id"], flat, plots_dir)
    tracking.record_promotion(trained["model_name"], trained["model_version"], promotion, results, holdout_cutoff)
    return payload


def _evaluate_fallback(params: Params, snapshots: pd.DataFrame, trained: dict, metrics_path: Path,
                       headline_path: Path | None) -> dict:
    """The BG/NBD fallback learns from no label, so every labelled cutoff is out of sample for it:
    judged on the latest one where there is one. It becomes champion only where there is none
    (so that scoring works); it never replaces a temporal champion."""
    from churnlens import evaluate as ev
    from churnlens import model

    labelled = model.labelled_cutoffs(snapshots)
    payload: dict = {"model_kind": model.FALLBACK_KIND, "fallback_reason": trained["fallback_reason"]}
    if labelled:
        holdout = model.rows_at(snapshots, labelled[-1:])
        y = holdout[model.LABEL].to_numpy(dtype=int)
        payload["holdout_cutoff"] = labelled[-1].date().isoformat()
        if len(np.unique(y)) == 2:
            payload["model"] = ev.classification_metrics(y, holdout[model.FALLBACK_FEATURE].to_numpy(dtype=float),
                                                         params.evaluate.top_fraction)
    name, version = trained["model_name"], trained["model_version"]
    champion = tracking.alias_version(name, tracking.CHAMPION)
    promoted = champion is None or champion == version
    if promoted:
        tracking.set_alias(name, tracking.CHAMPION, version)
    reason = ("BG/NBD fallback: no champion yet" if promoted else
              f"BG/NBD fallback never replaces champion v{champion}")
    payload["promotion"] = {"promoted": promoted, "challenger_version": version,
                            "previous_champion_version": champion, "reason": reason,
                            "deployed": _deployed(name, version if promoted else champion,
                                                  ev.CHALLENGER_WINS if promoted else ev.CHAMPION_KEPT, reason,
                                                  params.evaluate.promotion_metric, payload.get("holdout_cutoff"),
                                                  "baseline" if promoted else None)}
    log.warning("evaluate: model v%s is the BG/NBD fallback (%s); %s", version, trained["fallback_reason"],
                payload["promotion"]["reason"])
    io.write_json(payload, metrics_path)
    if headline_path is not None:
        io.write_json({k: round(float(v), 4) for k, v in payload.get("model", {}).items()
                       if k in ev.HEADLINE_METRICS}, headline_path)
    return payload


def _promotion(params: Params, trained: dict, snapshots: pd.DataFrame, holdout: pd.DataFrame,
               challenger_metrics: dict, beats_baselines: dict[str, bool]) -> dict:
    """The promotion decision (:func:`churnlens.evaluate.promotion_decision`) and which scorer
    serves (:func:`churnlens.evaluate.deployment_decision`): the champion alias is moved to the
    challenger, or to a deployable baseline registered for it, or stays; never left unset."""
    from churnlens import evaluate as ev

    name, version = trained["model_name"], trained["model_version"]
    metric = params.evaluate.promotion_metric
    challenger_score = ev.promotion_score(challenger_metrics, metric)
    champion_version = tracking.alias_version(name, tracking.CHAMPION)
    champion_score = None
    if champion_version not in (None, version):
        try:
            champion = tracking.load_model(f"models:/{name}/{champion_version}")
            champion_score = _honest_champion_score(champion, holdout, params)
        except (KeyError, ValueError) as exc:
            log.warning("champion version %s cannot score this holdout (%s); it is replaced", champion_version, exc)
            champion_score = float("-inf")
    decision = ev.promotion_decision(metric, version, challenger_score, beats_baselines, champion_version,
                                     champion_score, params.evaluate.min_improvement)
    baselines = _deployable_baselines(params, snapshots, holdout)
    scores = {kind: score for kind, (score, _) in baselines.items()}
    gate = ev.deployment_decision(decision, champion_score, scores, params.evaluate.min_improvement)
    decision["deployable_baselines"] = scores
    if champion_score is not None:
        decision["champion_score"] = champion_score
    if gate["deploy"] == ev.BASELINE_WINS:
        registered = _register_baseline(params, trained, snapshots, gate["baseline"], baselines[gate["baseline"]][1],
                                        gate["reason"])
        gate["version"] = registered.version
        log.warning("evaluate: %s; the %s baseline serves as champion v%s", gate["reason"], gate["baseline"],
                    registered.version)
    if gate["version"] != champion_version:
        tracking.set_alias(name, tracking.CHAMPION, gate["version"])
    decision["deployed"] = _deployed(name, gate["version"], gate["deploy"], gate["reason"], metric,
                                     _holdout_cutoff(holdout))
    return decision


def _holdout_cutoff(holdout: pd.DataFrame) -> str:
    return pd.Timestamp(holdout["cutoff"].iloc[0]).date().isoformat()


def _deployable_baselines(params: Params, snapshots: pd.DataFrame, holdout: pd.DataFrame
                          ) -> dict[str, tuple[float, object]]:
    """Each baseline that can serve (a registered, loadable scorer), with its promotion score on
    this holdout and its pipeline: the BG/NBD fallback where the snapshots carry its feature. It
    learns no label, so this holdout is out of time for it."""
    from churnlens import evaluate as ev
    from churnlens import model

    if model.FALLBACK_FEATURE not in holdout.columns:
        return {}
    latest = snapshots[snapshots["cutoff"] == snapshots["cutoff"].max()]
    pipeline = model.bgnbd_fallback_model(latest, params.train.probability_floor)
    probability = model.churn_probability(pipeline, holdout, [model.FALLBACK_FEATURE], [])
    metrics = ev.classification_metrics(holdout[model.LABEL].to_numpy(dtype=int), probability,
                                        params.evaluate.top_fraction)
    return {model.FALLBACK_KIND: (ev.promotion_score(metrics, params.evaluate.promotion_metric), pipeline)}


def _register_baseline(params: Params, trained: dict, snapshots: pd.DataFrame, baseline: str, pipeline: object,
                       reason: str) -> tracking.RegisteredModel:
    """Register the winning baseline as a version of the churn model, with the contract the score
    stage reads (its one feature, its kind, why it serves, the drift reference)."""
    from churnlens import model

    latest = snapshots[snapshots["cutoff"] == snapshots["cutoff"].max()]
    numeric = [model.FALLBACK_FEATURE]
    contract = ModelContract(numeric, [], model_kind=baseline, fallback_reason=f"baseline promoted: {reason}",
                             drift_profile=drift.drift_profile(latest, numeric, []))
    return tracking.register_baseline(model_name=trained["model_name"], train_run_id=trained["run_id"],
                                      baseline=baseline, pipeline=pipeline,
                                      example=model.model_input(latest.head(50), numeric, []),
                                      metadata=contract.to_metadata(), tags={"model_kind": baseline})


def _deployed(name: str, version: str, decision: str, reason: str, metric: str, holdout_cutoff: str | None,
              kind: str | None = None) -> dict:
    """What evaluate deployed, for reports/deployed.json: the exact registered version (never an
    alias another run may move), whether it is a trained model or a baseline, and why."""
    kind = kind or tracking.version_tags(name, version).get("scorer", "model")
    return {"model_uri": f"models:/{name}/{version}", "model_name": name, "model_version": str(version),
            "kind": kind, "decision": decision, "reason": reason, "metric": metric,
            "holdout_cutoff": holdout_cutoff}


def read_deployed(path: Path | str) -> dict:
    """The version evaluate deployed (see :func:`_deployed`), checked, for the score stage."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "not found; evaluate writes it (`dvc repro evaluate`, or `churnlens evaluate "
                                "--deployed` outside DVC)", str(path))
    record = io.read_json(path)
    uri = record.get("model_uri") if isinstance(record, dict) else None
    if not (isinstance(uri, str) and re.fullmatch(r"models:/[^/@]+/\d+", uri)):
        raise ValueError(f"{path}: no models:/<name>/<version> under 'model_uri' (found {uri!r}); it is written by "
                         "`churnlens evaluate`: rerun `dvc repro evaluate`")
    return record


def _honest_champion_score(champion: tracking.LoadedModel, holdout: pd.DataFrame, params: Params) -> float:
    """The champion's out-of-time figure: its score on this holdout when none of its training
    labels reaches past the holdout cutoff, else the honest holdout figure recorded for its own
    procedure (its score here would be in-sample)."""
    from churnlens import evaluate as ev
    from churnlens import model

    metric = params.evaluate.promotion_metric
    cutoff = pd.Timestamp(holdout["cutoff"].iloc[0])
    trained_on = [pd.Timestamp(c) for c in champion.contract.deployed_train_cutoffs]
    if all(params.features.label_complete(c, cutoff) for c in trained_on):
        probability = _score_holdout(champion.pipeline, champion.contract, holdout)
        y = holdout[model.LABEL].to_numpy(dtype=int)
        return ev.promotion_score(ev.classification_metrics(y, probability, params.evaluate.top_fraction), metric)
    recorded = tracking.run_metrics(champion.contract.run_id)
    key = f"holdout/{metric.removeprefix('neg_')}"
    if key not in recorded:
        raise ValueError(f"it was trained on this holdout's labels and its run has no {key}")
    return ev.promotion_score({metric.removeprefix("neg_"): recorded[key]}, metric)


def run_score(job: ScoreJob, deployed_path: Path | str | None = None) -> dict:
    """The batch scoring job (:class:`churnlens.score.ScoreJob`): features as of one instant, then
    scores, segments, reasons and the retention plan, written atomically (Parquet, and a rounded
    CSV beside it unless ``csv_output`` says where), plus a segment report and a run manifest.
    With ``deployed_path`` (evaluate's deployed.json) it scores the exact version evaluate
    deployed, whatever ``job.model_uri`` or the aliases say now."""
    params = job.params
    outcome_sources = _outcomes(job.outcomes, job.canonical_dir)
    deployed = read_deployed(deployed_path) if deployed_path is not None else None
    if deployed is not None:
        job = dataclasses.replace(job, model_uri=deployed["model_uri"])
    # The model first: a wrong alias fails in a second, not after the features were computed.
    resolved = tracking.resolve_model(job.model_uri, job.project_root)
    deployment = _deployment(resolved, deployed, deployed_path)
    laps = Laps()
    with engine_for(params.engine) as engine:
        tables = engine.tables(str(job.canonical_dir))
        data_start, data_end = engine.data_span(tables)
        instant = _as_of(params, job.as_of, data_start, data_end)
        scored = engine.score(tables, instant, resolved, job, laps)
    data_info = {"canonical_dir": str(job.canonical_dir), "fingerprint": scored.data_fingerprint,
                 "first_event": data_start.isoformat(), "last_event": data_end.isoformat()}
    return _report_score_run(job, engine.name, laps, scored, instant, data_info, outcome_sources, deployment)


def _deployment(resolved: tracking.ResolvedModel, deployed: dict | None, deployed_path: Path | str | None) -> dict:
    """Which scorer this run uses and why it serves: evaluate's decision when scoring what it
    deployed, else the version's own promotion tags; and whether it is the champion right now."""
    registered = resolved.version not in ("unregistered", "local")
    tags = tracking.version_tags(resolved.name, resolved.version) if registered else {}
    champion = tracking.alias_version(resolved.name, tracking.CHAMPION) if registered else None
    info = {"source": str(deployed_path) if deployed is not None else "model_uri",
            "kind": deployed["kind"] if deployed else tags.get("scorer", "model"),
            "decision": deployed["decision"] if deployed else tags.get("promotion.decision"),
            "reason": deployed["reason"] if deployed else tags.get("promotion.reason"),
            "champion_version": champion, "is_champion": champion is not None and champion == resolved.version}
    shown = f"v{champion}" if champion else "none"
    if not info["is_champion"] and deployed is not None:
        log.warning("score: %s v%s is what evaluate deployed (%s), but the registry's champion is now %s (another "
                    "run moved it); scoring the deployed version", resolved.name, resolved.version, deployed_path, shown)
    elif not info["is_champion"]:
        log.warning("score: %s v%s is not the champion (champion: %s); its own evaluation: %s%s. These scores are "
                    "not the champion's", resolved.name, resolved.version, shown,
                    info["decision"] or "never evaluated", f" ({info['reason']})" if info["reason"] else "")
    return info


def _as_of(params: Params, as_of: pd.Timestamp | None, data_start: pd.Timestamp, data_end: pd.Timestamp
           ) -> pd.Timestamp:
    # A date read back from a scores file is UTC-aware; the engines' instants are naive UTC.
    instant = score.utc(as_of).tz_localize(None) if as_of is not None else ft.scoring_cutoff(params.features, data_end)
    # A few quiet days between the last event and the scoring date are normal (weekends, holidays);
    # more than a month (or a horizon) without a single event means the data is not current.
    quiet = pd.Timedelta(days=min(params.features.horizon_days, 30))
    if not data_start < instant <= data_end.normalize() + pd.Timedelta(days=1) + quiet:
        raise ValueError(
            f"score: as-of {instant.date()} is outside the data, which spans {data_start.date()} .. "
            f"{data_end.date()}; pick a date inside it"
        )
    return instant


def _report_score_run(job: ScoreJob, engine: str, laps: Laps, scored: Scored, instant: pd.Timestamp,
                      data_info: dict, outcomes: tuple[str, str] | None, deployment: dict | None = None) -> dict:
    """Segment report, drift check and run manifest of a scoring run, whichever engine scored.
    The manifest goes to ``manifest_path``, else beside a local output, else the working folder."""
    from churnlens import plots

    config = job.params.score
    scores, snapshot, loaded = scored.scores, scored.snapshot, scored.model
    profile = loaded.contract.drift_profile
    # The kind is the scorer's own: a version train registered as the BG/NBD fallback is a baseline too.
    deployment = {**(deployment or {}), "kind": "model" if loaded.contract.model_kind == "temporal" else "baseline"}
    # No run id: the registry knows the version's run, and an id new in every store would make the
    # same scores' manifest differ between clones.
    model_info = {"model_uri": job.model_uri, "model_name": loaded.name, "model_version": loaded.version,
                  "model_kind": loaded.contract.model_kind, "deployment": deployment}
    if loaded.contract.model_kind != "temporal":
        log.warning("score: model %s v%s is the %s (%s); its scores are BG/NBD probabilities", loaded.name,
                    loaded.version, loaded.contract.model_kind, loaded.contract.fallback_reason)
    report = score.segment_report(scores, job.previous)
    report.update({"as_of": score.utc(instant).isoformat(), "model_name": loaded.name,
                   "model_version": loaded.version, "model_kind": loaded.contract.model_kind,
                   "deployment": deployment})
    if job.truth is not None:
        report["ground_truth"] = segments.agreement_with_truth(scores[["customer_id", "segment"]], job.truth)
    report["unavailable"] = {"evidence_levels": segments.unavailable_evidence(segments.evidence_level(snapshot)),
                             "actions": playbook.actions_replaced(scores, config)}
    _warn_on_value_basis(report.get("customer_value_basis", "spend"), config)
    for cell, replaced in report["unavailable"]["actions"].items():
        log.info("playbook: %d customers of %s get %s instead of %s (%s)", replaced["customers"], cell,
                 replaced["given_instead"], replaced["action"], replaced["why"])
    unknown = segments.unknown_contract_types(snapshot, config.segments)
    if unknown:
        report["unknown_contract_types"] = unknown
        log.warning("segments: contract types %s are not in score.segments.contract_lock_in; their contract "
                    "component is left out. Map them there", sorted(unknown))
    if outcomes is not None:
        report["construct_validity"] = construct_validity_report(scores, *outcomes, instant,
                                                                 job.params.features.horizon_days)
    stability = drift.population_stability(profile, snapshot)
    drifted = {name: value for name, value in stability.items() if value > config.drift_warning_psi}
    for name, value in drifted.items():
        log.warning("drift: %s has PSI %.2f against the training population (threshold %.2f)", name, value,
                    config.drift_warning_psi)
    if not stability:
        log.warning("drift: model %s v%s carries no training profile; drift not checked", loaded.name,
                    loaded.version)
    report_path = job.report_path or job.beside("segment_report.json")
    io.write_json(report, report_path)
    plots.segment_plot(report, report_path.with_suffix(".png"))
    laps.lap("report")
    manifest = {
        "as_of": score.utc(instant).isoformat(), "engine": engine, **model_info, "data": data_info,
        "rows": {"customers_scored": len(scores), "in_campaign": report["campaign_customers"],
                 "with_reasons": int((scores["top_reasons"].fillna("") != "").sum()),
                 "per_segment": {s: v["customers"] for s, v in report["segments"].items()}},
        "segment_mix": {s: v["share"] for s, v in report["segments"].items()},
        "segment_evidence": report.get("segment_evidence", {}),
        "customer_value_basis": sorted(set(scores["customer_value_basis"])) if "customer_value_basis" in scores else [],
        "reasons": config.reasons,
        "label": label_definition(job.params.features),
        "control": {"share": config.control_share, "seed": config.control_seed,
                    "customers": report["campaign_control_customers"]},
        "expected_performance": expected_performance(scores, loaded, job.params, sorted(drifted)),
        "drift": {"threshold": config.drift_warning_psi, "psi": stability, "warnings": sorted(drifted),
                  "not_compared": {name: why for name, why in drift.NOT_COMPARED.items() if name in profile},
                  "rows_compared": len(snapshot)},
        "outputs": {"scores": scored.output, "csv": scored.csv_output, "segment_report": str(report_path)},
        "churnlens_version": _version(),
    }
    manifest_path = job.manifest_path or job.beside("manifest.json")
    io.write_json(manifest, manifest_path)
    # The manifest says what was scored with what: the same bytes for the same data, params and
    # model. How long it took differs from run to run, so it is kept beside it (not DVC-tracked).
    timings = {**laps.timings, "total": round(sum(laps.timings.values()), 3)}
    io.write_json(timings, timings_path(manifest_path))
    if job.headline_path is not None:
        io.write_json(score.segment_headline(report), job.headline_path)
    if job.archive_dir is not None:
        archive_run(scored, manifest, Path(job.archive_dir))
    log.info("scored %d customers in %.1f s", len(scores), timings["total"])
    return {**report, "outputs": {**manifest["outputs"], "manifest": str(manifest_path)}}


def label_definition(config: FeaturesConfig) -> dict:
    """What a run's probabilities predict, kept with the run so a later scorecard reads the
    label the model was trained for, whatever params.yaml says by then."""
    return {"label": config.label, "lead_days": config.lead_days, "horizon_days": config.horizon_days,
            "partial_churn_below": config.partial_churn_below}


def expected_performance(scores: pd.DataFrame, loaded: tracking.LoadedModel, params: Params,
                         drift_warnings: list[str]) -> dict:
    """The label-free estimate of the run's figures (:mod:`churnlens.estimate`), with where its
    assumptions are known to fail; rounded, so the manifest is the same bytes on every machine."""
    from churnlens import estimate, portable

    # A model folder outside the registry scores without MLflow: its calibration is then unknown.
    registered = loaded.version not in UNREGISTERED
    holdout_ece = tracking.run_metrics(loaded.contract.run_id).get("holdout/ece") if registered else None
    return {"method": "CBPE: the mean over label sets drawn from the probabilities (p05/p95: their spread)",
            "draws": params.monitor.estimate_draws,
            "figures": {name: portable.significant(value, 6) for name, value in estimate.expected_metrics(
                scores["churn_probability"].to_numpy(dtype=float), params.evaluate.top_fraction,
                params.monitor.estimate_draws).items()},
            "holdout_ece": None if holdout_ece is None else portable.significant(holdout_ece, 6),
            "caveats": estimate.caveats(holdout_ece, drift_warnings)}


def archive_run(scored: Scored, manifest: dict, archive_dir: Path) -> Path:
    """Keep this run for `churnlens monitor`: its scores' rows and its manifest in a folder of its
    own, named by the scoring day and the model version (a rerun of both replaces it)."""
    day = pd.Timestamp(manifest["as_of"]).strftime("%Y-%m-%d")
    folder = archive_dir / f"{day}_{manifest['model_name']}_v{manifest['model_version']}"
    io.write_parquet(scored.scores[list(MONITORED_COLUMNS)], folder / "scores.parquet")
    io.write_json(manifest, folder / "manifest.json")
    return folder


# What a scorecard reads of a run's scores (the rest is for the people acting on them).
# The scoring date and the model are the manifest's.
MONITORED_COLUMNS = ("customer_id", "churn_probability", "risk_tier", "segment", "action", "action_success_rate",
                     "in_campaign", "control_group")


def timings_path(manifest_path: Path | str) -> Path:
    """Where a scoring run's timings (seconds per step) go: beside its manifest."""
    return Path(manifest_path).with_name(f"{Path(manifest_path).stem}_timings.json")


def _warn_on_value_basis(basis: str, config: ScoreConfig) -> None:
    """Say when the customer value is not what the campaign's money figures assume."""
    if basis != "spend" and config.value_per_purchase is None:
        log.warning("score: the log has no amounts, so customer value counts purchases (%s): priorities weigh a "
                    "count against action costs in money. Set score.value_per_purchase to your mean purchase "
                    "value", basis)
    elif basis == "spend" and config.value_per_purchase is not None:
        log.warning("score: score.value_per_purchase (%s) is ignored: the log has amounts, and customer value is "
                    "their spend", config.value_per_purchase)


def _outcomes(outcomes: Path | str | None, canonical_dir: Path | str) -> tuple[str, str] | None:
    """(history, outcomes) transactions for the construct-validity table, or None."""
    if outcomes is None:
        return None
    if not Path(outcomes).exists():
        raise FileNotFoundError(f"score --outcomes {outcomes}: no such file or folder; give the canonical "
                                "transactions of a later extract (run `churnlens ingest` on it)")
    return str(Path(canonical_dir) / "transactions.parquet"), str(outcomes)


def construct_validity_report(scores: pd.DataFrame, history: str, outcomes: str, as_of: pd.Timestamp,
                              horizon_days: int) -> dict:
    """How each segment behaved in the ``horizon_days`` after ``as_of`` (see :mod:`churnlens.validity`)."""
    from churnlens import validity

    lines = validity.line_flags(validity.joined_log(history, outcomes, as_of))
    if lines["ts"].max() < as_of + pd.Timedelta(days=horizon_days):
        log.warning("construct validity: the outcomes end %s, before the %d-day window after %s closes",
                    lines["ts"].max(), horizon_days, as_of.date())
    report = {"horizon_days": horizon_days, "outcomes_end": lines["ts"].max().isoformat(), "per_level": {}}
    # Each evidence level is judged by its own hypotheses (churnlens.validity.ORDERINGS_BY_LEVEL).
    levels = scores["segment_evidence"] if "segment_evidence" in scores else pd.Series("lines", index=scores.index)
    for level, rows in scores.groupby(levels, sort=True):
        table = validity.construct_validity(rows[["customer_id", "segment"]], lines, as_of, horizon_days)
        log.info("construct validity (segments read from %s), %d days after %s:\n%s", level, horizon_days,
                 as_of.date(), validity.markdown(table))
        report["per_level"][level] = {"per_segment": table.set_index("segment").to_dict(orient="index"),
                                      "orderings_hold": validity.orderings(table, level),
                                      "markdown": validity.markdown(table)}
    if len(report["per_level"]) == 1:  # one log, one level: its table is the report's own
        report.update(next(iter(report["per_level"].values())))
    return report


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("churnlens")


@dataclass(frozen=True)
class ScoringRun:
    """One earlier scoring run, as `churnlens score --archive-dir` kept it."""

    folder: Path
    scores: pd.DataFrame
    manifest: dict

    @property
    def as_of(self) -> pd.Timestamp:
        """The scoring instant, naive UTC as the engines take it (the manifest writes it in UTC)."""
        return pd.Timestamp(self.manifest["as_of"]).tz_convert("UTC").tz_localize(None)


# A run scored by a model folder outside the registry has no version to log its scorecard on.
UNREGISTERED = ("local", "unregistered")


def scoring_runs(runs_dir: Path) -> list[ScoringRun]:
    """Every run kept under ``runs_dir`` (a folder holding scores.parquet and manifest.json), oldest first."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"monitor: {runs_dir}: no such folder; score with `churnlens score --archive-dir "
                                f"{runs_dir}` (the pipeline's score stage does) to keep runs to monitor")
    runs = [kept_run(folder) for folder in sorted(runs_dir.iterdir())
            if (folder / "scores.parquet").is_file() and (folder / "manifest.json").is_file()]
    if not runs:
        raise FileNotFoundError(f"monitor: {runs_dir} holds no scoring run (a folder with scores.parquet and "
                                "manifest.json); score with `churnlens score --archive-dir` first")
    return sorted(runs, key=lambda run: (run.as_of, run.folder.name))


def kept_run(folder: Path) -> ScoringRun:
    """One kept run, checked: the columns a scorecard reads (control_group may be missing: scores
    from before control groups, whose campaign was all treated) and the manifest's scoring date."""
    scores = pd.read_parquet(folder / "scores.parquet")
    missing = sorted(set(MONITORED_COLUMNS) - {"control_group"} - set(scores.columns))
    manifest = io.read_json(folder / "manifest.json")
    if missing:
        raise ValueError(f"monitor: {folder} is not a run `churnlens score --archive-dir` kept: its scores lack "
                         f"{missing}")
    if "as_of" not in manifest:
        raise ValueError(f"monitor: {folder}/manifest.json has no as_of; keep runs with `churnlens score "
                         "--archive-dir`")
    if "label" not in manifest:
        log.warning("monitor: %s's manifest does not say which label its model predicts; reading it by today's "
                    "features params", folder)
    return ScoringRun(folder, scores, manifest)


def run_monitor(params: Params, runs_dir: Path, canonical_dir: Path, report_path: Path, plot_path: Path,
                headline_path: Path | None = None) -> dict:
    """The scorecard of every earlier scoring run against the newer canonical data
    (:mod:`churnlens.monitor`), logged on the model version that scored; a report, a plot of the
    figures over scoring dates and, optionally, the headline numbers of the newest closed run."""
    from churnlens import monitor, plots
    from churnlens.engines.duckdb import DuckDBEngine, data_span

    runs = scoring_runs(Path(runs_dir))
    tables = DuckDBEngine().tables(str(canonical_dir))
    data_start, data_end = data_span(tables)
    cards = [scorecard_of(run, tables, data_start, data_end, params) for run in runs]
    plots.monitor_plot(cards, plot_path)
    for card in cards:
        if card["status"] in ("closed", "interim") and card["model_version"] not in UNREGISTERED:
            points = monitor.mlflow_points(card)
            # The run id stays out of the report: it is new in every store.
            tracking.log_monitoring(card["model_name"], card["model_version"], points, plot_path,
                                    card["recommendation"])
    report = {"data": {"canonical_dir": str(canonical_dir), "first_event": data_start.isoformat(),
                       "last_event": data_end.isoformat()},
              "runs": cards, "markdown": monitor.runs_markdown(cards),
              "campaign_markdown": monitor.campaign_markdown(cards)}
    log.info("monitor: %d scoring runs against data up to %s:\n%s", len(cards), data_end, report["markdown"])
    if any(card.get("campaign") for card in cards):
        log.info("monitor: treated against control, once the window closed:\n%s", report["campaign_markdown"])
    for card in cards:
        if card["recommendation"].get("retrain"):
            log.warning("monitor: %s v%s: %s", card["model_name"], card["model_version"], card["recommendation"]["why"])
    io.write_json(report, report_path)
    if headline_path is not None:
        io.write_json(monitor.headline(cards), headline_path)
    return report


def scorecard_of(run: ScoringRun, tables: dict, data_start: pd.Timestamp, data_end: pd.Timestamp,
                 params: Params) -> dict:
    """One run's scorecard: closed, interim, waiting (no day of its window seen yet), or
    unmeasurable (the data ends before the run or starts after it), with the reason."""
    from churnlens import control, monitor

    manifest = run.manifest
    label = {**label_definition(params.features), **manifest.get("label", {})}
    config = params.features.model_copy(update=label)
    window = monitor.label_window(run.as_of, config, data_end)
    estimate = manifest.get("expected_performance", {}).get("figures", {})
    card = {"run": run.folder.name, "as_of": score.utc(run.as_of).isoformat(), "model_name": manifest["model_name"],
            "model_version": str(manifest["model_version"]), "customers": len(run.scores), "label": label,
            "window": {"start": window.start.isoformat(), "end": window.end.isoformat(),
                       "elapsed_days": window.elapsed_days, "share_elapsed": round(window.share_elapsed, 4)},
            "estimate": estimate}
    # The run's own data ended by its scoring date; an extract ending earlier than that is older.
    run_data_end = pd.Timestamp(manifest.get("data", {}).get("last_event", run.as_of)).tz_localize(None)
    if data_end < min(run_data_end, run.as_of):
        return unjudged(card, "unmeasurable", f"the transactions in {tables['transactions']} end {data_end}, before "
                        f"the data this run scored ({run_data_end}): that extract is older than the run; ingest a "
                        "later one to monitor it")
    if data_start >= run.as_of:
        return unjudged(card, "unmeasurable", f"the transactions start {data_start}, after this run's scoring date "
                        f"{run.as_of}: monitor needs the history up to the run too (a full extract, not only the new "
                        "rows)")
    if window.elapsed_days == 0:
        return unjudged(card, "waiting", f"no day of the label window (from {window.start}) is in the data yet")
    if config.label != "no_purchase" and tables.get("customers") is None:
        log.warning("monitor: the label %s reads cancellations, and %s has no customers table: run %s is judged "
                    "by purchases alone", config.label, Path(tables["transactions"]).parent, run.folder.name)
    churned, missing = outcomes_of(run, tables, monitor.labels_as_of_elapsed(config, window))
    if missing:
        log.warning("monitor: %d of the %d customers run %s scored are not active at %s in %s: the extract lacks "
                    "their history; they are left out of its figures", missing, len(run.scores), run.folder.name,
                    run.as_of, tables["transactions"])
    known = churned.notna().to_numpy()
    scores, labels = run.scores[known].reset_index(drop=True), churned[known].reset_index(drop=True)
    control_share = manifest.get("control", {}).get("share", 0.0)
    figures = monitor.scorecard(scores, labels, params.monitor, params.evaluate.top_fraction, control_share)
    status = "closed" if window.closed else "interim"
    registered = card["model_version"] not in UNREGISTERED
    holdout = (tracking.run_metrics(tracking.version_run_id(card["model_name"], card["model_version"]))
               .get(f"holdout/{params.monitor.metric}") if registered else None)
    model = monitor.model_figures({"figures": figures})[0]
    card.update({"status": status, "customers_not_in_data": missing, "figures": figures,
                 "estimate_vs_figures": monitor.estimate_beside_realised(estimate, model),
                 "recommendation": monitor.recommendation(model, holdout, params.monitor, window.closed)})
    if window.closed:
        card["campaign"] = control.campaign_effects(scores, labels, params.monitor.min_group_customers,
                                                    params.monitor.confidence)
    return card


def unjudged(card: dict, status: str, why: str) -> dict:
    """A scorecard without figures: the run is waiting for its window, or the data cannot judge it."""
    return {**card, "status": status, "recommendation": {"retrain": False}, "why": why}


def outcomes_of(run: ScoringRun, tables: dict, label_config: FeaturesConfig) -> tuple[pd.Series, int]:
    """Each scored customer's label after the run (aligned with its scores; missing where the
    data does not show the customer active at the run's date), and how many are missing."""
    from churnlens.engines.duckdb import compute_snapshots

    # The population and the label, by the rule every engine computes; one feature, as a snapshot has one.
    recency = [feature for feature in ft.definitions_for(label_config) if feature.name == "days_since_last_purchase"]
    labels, _ = compute_snapshots(tables, [run.as_of], label_config, with_labels=True, features=recency)
    churned = run.scores[["customer_id"]].merge(labels[["customer_id", "churned"]], on="customer_id", how="left")
    return churned["churned"].astype("boolean"), int(churned["churned"].isna().sum())
