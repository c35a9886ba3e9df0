"""Stage wiring: read inputs, call the pure functions, write outputs atomically, track in MLflow.

Each ``run_*`` function is what one ``churnlens <stage>`` command does; the CLI only parses
options. Paths come from ``dvc.yaml`` (as CLI options), knobs from ``params.yaml``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlens import features as ft
from churnlens import drift, io, score, segments, single_date, tracking
from churnlens.config import FeaturesConfig, Params

log = logging.getLogger(__name__)
# Every stage runs in its own process: scikit-learn, XGBoost and matplotlib are imported only by
# the stages that use them (together they cost ~8 s of start-up on a 2-core machine); so are
# ingest (pandera, which pulls in pyspark.pandas when pyspark is installed) and the simulator.
CANONICAL_TABLES = ("transactions", "interactions", "customers")


def run_simulate(params: Params, raw_dir: Path, truth_path: Path) -> dict[str, int]:
    from churnlens.simulate import simulate

    data = simulate(params.simulate)
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
    from churnlens.ingest import run_ingest

    return run_ingest(params.ingest, base, canonical_dir, quarantine_dir, report)


def canonical_tables(canonical_dir: Path) -> dict[str, str | None]:
    tables = {name: canonical_dir / f"{name}.parquet" for name in CANONICAL_TABLES}
    if not tables["transactions"].is_file():
        raise FileNotFoundError(f"{tables['transactions']}: no canonical transactions; run `churnlens ingest` first")
    return {name: str(path) if path.is_file() else None for name, path in tables.items()}


def run_features(params: Params, canonical_dir: Path | str, snapshots_path: Path | str, report_path: Path) -> dict:
    """Snapshots at every cutoff of the grid, on the configured engine, and their report."""
    import duckdb

    config = params.features
    if params.engine.name == "spark":
        return _run_features_spark(params, str(canonical_dir), str(snapshots_path), report_path)
    tables = canonical_tables(Path(canonical_dir))
    data_start, data_end = ft.data_span(tables)
    cutoffs, complete = _cutoffs(config, data_start, data_end)
    plan = ft.write_snapshots(tables, cutoffs, config, Path(snapshots_path), label_complete_until=data_end)
    with duckdb.connect() as con:
        per_cutoff = con.execute(
            f"SELECT cutoff, count(*), avg(CAST(churned AS DOUBLE)) FROM read_parquet('{snapshots_path}') "
            "GROUP BY cutoff ORDER BY cutoff").fetchall()
    return _features_report(data_start, data_end, cutoffs, complete, plan, per_cutoff, report_path)


def _require_pyspark() -> None:
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        raise ValueError("engine spark needs pyspark; install it with pip install 'churnlens[spark]' "
                         "or use --engine duckdb")


def _run_features_spark(params: Params, canonical_dir: str, snapshots_path: str, report_path: Path) -> dict:
    _require_pyspark()
    from pyspark.sql import functions as F

    from churnlens import spark
    session = spark.session(params.engine.spark_master, params.engine.spark_driver_memory)
    tables = spark.canonical_tables(session, canonical_dir)
    data_start, data_end = spark.data_span(tables)
    cutoffs, complete = _cutoffs(params.features, data_start, data_end)
    plan = spark.write_snapshots(session, tables, cutoffs, params.features, snapshots_path, data_end)
    per_cutoff = (session.read.parquet(snapshots_path).groupBy("cutoff")
                  .agg(F.count("*"), F.avg(F.col("churned").cast("double"))).orderBy("cutoff").collect())
    return _features_report(data_start, data_end, cutoffs, complete, plan, [tuple(r) for r in per_cutoff],
                            report_path)


def _cutoffs(config: FeaturesConfig, data_start: pd.Timestamp, data_end: pd.Timestamp) -> tuple[list[pd.Timestamp], dict]:
    cutoffs = ft.cutoff_grid(config, data_start, data_end)
    complete = ft.label_complete(cutoffs, config, data_end)
    for cutoff, ok in complete.items():
        if not ok:
            log.info("cutoff %s: label window ends after the data (%s); never used for training",
                     cutoff.date(), data_end)
    return cutoffs, complete


def _features_report(data_start: pd.Timestamp, data_end: pd.Timestamp, cutoffs: list[pd.Timestamp], complete: dict,
                     plan: ft.FeaturePlan, per_cutoff: list[tuple], report_path: Path) -> dict:
    report = {
        "data_start": data_start.isoformat(), "data_end": data_end.isoformat(),
        "rows": int(sum(n for _, n, _ in per_cutoff)), "cutoffs": len(cutoffs),
        "complete_cutoffs": int(sum(complete.values())),
        "features": plan.names, "categorical": plan.categorical, "families": plan.families(),
        "left_out": plan.left_out,
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
    def from_report(cls, report: dict) -> FeatureLists:
        return cls([n for n in report["features"] if n not in report["categorical"]], list(report["categorical"]))


def run_train(params: Params, snapshots_path: Path, features_report: Path, model_dir: Path, report_path: Path,
              project_root: Path) -> dict:
    from churnlens import model

    started = time.perf_counter()
    _require_inputs(snapshots_path, features_report)
    tracking.check_store()  # a broken store should fail now, not after the training
    snapshots = pd.read_parquet(snapshots_path)
    lists = FeatureLists.from_report(io.read_json(features_report))
    split = model.temporal_split(snapshots, params.features, params.train)
    train_rows, validation_rows = split.train_rows(snapshots), split.validation_rows(snapshots)
    _require_both_classes(train_rows[model.LABEL], "training cutoffs")
    _require_both_classes(validation_rows[model.LABEL], "validation cutoffs")
    # Training takes minutes on real data: say what is running.
    log.info("train: %d training rows, %d validation rows; tuning: %d trials", len(train_rows),
             len(validation_rows), params.train.tuning.n_trials)
    tuned = model.tune(train_rows, validation_rows, lists.numeric, lists.categorical, params.train)
    params = params.model_copy(update={"train": tuned.config})
    # The evaluated procedure (trained strictly before the holdout) fixes the number of trees and
    # gives the out-of-time scores the deployed refit is calibrated on.
    fitted = model.fit_with_early_stopping(train_rows, validation_rows, lists.numeric, lists.categorical, params.train)
    deployed = model.deployed_model(snapshots, split, fitted, lists.numeric, lists.categorical, params.train)
    deployed_rows = model.rows_at(snapshots, deployed.train_cutoffs)
    seconds = time.perf_counter() - started
    log.info("train: final model fitted in %.0f s (%d trees); backtest folds next", seconds, fitted.best_iteration)
    folds, skipped_folds = backtest(snapshots, lists, params)
    log.info("train: logging the run and the model to MLflow")

    lineage = {"deployed_train_cutoffs": [c.date().isoformat() for c in deployed.train_cutoffs],
               "deployed_calibration_cutoffs": [c.date().isoformat() for c in deployed.calibration_cutoffs]}
    metrics = {"best_iteration": fitted.best_iteration, "validation_logloss": fitted.validation_logloss,
               "train_rows": len(train_rows), "validation_rows": len(validation_rows),
               "deployed_train_rows": len(deployed_rows),
               "train_churn_rate": float(train_rows[model.LABEL].mean()), "train_seconds": seconds,
               "tuning_trials": len(tuned.trials), **folds}
    tags = {**tracking.git_commit(project_root), **tracking.dvc_lock_hashes(project_root, "train"),
            "data_fingerprint": io.file_fingerprint(snapshots_path), "holdout_cutoff": split.as_dict()["holdout"]}
    catalog = report_path.with_name("feature_catalog.md")
    with io.atomic_path(catalog) as temporary:
        used = [f for f in ft.feature_definitions(params.features.windows_days)
                if f.name in set(lists.numeric + lists.categorical)]
        temporary.write_text(ft.feature_catalog_markdown(used), encoding="utf-8")
    example = model.model_input(deployed_rows.head(50), lists.numeric, lists.categorical)
    latest = deployed_rows[deployed_rows["cutoff"] == deployed_rows["cutoff"].max()]
    metadata = {"numeric_features": lists.numeric, "categorical_features": lists.categorical,
                "holdout_cutoff": split.as_dict()["holdout"], **lineage,
                # The reference population for drift checks: the latest training snapshot, which is
                # closest in time to what will be scored (pooled cutoffs mix younger histories in).
                "drift_profile": drift.drift_profile(latest, lists.numeric, lists.categorical)}
    registered = tracking.log_training_run(
        experiment=params.train.experiment_name, model_name=params.train.registered_model_name,
        params={"features": params.features.model_dump(mode="json"), "train": params.train.model_dump(mode="json"),
                "split": split.as_dict(), **lineage},
        metrics=metrics, tags=tags, pipeline=deployed.pipeline, example=example, metadata=metadata,
        artifacts={"features": features_report, "features/catalog": catalog}, model_dir=model_dir,
        data=tracking.TrainingData(model.model_input(deployed_rows, lists.numeric, lists.categorical)
                                   .assign(**{model.LABEL: deployed_rows[model.LABEL].to_numpy()}),
                                   str(snapshots_path), tags["data_fingerprint"], model.LABEL,
                                   str(deployed_rows["cutoff"].min().date()),
                                   str(deployed_rows["cutoff"].max().date())),
    )
    report = {"run_id": registered.run_id, "model_name": registered.name, "model_version": registered.version,
              "split": split.as_dict(), **lineage, "metrics": metrics, "tuning_trials": tuned.trials,
              "skipped_backtest_folds": skipped_folds, "chosen_xgboost": params.train.xgboost.model_dump()}
    io.write_json(report, report_path)
    return report


def _require_inputs(*paths: Path) -> None:
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(2, "not found; run the earlier stages first (`dvc repro` or `churnlens features`)",
                                ", ".join(missing))


def _require_both_classes(labels: pd.Series, where: str) -> None:
    """A classifier needs churners and stayers; say so instead of scikit-learn's class error."""
    classes = sorted(labels.dropna().astype(int).unique().tolist())
    if len(classes) < 2:
        raise ValueError(
            f"train: every labelled customer in the {where} has churned={classes[0] if classes else 'nothing'} "
            "(e.g. every customer bought once, or the data is shorter than features.horizon_days); a churn model "
            "needs both outcomes. Use a longer history, a shorter features.horizon_days, or earlier cutoffs")


def backtest(snapshots: pd.DataFrame, lists: FeatureLists, params: Params) -> tuple[dict[str, float], list[dict]]:
    """Per-fold metrics of the expanding-window backtest, with their mean and spread, and the
    folds that could not be run, each with its reason."""
    from churnlens import evaluate as ev
    from churnlens import model

    per_fold: dict[str, list[float]] = {}
    metrics: dict[str, float] = {}
    folds, skipped = model.backtest_splits(snapshots, params.features, params.train)
    for number, split in enumerate(folds, start=1):
        fitted = model.fit_with_early_stopping(split.train_rows(snapshots), split.validation_rows(snapshots),
                                               lists.numeric, lists.categorical, params.train)
        test = split.holdout_rows(snapshots)
        probability = model.churn_probability(fitted.pipeline, test, lists.numeric, lists.categorical)
        result = ev.classification_metrics(test[model.LABEL].to_numpy(dtype=int), probability,
                                           params.evaluate.top_fraction)
        for name in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift"):
            metrics[f"fold{number}_{name}"] = result[name]
            per_fold.setdefault(name, []).append(result[name])
        log.info("backtest fold %d (test cutoff %s): ROC AUC %.3f", number, split.holdout.date(), result["roc_auc"])
    for fold in skipped:
        log.warning("backtest fold at %s skipped: %s", fold.test_cutoff.date(), fold.reason)
    for name, values in per_fold.items():
        metrics[f"backtest_{name}_mean"] = float(np.mean(values))
        metrics[f"backtest_{name}_std"] = float(np.std(values))
    metrics["backtest_folds"] = len(per_fold.get("roc_auc", []))
    metrics["backtest_folds_skipped"] = len(skipped)
    return metrics, [{"test_cutoff": f.test_cutoff.date().isoformat(), "reason": f.reason} for f in skipped]


def _score_holdout(pipeline: object, metadata: dict, holdout: pd.DataFrame) -> np.ndarray:
    from churnlens import model

    numeric, categorical = metadata["numeric_features"], metadata["categorical_features"]
    missing = [c for c in numeric + categorical if c not in holdout]
    if missing:
        raise KeyError(f"features {missing} are not in the snapshots")
    return model.churn_probability(pipeline, holdout, numeric, categorical)


def evaluated_procedure(snapshots: pd.DataFrame, trained: dict, metadata: dict, params: Params):
    """The training procedure as it was judged: fitted on the train report's split with the chosen
    settings, strictly before the holdout (same data, params and seed give the same model)."""
    from churnlens import model

    split = model.TemporalSplit.from_dict(trained["split"])
    config = params.train.model_copy(
        update={"xgboost": params.train.xgboost.model_copy(update=trained["chosen_xgboost"])})
    return model.fit_with_early_stopping(split.train_rows(snapshots), split.validation_rows(snapshots),
                                         metadata["numeric_features"], metadata["categorical_features"], config)


def run_evaluate(params: Params, snapshots_path: Path, model_dir: Path, train_report: Path, metrics_path: Path,
                 plots_dir: Path, headline_path: Path | None = None) -> dict:
    from churnlens import evaluate as ev
    from churnlens import model, plots

    config = params.evaluate
    trained = io.read_json(train_report)
    snapshots = pd.read_parquet(snapshots_path)
    split = model.TemporalSplit.from_dict(trained["split"])
    holdout_cutoff = split.holdout
    holdout = split.holdout_rows(snapshots)
    train_rows = model.rows_at(snapshots, sorted(set(split.train + split.validation)))
    y = holdout[model.LABEL].to_numpy(dtype=int)

    challenger = tracking.load_model(str(model_dir))
    # The deployed model was refit on the holdout's labels: its score there would be in-sample. The
    # honest figure is the procedure's, trained strictly before the holdout (deterministic refit).
    evaluated = evaluated_procedure(snapshots, trained, challenger.metadata, params)
    probability = _score_holdout(evaluated.pipeline, challenger.metadata, holdout)
    results = {"model": ev.classification_metrics(y, probability, config.top_fraction)}
    baseline_scores = {
        "recency_rule": (ev.recency_baseline(holdout), False),
        "rfm_logistic": (ev.rfm_logistic_baseline(train_rows, holdout, params.train.seed), True),
        "bgnbd_no_purchase": (ev.bgnbd_baseline(holdout, params.features.horizon_days), True),
    }
    for name, (values, is_probability) in baseline_scores.items():
        results[name] = ev.classification_metrics(y, values, config.top_fraction, is_probability)

    metric = config.promotion_metric
    key = metric.removeprefix("neg_")
    beats = {name: ev.promotion_score(results["model"], metric) > ev.promotion_score(results[name], metric)
             for name in baseline_scores if key in results[name]}
    comparison = {"beats_baselines": beats,
                  "improvement_over": {name: results["model"][key] - results[name][key]
                                       for name in baseline_scores if key in results[name]}}
    promotion = decide_promotion(params, trained, holdout, results["model"], beats)
    if trained["split"].get("overlapping_labels"):
        promotion["warning"] = ("short history: the training labels overlap the holdout's label window, so the "
                                "holdout figures are optimistic")

    curves = ev.curves(y, probability, config.calibration_bins)
    baseline_curves = {name: ev.curves(y, (values - values.min()) / (np.ptp(values) or 1.0), config.calibration_bins)
                       for name, (values, _) in baseline_scores.items()}
    value = holdout["spend_365d"].clip(lower=0).fillna(0).to_numpy(dtype=float)
    economics = {"contact_cost": config.contact_cost, "incentive_cost": config.incentive_cost,
                 "acceptance_rate": config.acceptance_rate}
    for name, scores, target in [("model", probability, curves),
                                 *[(b, v, baseline_curves[b]) for b, (v, _) in baseline_scores.items()]]:
        full = ev.profit_curve(y, scores, value, **economics)
        target["profit"] = ev.thin(full)
        results[name].update(ev.best_campaign(full))
    sample = holdout.sample(min(len(holdout), 5000), random_state=params.train.seed)
    importance = (model.contributions(challenger.pipeline, sample, challenger.metadata["numeric_features"],
                                      challenger.metadata["categorical_features"])
                  .abs().mean().sort_values(ascending=False).rename("mean_abs_shap").rename_axis("feature")
                  .reset_index())
    io.write_csv(importance, plots_dir / "importance.csv")
    plots.importance_plot(importance, plots_dir / "importance.png")
    # A rescaled rank is no probability: reliability data only for the baselines that are.
    probability_baselines = {b: c for b, c in baseline_curves.items() if baseline_scores[b][1]}
    for name in curves:
        io.write_csv(ev.curve_table(name, curves, probability_baselines if name == "calibration" else baseline_curves),
                     plots_dir / f"{name}.csv")
    plots.evaluation_plots(curves, baseline_curves, holdout_cutoff.date().isoformat(), plots_dir)

    per_segment = segment_metrics(holdout, y, probability, params)
    payload = {"holdout_cutoff": holdout_cutoff.date().isoformat(), **results, **comparison, "promotion": promotion,
               "per_segment": per_segment}
    io.write_json(payload, metrics_path)
    if headline_path is not None:
        io.write_json(ev.headline_metrics(results), headline_path)
    # Grouped for the UI's charts: the model on the holdout, each baseline on it, each segment.
    flat = {f"{'holdout' if name == 'model' else f'baseline/{name}'}/{k}": v
            for name, values in results.items() for k, v in values.items()}
    flat.update({f"segment/{segment}/{k}": v for segment, values in per_segment.items() for k, v in values.items()})
    tracking.log_evaluation(trained["run_id"], flat, plots_dir)
    tracking.record_promotion(trained["model_name"], trained["model_version"], promotion, results,
                              holdout_cutoff.date().isoformat())
    return payload


def segment_metrics(holdout: pd.DataFrame, y: np.ndarray, probability: np.ndarray, params: Params) -> dict:
    """Holdout metrics within each loyalty segment (AUCs only where both classes occur)."""
    from churnlens import evaluate as ev

    assigned = segments.assign_segments(holdout.reset_index(drop=True), params.score.segments)["segment"].to_numpy()
    result = {}
    for segment in sorted(set(assigned)):
        inside = assigned == segment
        result[segment] = {"n": int(inside.sum()), "churn_rate": float(y[inside].mean()),
                           "mean_churn_probability": float(probability[inside].mean())}
        if len(np.unique(y[inside])) == 2:
            result[segment].update(ev.classification_metrics(y[inside], probability[inside],
                                                             params.evaluate.top_fraction))
    return result


def decide_promotion(params: Params, trained: dict, holdout: pd.DataFrame, challenger_metrics: dict,
                     beats_baselines: dict[str, bool]) -> dict:
    """Champion/challenger on the same holdout; a model that loses to a baseline is never promoted."""
    from churnlens import evaluate as ev

    name, version = trained["model_name"], trained["model_version"]
    metric, config = params.evaluate.promotion_metric, params.evaluate
    challenger_score = ev.promotion_score(challenger_metrics, metric)
    decision = {"metric": metric, "challenger_version": version, "challenger_score": challenger_score}
    champion_version = tracking.alias_version(name, tracking.CHAMPION)
    decision["previous_champion_version"] = champion_version
    if not all(beats_baselines.values()):
        losers = [b for b, ok in beats_baselines.items() if not ok]
        return {**decision, "promoted": False, "reason": f"does not beat baseline(s) {losers} on {metric}"}
    if champion_version is None or champion_version == version:
        tracking.set_alias(name, tracking.CHAMPION, version)
        return {**decision, "promoted": True, "reason": "no champion yet" if champion_version is None else "re-run"}
    try:
        champion = tracking.load_model(f"models:/{name}@{tracking.CHAMPION}")
        champion_score = _honest_champion_score(champion, holdout, params)
    except (KeyError, ValueError) as exc:
        log.warning("champion version %s cannot score this holdout (%s); the challenger replaces it",
                    champion_version, exc)
        champion_score = float("-inf")
    decision["champion_score"] = champion_score
    if challenger_score > champion_score + config.min_improvement:
        tracking.set_alias(name, tracking.CHAMPION, version)
        return {**decision, "promoted": True, "reason": f"beats champion v{champion_version} on {metric}"}
    return {**decision, "promoted": False,
            "reason": f"champion v{champion_version} is as good or better on {metric}"}


def _honest_champion_score(champion: tracking.LoadedModel, holdout: pd.DataFrame, params: Params) -> float:
    """The champion's out-of-time figure: its score on this holdout when none of its training
    labels reaches past the holdout cutoff, else the honest holdout figure recorded for its own
    procedure (its score here would be in-sample)."""
    from churnlens import evaluate as ev
    from churnlens import model

    metric = params.evaluate.promotion_metric
    span = pd.Timedelta(days=params.features.lead_days + params.features.horizon_days)
    cutoff = pd.Timestamp(holdout["cutoff"].iloc[0])
    trained_on = [pd.Timestamp(c) for c in champion.metadata.get("deployed_train_cutoffs", [])]
    if all(c + span <= cutoff for c in trained_on):
        probability = _score_holdout(champion.pipeline, champion.metadata, holdout)
        y = holdout[model.LABEL].to_numpy(dtype=int)
        return ev.promotion_score(ev.classification_metrics(y, probability, params.evaluate.top_fraction), metric)
    recorded = tracking.run_metrics(champion.metadata.get("run_id"))
    key = f"holdout/{metric.removeprefix('neg_')}"
    if key not in recorded:
        raise ValueError(f"it was trained on this holdout's labels and its run has no {key}")
    return ev.promotion_score({metric.removeprefix("neg_"): recorded[key]}, metric)


def run_score(params: Params, canonical_dir: Path | str, model_uri: str, output: Path | str,
              report_path: Path | None = None, as_of: pd.Timestamp | None = None,
              csv_output: Path | str | None = None, project_root: Path | None = None,
              previous: pd.DataFrame | None = None, manifest_path: Path | None = None,
              truth: pd.DataFrame | None = None, show_progress: bool = False, headline_path: Path | None = None,
              outcomes: Path | str | None = None) -> dict:
    """The batch scoring job: features as of one instant, then scores, segments, reasons and the
    retention plan, written atomically (Parquet, and a rounded CSV beside it unless ``csv_output``
    says where), plus a segment report and a run manifest. ``outcomes`` (canonical transactions
    of a later extract) adds the segments' construct validity: how each segment behaved in the
    ``features.horizon_days`` after the as-of date."""
    outcome_sources = _outcomes(outcomes, canonical_dir)
    # The model first: a wrong alias fails in a second, not after the features were computed.
    resolved = tracking.resolve_model(model_uri, project_root)
    if params.engine.name == "spark":
        return _run_score_spark(params, str(canonical_dir), model_uri, str(output), report_path, as_of,
                                csv_output, project_root, previous, manifest_path, truth, headline_path,
                                outcome_sources)

    run = _ScoreRun()
    config = params.score
    canonical_dir, output = Path(canonical_dir), Path(output)
    tables = canonical_tables(canonical_dir)
    data_start, data_end = ft.data_span(tables)
    instant = _as_of(params, as_of, data_start, data_end)
    loaded = tracking.load_resolved(resolved)
    run.lap("load_model")
    log.info("score: features as of %s with %s v%s", instant.isoformat(), loaded.name, loaded.version)
    snapshot, _ = single_date.compute_snapshot(tables, instant, params.features)
    run.lap("features")
    log.info("score: %d active customers; probabilities, reasons and segments", len(snapshot))
    numeric, categorical = loaded.metadata.get("numeric_features", []), loaded.metadata.get("categorical_features", [])
    missing = [c for c in numeric + categorical if c not in snapshot]
    if missing:
        raise ValueError(f"score: model {loaded.name} v{loaded.version} needs features {missing} that the data "
                         "does not provide; retrain on this data or supply the missing tables")
    probability, reasons = _score_in_chunks(loaded, snapshot, numeric, categorical, params, show_progress)
    run.lap("predict_and_reasons")
    assigned = segments.assign_segments(snapshot, config.segments)
    scores = score.build_scores(snapshot, probability, assigned, config, instant, loaded.name, loaded.version,
                                reasons)
    run.lap("segments_and_plan")
    io.write_parquet(scores, output)
    csv_output = csv_output if csv_output is not None else _beside(str(output), "csv")
    io.write_csv(score.scores_for_csv(scores), csv_output)
    run.lap("write")
    model_info = {"model_uri": model_uri, "model_name": loaded.name, "model_version": loaded.version,
                  "model_run_id": loaded.metadata.get("run_id")}
    data_info = {"canonical_dir": str(canonical_dir), "fingerprint": io.file_fingerprint(canonical_dir),
                 "first_event": data_start.isoformat(), "last_event": data_end.isoformat()}
    return _report_score_run(params, run, scores, snapshot, loaded.metadata.get("drift_profile", {}), instant,
                             model_info, data_info, str(output), csv_output, report_path, manifest_path, previous,
                             truth, engine="duckdb", headline_path=headline_path, outcomes=outcome_sources)


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


class _ScoreRun:
    """Wall-clock time of each step of a scoring run, for the manifest."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 3)
        self._clock = now


def _run_score_spark(params: Params, canonical_dir: str, model_uri: str, output: str, report_path: Path | None,
                     as_of: pd.Timestamp | None, csv_output: Path | str | None, project_root: Path | None,
                     previous: pd.DataFrame | None, manifest_path: Path | None, truth: pd.DataFrame | None,
                     headline_path: Path | None, outcomes: tuple[str, str] | None = None) -> dict:
    """The same job on Spark; the report and manifest read the written scores back (a few columns)."""
    import hashlib

    _require_pyspark()
    from churnlens import spark
    run = _ScoreRun()
    session = spark.session(params.engine.spark_master, params.engine.spark_driver_memory)
    tables = spark.canonical_tables(session, canonical_dir)
    data_start, data_end = spark.data_span(tables)
    instant = _as_of(params, as_of, data_start, data_end)
    scores, snapshot, loaded = spark.score(session, tables, instant, params, model_uri, project_root)
    spark.write_parquet(scores, output)
    if csv_output is not None:
        scores.coalesce(1).write.mode("overwrite").option("header", True).csv(str(csv_output))
    run.lap("features_score_and_write")
    written = session.read.parquet(output)
    needed = ["customer_id", "segment", "low_confidence", "churn_probability", "customer_value", "in_campaign",
              "action_cost",
              "priority", "top_reasons"]
    local_scores = written.select(*needed).toPandas()
    total = len(local_scores)
    sample = snapshot.sample(fraction=min(1.0, 100_000 / max(total, 1)), seed=0).toPandas()  # drift on a sample
    spark.release()
    run.lap("read_back")
    files = sorted(tables["transactions"].inputFiles())
    model_info = {"model_uri": model_uri, "model_name": loaded.name, "model_version": loaded.version,
                  "model_run_id": loaded.metadata.get("run_id")}
    data_info = {"canonical_dir": canonical_dir, "first_event": data_start.isoformat(),
                 "last_event": data_end.isoformat(),
                 "fingerprint": "files:" + hashlib.sha256("\n".join(files).encode()).hexdigest()}
    return _report_score_run(params, run, local_scores, sample, loaded.metadata.get("drift_profile", {}), instant,
                             model_info, data_info, output, csv_output, report_path, manifest_path, previous, truth,
                             engine="spark", headline_path=headline_path, outcomes=outcomes)


def _report_score_run(params: Params, run: _ScoreRun, scores: pd.DataFrame, snapshot: pd.DataFrame, profile: dict,
                      instant: pd.Timestamp, model_info: dict, data_info: dict, output: str,
                      csv_output: Path | str | None, report_path: Path | None, manifest_path: Path | None,
                      previous: pd.DataFrame | None, truth: pd.DataFrame | None, engine: str,
                      headline_path: Path | None = None,
                      outcomes: tuple[str, str] | None = None) -> dict:
    """Segment report, drift check and run manifest of a scoring run, whichever engine scored.
    The manifest goes to ``manifest_path``, else beside a local output, else the working folder."""
    from churnlens import plots

    config = params.score
    report = score.segment_report(scores, previous)
    report.update({"as_of": score.utc(instant).isoformat(), "model_name": model_info["model_name"],
                   "model_version": model_info["model_version"]})
    if truth is not None:
        report["ground_truth"] = segments.agreement_with_truth(scores[["customer_id", "segment"]], truth)
    unknown = segments.unknown_contract_types(snapshot, config.segments)
    if unknown:
        report["unknown_contract_types"] = unknown
        log.warning("segments: contract types %s are not in score.segments.contract_lock_in; their contract "
                    "component is left out. Map them there", sorted(unknown))
    if outcomes is not None:
        report["construct_validity"] = construct_validity_report(scores, *outcomes, instant,
                                                                 params.features.horizon_days)
    stability = drift.population_stability(profile, snapshot)
    drifted = {name: value for name, value in stability.items() if value > config.drift_warning_psi}
    for name, value in drifted.items():
        log.warning("drift: %s has PSI %.2f against the training population (threshold %.2f)", name, value,
                    config.drift_warning_psi)
    if not stability:
        log.warning("drift: model %s v%s carries no training profile; drift not checked", model_info["model_name"],
                    model_info["model_version"])
    report_path = report_path or _beside(output, "segment_report.json")
    io.write_json(report, report_path)
    plots.segment_plot(report, report_path.with_suffix(".png"))
    run.lap("report")
    manifest = {
        "as_of": score.utc(instant).isoformat(), "engine": engine, **model_info, "data": data_info,
        "rows": {"customers_scored": len(scores), "in_campaign": report["campaign_customers"],
                 "with_reasons": int((scores["top_reasons"].fillna("") != "").sum()),
                 "per_segment": {s: v["customers"] for s, v in report["segments"].items()}},
        "segment_mix": {s: v["share"] for s, v in report["segments"].items()},
        "reasons": config.reasons,
        "drift": {"threshold": config.drift_warning_psi, "psi": stability, "warnings": sorted(drifted),
                  "not_compared": {name: why for name, why in drift.NOT_COMPARED.items() if name in profile},
                  "rows_compared": len(snapshot)},
        "outputs": {"scores": output, "csv": str(csv_output) if csv_output else None,
                    "segment_report": str(report_path)},
        "timings_seconds": {**run.timings, "total": round(sum(run.timings.values()), 3)},
        "churnlens_version": _version(),
    }
    manifest_path = manifest_path or _beside(output, "manifest.json")
    io.write_json(manifest, manifest_path)
    if headline_path is not None:
        io.write_json(score.segment_headline(report), headline_path)
    log.info("scored %d customers in %.1f s", len(scores), manifest["timings_seconds"]["total"])
    return {**report, "outputs": {**manifest["outputs"], "manifest": str(manifest_path)}}


def _beside(output: str, suffix: str) -> Path:
    """Where a scoring run's side files go unless told: next to a local output (so a run outside
    DVC never writes into the pipeline's tracked reports), else the working folder."""
    if "://" in output:
        return Path(f"scores.{suffix}")
    return Path(output).with_name(f"{Path(output).stem}.{suffix}")


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
    table = validity.construct_validity(scores[["customer_id", "segment"]], lines, as_of, horizon_days)
    log.info("construct validity, %d days after %s:\n%s", horizon_days, as_of.date(), validity.markdown(table))
    return {"horizon_days": horizon_days, "outcomes_end": lines["ts"].max().isoformat(),
            "per_segment": table.set_index("segment").to_dict(orient="index"),
            "orderings_hold": validity.orderings(table), "markdown": validity.markdown(table)}


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("churnlens")


def _score_in_chunks(loaded: tracking.LoadedModel, snapshot: pd.DataFrame, numeric: list[str],
                     categorical: list[str], params: Params, show_progress: bool) -> tuple[np.ndarray, pd.Series | None]:
    """Probabilities and reasons for everyone, ``chunk_rows`` at a time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from churnlens import model

    config = params.score
    probability = np.empty(len(snapshot))
    reasons: list[pd.Series] = []
    # Every row is scored on its own, so smaller steps than chunk_rows give the same bytes; about
    # twenty of them let the bar move on a batch that fits one chunk.
    step = min(config.chunk_rows, max(1_000, -(-len(snapshot) // 20)))
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("scoring", total=len(snapshot))
        for start in range(0, len(snapshot), step):
            chunk = snapshot.iloc[start:start + step]
            chunk_probability = model.churn_probability(loaded.pipeline, chunk, numeric, categorical)
            probability[start:start + len(chunk)] = chunk_probability
            reasons.append(score.customer_reasons(loaded.pipeline, chunk, chunk_probability, numeric, categorical,
                                                  config, params.features.windows_days))
            progress.advance(task, len(chunk))
    return probability, (pd.concat(reasons) if reasons else None)
