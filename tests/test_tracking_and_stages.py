"""The stages in-process on a small simulated data set, against a real MLflow sqlite store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from churnlens import io, tracking
from churnlens.portable import PREDICTION_BITS
from churnlens.config import parse_params
from churnlens.score import ScoreJob
from churnlens.stages import run_evaluate, run_score, run_train
from churnlens.tracking import ModelNotFoundError, load_model
from conftest import PROJECT_ROOT, active_customers, point_mlflow_at, run_small_pipeline, small_params_dict


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory):
    """One real pipeline run shared by this module's tests (they only read it, or add versions)."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as patch:
        point_mlflow_at(patch, f"sqlite:///{tmp_path / 'mlflow.db'}")
        patch.chdir(tmp_path)
        yield run_small_pipeline(tmp_path)


def _logged_model(run):
    """The one model a training run logged (MLflow 3's LoggedModel), with its creation time."""
    import mlflow

    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                            filter_string=f"source_run_id = '{run.info.run_id}'")
    return logged


def test_training_run_is_complete_in_mlflow(pipeline_run) -> None:
    client = MlflowClient()
    trained = pipeline_run["trained"]
    run = client.get_run(trained["run_id"])
    # The logged values are the ones the tuning chose (params.yaml's are its trial 0).
    assert run.data.params["train.xgboost.max_depth"] == str(trained["chosen_xgboost"]["max_depth"])
    assert "validation/logloss" in run.data.metrics and "holdout/roc_auc" in run.data.metrics
    assert "holdout_baseline/rfm_logistic/roc_auc" in run.data.metrics
    assert "holdout_baseline/bgnbd_no_purchase/roc_auc" in run.data.metrics
    per_segment = pipeline_run["evaluated"]["per_segment"]
    assert {"brand_advocate", "brand_user", "brand_comparer"} <= set(per_segment)
    assert sum(v["n"] for v in per_segment.values()) == pipeline_run["evaluated"]["model"]["n"]
    assert "segment/brand_comparer/roc_auc" in run.data.metrics
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    assert run.data.tags["git_commit"] == head.strip() and len(head.strip()) == 40  # the tests run in a clone
    assert len(run.data.tags["data_fingerprint"]) == 64
    artifacts = {a.path for a in client.list_artifacts(trained["run_id"], "evaluation")}
    assert {"evaluation/roc.png", "evaluation/calibration.png", "evaluation/gains.csv", "evaluation/profit.png",
            "evaluation/importance.png", "evaluation/importance.csv"} <= artifacts
    assert "holdout/best_share_targeted" in run.data.metrics
    from churnlens.model import backtest_splits

    snapshots = pd.read_parquet(pipeline_run["root"] / "data/features/snapshots.parquet")
    runnable, skipped = backtest_splits(snapshots, pipeline_run["params"].features, pipeline_run["params"].train)
    folds = len(runnable)
    assert folds >= 2 and run.data.metrics["rolling_backtest/folds"] == folds
    assert run.data.metrics["rolling_backtest/folds_skipped"] == len(skipped) == len(trained["skipped_backtest_folds"])
    # Each metric's folds are one series, fold k at step k: one chart, not one per fold.
    history = client.get_metric_history(trained["run_id"], "rolling_backtest/fold_roc_auc")
    assert sorted(point.step for point in history) == list(range(1, folds + 1))
    assert not any("/fold1/" in key or key.startswith("rolling_backtest/fold1") for key in run.data.metrics)
    assert 0 <= run.data.metrics["rolling_backtest/roc_auc_std"] < 0.2
    # The run spans the training (tuning, fits, backtest), not the logging after it: it ends before
    # its model was logged, and lasts at least the final fit.
    assert run.info.end_time < _logged_model(run).creation_timestamp
    assert run.info.end_time - run.info.start_time >= 1000 * run.data.metrics["train/seconds"]
    # Made by the client for its start time, it still carries the context start_run would add.
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(run.data.tags)
    assert run.data.metrics["holdout/max_expected_profit"] >= 0
    assert str(client.get_model_version_by_alias("churnlens", "challenger").version) == trained["model_version"]
    assert str(client.get_model_version_by_alias("churnlens", "champion").version) == trained["model_version"]
    assert pipeline_run["evaluated"]["promotion"]["reason"] == "no champion yet"
    evaluated = pipeline_run["evaluated"]
    assert set(evaluated["beats_baselines"]) == {"recency_rule", "rfm_logistic", "bgnbd_no_purchase"}
    assert all(evaluated["beats_baselines"].values())  # the model beats every baseline on simulated data
    catalog = {a.path for a in client.list_artifacts(trained["run_id"], "features/catalog")}
    assert catalog == {"features/catalog/feature_catalog.md"}
    # The run says what ran, and the training data fills the Datasets panel.
    assert run.info.run_name.startswith("train ") and f"depth={pipeline_run['params'].train.xgboost.max_depth}" \
        in run.info.run_name
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.source and "snapshots.parquet" in logged.dataset.source
    # The deployed model is the refit on every labelled cutoff: those are the rows it learnt from.
    assert {t.key: t.value for t in logged.tags}["rows"] == str(trained["metrics"]["deployed_train_rows"])
    # The registry states the promotion decision and its figures on the model version.
    version = client.get_model_version("churnlens", trained["model_version"])
    assert version.description.startswith("Promoted to champion: no champion yet")
    assert f"{evaluated['model']['roc_auc']:.4f}" in version.description
    assert f"{evaluated['recency_rule']['roc_auc']:.4f}" in version.description
    assert version.tags["promotion.decision"] == "promoted"
    assert version.tags["baseline.rfm_logistic.roc_auc"] == f"{evaluated['rfm_logistic']['roc_auc']:.4f}"


@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer")
def test_training_data_schema_is_what_mlflow_itself_infers() -> None:
    """Given to MLflow so that it does not test every value (10 s on the default data), the schema
    must still be MLflow's: types per column, and required only where no value is missing."""
    import mlflow.data

    rng = np.random.default_rng(3)
    n = 2_000
    frame = pd.DataFrame({
        # Missing values only deep inside a column, where no sample of the first rows would see them.
        "orders": rng.integers(0, 9, n).astype(float), "gap": np.where(np.arange(n) == n // 2, np.nan, rng.random(n)),
        "late_gap": np.r_[np.full(n - 1, np.nan), 1.0], "count": rng.integers(0, 5, n),
        "segment": pd.array(np.where(np.arange(n) == n // 3, None, "a"), dtype="string"),
        "channel": pd.array(["web"] * n, dtype="string"), "churned": rng.random(n) < 0.4,
        "cutoff": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 300, n), unit="D"),
    })
    expected = mlflow.data.from_pandas(frame).schema
    assert tracking.dataset_schema(frame) == expected
    assert [spec.required for spec in expected.inputs] == [True, False, False, True, False, True, True, True]


def test_pyfunc_returns_probabilities_and_local_copy_matches(pipeline_run) -> None:
    import mlflow.pyfunc

    # Isotonic calibration maps scores to a few dozen levels: enough rows to see more than ten.
    snapshots = pd.read_parquet(pipeline_run["root"] / "data/features/snapshots.parquet").head(2000)
    registered = load_model("models:/churnlens@champion")
    local = load_model(str(pipeline_run["root"] / "models/churn_model"))
    columns = registered.contract.categorical_features + registered.contract.numeric_features
    from churnlens.model import model_input

    frame = model_input(snapshots, registered.contract.numeric_features, registered.contract.categorical_features)
    pyfunc = np.asarray(mlflow.pyfunc.load_model("models:/churnlens@champion").predict(frame[columns]))
    assert pyfunc.shape == (2000, 2) and np.allclose(pyfunc.sum(axis=1), 1.0)
    assert ((pyfunc >= 0) & (pyfunc <= 1)).all() and len(np.unique(pyfunc[:, 1])) > 10
    assert np.allclose(local.pipeline.predict_proba(frame), pyfunc)
    assert local.version == registered.version


def test_segments_only_features_are_published_but_never_model_inputs(pipeline_run) -> None:
    from churnlens.features import feature_definitions

    report = io.read_json(pipeline_run["root"] / "reports/features.json")
    segments_only = {f.name for f in feature_definitions(tuple(pipeline_run["params"].features.windows_days))
                     if not f.for_model}
    assert segments_only and segments_only <= set(report["features"])
    snapshots = pd.read_parquet(pipeline_run["root"] / "data/features/snapshots.parquet")
    assert all(snapshots[name].notna().any() for name in segments_only)  # computed for the segments
    contract = load_model("models:/churnlens@champion").contract
    inputs = set(contract.numeric_features + contract.categorical_features)
    assert not inputs & segments_only
    # Every other published feature is an input, or left out of the model with the reason.
    assert inputs == set(report["features"]) - segments_only - set(report["left_out_of_model"])
    assert all(report["left_out_of_model"].values())


def test_score_writes_one_row_per_active_customer(pipeline_run) -> None:
    root, params = pipeline_run["root"], pipeline_run["params"]
    output = root / "data/scores/scores.parquet"
    report = run_score(ScoreJob(params, root / "data/canonical", "models:/churnlens@champion", output,
                       root / "reports/segment_report.json"))
    scores = pd.read_parquet(output)
    assert scores["customer_id"].is_unique and len(scores) == report["customers"] > 50
    assert ((scores["churn_probability"] > 0) & (scores["churn_probability"] < 1)).all()
    assert str(scores["as_of"].dt.tz) == "UTC"
    assert set(scores["segment"]) <= {"brand_advocate", "brand_user", "brand_comparer", "insufficient_history"}
    assert set(scores["risk_tier"]) <= {"low", "medium", "high"}
    at_risk = scores["risk_tier"] != "low"
    assert at_risk.any() and (~at_risk).any()
    assert (scores["top_reasons"].str.len() > 0).all()  # every tier gets its reasons
    assert (scores["model_version"] == pipeline_run["trained"]["model_version"]).all()
    # The CSV is always written beside the Parquet: same rows, rounded for people.
    table = pd.read_csv(output.with_suffix(".csv"), dtype={"customer_id": "string"})
    assert list(table.columns) == list(scores.columns) and len(table) == len(scores)
    assert (table["churn_probability"].round(4) == table["churn_probability"]).all()
    assert np.allclose(table["churn_probability"], scores["churn_probability"], atol=5e-5)
    # Active = bought within the lookback before the as-of date, not cancelled by it, like the
    # training population: exactly those customers are scored.
    as_of = scores["as_of"].iloc[0].tz_convert("UTC").tz_localize(None)
    assert set(scores["customer_id"]) == active_customers(root / "data/canonical", as_of,
                                                          params.features.active_lookback_days)
    again = root / "again.parquet"
    rerun = run_score(ScoreJob(params, root / "data/canonical", "models:/churnlens@champion", again, root / "r2.json",
                      previous=scores[["customer_id", "segment"]]))
    pd.testing.assert_frame_equal(scores, pd.read_parquet(again))  # identical reruns
    assert rerun["stability"] == {"customers_in_both_runs": len(scores), "changed_segment": 0}


def test_score_manifest_records_the_run(pipeline_run) -> None:
    root, params = pipeline_run["root"], pipeline_run["params"]
    output = root / "manifested/scores.parquet"
    report = run_score(ScoreJob(params, root / "data/canonical", "models:/churnlens@champion", output, root / "m.json"))
    manifest = io.read_json(output.with_name("scores.manifest.json"))
    assert manifest["model_version"] == pipeline_run["trained"]["model_version"] == report["model_version"]
    assert "model_run_id" not in manifest  # the registry knows the version's run; ids differ per store
    assert MlflowClient().get_model_version("churnlens", manifest["model_version"]).run_id == \
        pipeline_run["trained"]["run_id"]
    assert manifest["data"]["fingerprint"] == io.file_fingerprint(root / "data/canonical")
    assert manifest["rows"]["customers_scored"] == len(pd.read_parquet(output))
    assert sum(manifest["rows"]["per_segment"].values()) == manifest["rows"]["customers_scored"]
    assert sum(manifest["segment_mix"].values()) == pytest.approx(1.0)
    assert "timings_seconds" not in manifest
    timings = io.read_json(output.with_name("scores.manifest_timings.json"))
    assert {"features", "predict", "reasons", "write", "total"} <= set(timings)
    assert timings["total"] >= timings["features"] > 0
    model_features = pipeline_run["trained"]["metrics"]  # the model was trained on these rows
    assert model_features["train_rows"] > 0
    numeric = load_model("models:/churnlens@champion").contract.numeric_features
    compared, left_out = set(manifest["drift"]["psi"]), set(manifest["drift"]["not_compared"])
    assert compared | left_out >= set(numeric) and not compared & left_out
    assert "days_since_first_purchase" in left_out  # moves with the calendar: no alarm on ageing
    assert all(value >= 0 for value in manifest["drift"]["psi"].values())
    assert manifest["drift"]["warnings"] == sorted(name for name, value in manifest["drift"]["psi"].items()
                                                   if value > params.score.drift_warning_psi)


def test_segments_match_simulated_personas(pipeline_run) -> None:
    from sklearn.metrics import f1_score

    root = pipeline_run["root"]
    truth = pd.read_parquet(root / "data/truth/ground_truth.parquet")
    report = run_score(ScoreJob(pipeline_run["params"], root / "data/canonical", "models:/churnlens@champion",
                       root / "s.parquet", root / "r.json", truth=truth))
    joined = pd.read_parquet(root / "s.parquet").merge(truth, on="customer_id")
    decided = joined[joined["segment"] != "insufficient_history"]
    agreement = report["ground_truth"]
    assert agreement["macro_f1"] == pytest.approx(f1_score(decided["persona"], decided["segment"], average="macro"))
    assert agreement["macro_f1"] >= 0.85
    assert sum(sum(row.values()) for row in agreement["confusion_matrix"].values()) == len(joined)
    assert io.read_json(root / "r.json")["ground_truth"] == agreement


def test_missing_alias_and_foreign_uris_are_clear_errors(pipeline_run) -> None:
    with pytest.raises(ModelNotFoundError, match=r"models:/churnlens@gold.*not found in the registry.*"
                       r"models:/churnlens@challenger, models:/churnlens@champion \(versions 1"):
        load_model("models:/churnlens@gold")
    with pytest.raises(ModelNotFoundError, match=r"only models:/ URIs of this project's registry or local paths"):
        load_model("https://example.com/model")
    with pytest.raises(ModelNotFoundError, match=r"holds no MLmodel file"):
        load_model(str(pipeline_run["root"] / "nowhere"))
    # The model is checked before any data is read: the canonical folder here does not even exist.
    with pytest.raises(ModelNotFoundError, match=r"models:/churnlens@gold"):
        run_score(ScoreJob(pipeline_run["params"], pipeline_run["root"] / "nowhere", "models:/churnlens@gold",
                  pipeline_run["root"] / "never.parquet"))


def test_as_of_outside_the_data_is_a_clear_error(pipeline_run) -> None:
    root = pipeline_run["root"]
    with pytest.raises(ValueError, match=r"as-of 2030-01-01 is outside the data"):
        run_score(ScoreJob(pipeline_run["params"], root / "data/canonical", "models:/churnlens@champion", root / "x.parquet",
                  root / "x.json", as_of=pd.Timestamp("2030-01-01")))


def test_worse_challenger_is_not_promoted(pipeline_run) -> None:
    """End to end: the registry's aliases, tags and description after a rejected challenger (the
    decision against a better champion itself is tested in test_evaluate)."""
    root = pipeline_run["root"]
    raw = small_params_dict(train={"xgboost": {"n_estimators": 1, "max_depth": 1, "early_stopping_rounds": 1,
                                               "learning_rate": 0.01}})
    weak = parse_params(raw)
    trained = run_train(weak, root / "data/features/snapshots.parquet", root / "reports/features.json",
                        root / "models/weak", root / "reports/train_weak.json", PROJECT_ROOT)
    result = run_evaluate(weak, root / "data/features/snapshots.parquet", root / "models/weak",
                          root / "reports/train_weak.json", root / "reports/metrics_weak.json", root / "reports/weak")
    assert trained["model_version"] == "2"
    assert result["promotion"]["promoted"] is False
    weak_version = MlflowClient().get_model_version("churnlens", "2")
    assert weak_version.description.startswith("Not promoted") and weak_version.tags["promotion.decision"] == \
        "not promoted"
    assert tracking.alias_version("churnlens", "champion") == pipeline_run["trained"]["model_version"]
    assert tracking.alias_version("churnlens", "challenger") == "2"


def test_holdout_figures_are_the_procedures_trained_strictly_before_the_holdout(pipeline_run, tmp_path) -> None:
    """evaluate judges the scores train wrote for the holdout: those of the procedure fitted on the
    train report's split (before the holdout), not the deployed refit, which saw the holdout."""
    from sklearn.metrics import roc_auc_score

    from churnlens import model
    from churnlens.stages import holdout_scores_path, procedure_holdout_scores

    root, params, trained = pipeline_run["root"], pipeline_run["params"], pipeline_run["trained"]
    snapshots = pd.read_parquet(root / "data/features/snapshots.parquet")
    split = model.TemporalSplit.from_dict(trained["split"])
    holdout = split.holdout_rows(snapshots)
    written = procedure_holdout_scores(root / "reports/train.json", trained, holdout)
    deployed = load_model(str(root / "models/churn_model"))
    numeric, categorical = deployed.contract.numeric_features, deployed.contract.categorical_features
    layer = trained["holdout_probability_layer"]  # chosen on the backtest folds alone
    chosen = params.train.model_copy(
        update={"xgboost": params.train.xgboost.model_copy(update=trained["chosen_xgboost"]),
                "calibration": layer["calibration"]})
    validation = split.validation_rows(snapshots)
    procedure = model.with_probability_layer(
        model.fit_with_early_stopping(split.train_rows(snapshots), validation, numeric, categorical, chosen).pipeline,
        layer["btyd_weight"], validation, numeric, categorical, chosen.probability_floor)
    np.testing.assert_array_equal(written, model.churn_probability(procedure, holdout, numeric, categorical))
    assert not np.array_equal(written, model.churn_probability(deployed.pipeline, holdout, numeric, categorical))
    y = holdout[model.LABEL].to_numpy(dtype=int)
    assert pipeline_run["evaluated"]["model"]["roc_auc"] == pytest.approx(roc_auc_score(y, written))
    # Scores of another run, even for the very same rows, are refused, not joined to these snapshots.
    other = tmp_path / "train.json"
    shutil.copyfile(holdout_scores_path(root / "reports/train.json"), holdout_scores_path(other))
    np.testing.assert_array_equal(procedure_holdout_scores(other, trained, holdout), written)
    scores = pd.read_parquet(holdout_scores_path(other))
    io.write_parquet(scores.assign(churn_probability=scores["churn_probability"].to_numpy()[::-1]),
                     holdout_scores_path(other))
    with pytest.raises(ValueError, match="another train run"):
        procedure_holdout_scores(other, trained, holdout)


def test_a_killed_writer_leaves_the_previous_output(tmp_path: Path) -> None:
    """SIGKILL a real process in the middle of an atomic write: the old file survives intact."""
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "scores.parquet"
    io.write_parquet(pd.DataFrame({"a": [1]}), target)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
import pandas as pd
from churnlens import io
with io.atomic_path({str(target)!r}) as temporary:
    pd.DataFrame({{"a": range(100_000)}}).to_parquet(temporary)
    time.sleep(60)  # killed here: written, not yet renamed
"""])
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and writer.poll() is None, "the writer never started writing"
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert pd.read_parquet(target)["a"].tolist() == [1]


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    io.write_parquet(pd.DataFrame({"a": [1]}), target)
    with pytest.raises(RuntimeError), io.atomic_path(target) as temporary:
        temporary.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert pd.read_parquet(target)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_every_column_of_the_scores_file_is_documented(pipeline_run) -> None:
    from churnlens.score import scores_dictionary_markdown

    committed = (PROJECT_ROOT / "docs" / "scores.md").read_text(encoding="utf-8")
    assert committed == scores_dictionary_markdown(), "run `churnlens catalog` to regenerate docs/scores.md"
    root = pipeline_run["root"]
    run_score(ScoreJob(pipeline_run["params"], root / "data/canonical", "models:/churnlens@champion",
              root / "documented/scores.parquet"))
    for written in (pd.read_parquet(root / "documented/scores.parquet"), pd.read_csv(root / "documented/scores.csv")):
        undocumented = [c for c in written.columns if f"| `{c}` |" not in committed]
        assert not undocumented, f"columns missing from docs/scores.md: {undocumented}"


def test_scoring_in_chunks_gives_the_scores_of_one_pass(pipeline_run) -> None:
    from churnlens import model, score
    from churnlens.engines.duckdb import probabilities_in_chunks, reasons_in_chunks

    params = pipeline_run["params"]
    loaded = load_model("models:/churnlens@champion")
    rows = pd.read_parquet(pipeline_run["root"] / "data/features/snapshots.parquet").head(2_500)
    assert len(rows) == 2_500  # chunks of 1,000 rows: three of them, the last one short
    probability = probabilities_in_chunks(loaded, rows, 1_000)
    numeric, categorical = loaded.contract.numeric_features, loaded.contract.categorical_features
    whole = model.churn_probability(loaded.pipeline, rows, numeric, categorical)
    assert np.array_equal(probability, whole)
    # The default explains this run's campaign: a mask standing for it puts rows of each method in every chunk.
    in_campaign = whole >= np.quantile(whole, 0.7)
    methods = score.reason_methods(whole, params.score, in_campaign)
    assert {"exact", "approximate"} <= set(methods[:1_000]) and {"exact", "approximate"} <= set(methods[2_000:])
    reasons = reasons_in_chunks(loaded, rows, methods, params, show_progress=False)
    expected = score.customer_reasons_by_method(loaded.pipeline, rows, methods, numeric, categorical,
                                                params.features.windows_days)
    pd.testing.assert_series_equal(reasons, expected)


def test_campaign_reasons_explain_the_campaign_exactly_and_leave_everything_else_alone(pipeline_run) -> None:
    root, params = pipeline_run["root"], pipeline_run["params"]

    def scored(name: str, **reasons: str) -> pd.DataFrame:
        settings = params.model_copy(update={"score": params.score.model_copy(update={"campaign_budget": 300.0,
                                                                                       **reasons})})
        run_score(ScoreJob(settings, root / "data/canonical", "models:/churnlens@champion",
                           root / f"reasons/{name}.parquet"))
        return pd.read_parquet(root / f"reasons/{name}.parquet")

    campaign = scored("campaign", reasons_for="campaign", reasons="exact", other_reasons="none")
    exact = scored("exact", reasons_for="at_risk", reasons="exact", other_reasons="exact")
    at_risk = scored("at_risk", reasons_for="at_risk")
    chosen = campaign["in_campaign"].to_numpy()
    assert 0 < chosen.sum() < (campaign["risk_tier"] != "low").sum()  # a campaign smaller than the at-risk tiers
    # Only the reasons differ: the campaign's are the exact ones, everyone else's are left empty.
    pd.testing.assert_frame_equal(campaign.drop(columns="top_reasons"), at_risk.drop(columns="top_reasons"))
    assert campaign["top_reasons"][chosen].tolist() == exact["top_reasons"][chosen].tolist()
    assert (campaign["top_reasons"][~chosen] == "").all()
    assert (exact["top_reasons"] != "").all()


def test_cli_reports_user_errors_with_exit_code_1_and_no_traceback(pipeline_run) -> None:
    from typer.testing import CliRunner

    from churnlens.cli import app

    root, runner = pipeline_run["root"], CliRunner()
    outside = runner.invoke(app, ["score", "--as-of", "2030-01-01", "--output", str(root / "late.parquet"),
                                  "--model", "models:/churnlens@champion"])
    assert outside.exit_code == 1 and "outside the data" in outside.output, outside.output
    assert not (root / "late.parquet").exists()
    missing = runner.invoke(app, ["evaluate", "--train-report", str(root / "reports/none.json")])
    assert missing.exit_code == 1 and "none.json" in missing.output, missing.output
    unknown = runner.invoke(app, ["features", "--engine", "flink"])
    assert unknown.exit_code != 0 and "flink" in unknown.output, unknown.output
    for result in (outside, missing, unknown):
        assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError | KeyError)


def test_cli_scores_as_of_a_date_and_writes_the_catalog(pipeline_run) -> None:
    from typer.testing import CliRunner

    from churnlens.cli import app
    from churnlens.features import definitions_for, feature_catalog_markdown

    root, runner = pipeline_run["root"], CliRunner()
    snapshots = pd.read_parquet(root / "data/features/snapshots.parquet")
    day = (snapshots["cutoff"].max() - pd.Timedelta(days=30)).date().isoformat()
    result = runner.invoke(app, ["score", "--as-of", day, "--output", str(root / "dated.parquet"),
                                 "--model", "models:/churnlens@champion"])
    assert result.exit_code == 0, result.output
    dated = pd.read_parquet(root / "dated.parquet")
    assert (dated["as_of"] == pd.Timestamp(day, tz="UTC")).all() and len(dated) > 0
    catalog = runner.invoke(app, ["catalog", "--output", str(root / "features.md"), "--scores", str(root / "s.md")])
    assert catalog.exit_code == 0, catalog.output
    assert (root / "features.md").read_text() == feature_catalog_markdown(definitions_for(pipeline_run["params"].features))


def test_a_log_too_young_for_a_temporal_model_gets_the_scored_bgnbd_fallback(tmp_path: Path, monkeypatch) -> None:
    """Two labelled cutoffs cannot train, validate and judge a model: train says so, registers the
    BG/NBD model instead, and scoring works with it, its probabilities BG/NBD's, never 0 or 1."""
    from churnlens.engines.duckdb import DuckDBEngine, compute_snapshots
    from churnlens.stages import run_features, run_ingest_stage, run_simulate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    raw = small_params_dict(simulate={"n_days": 200})
    raw["features"]["cutoffs"].update({"min_history_days": 60, "every_days": 30})
    params = parse_params(raw)
    run_simulate(params, tmp_path / "data/raw", tmp_path / "truth.parquet")
    run_ingest_stage(params, tmp_path, tmp_path / "canonical", tmp_path / "quarantine", tmp_path / "ingest.json")
    features = run_features(params, tmp_path / "canonical", tmp_path / "snapshots.parquet", tmp_path / "features.json")
    assert features["complete_cutoffs"] == 2

    trained = run_train(params, tmp_path / "snapshots.parquet", tmp_path / "features.json", tmp_path / "model",
                        tmp_path / "train.json", PROJECT_ROOT)
    assert trained["model_kind"] == "bgnbd_fallback" and "need at least 3" in trained["fallback_reason"]
    assert pd.read_parquet(tmp_path / "train_holdout_scores.parquet").empty  # a dvc output, even with no holdout
    run = MlflowClient().get_run(trained["run_id"])  # spans the fallback's fit, not its logging
    assert run.info.start_time <= run.info.end_time < _logged_model(run).creation_timestamp
    evaluated = run_evaluate(params, tmp_path / "snapshots.parquet", tmp_path / "model", tmp_path / "train.json",
                             tmp_path / "metrics.json", tmp_path / "plots")
    assert evaluated["promotion"]["promoted"] and 0.5 < evaluated["model"]["roc_auc"] <= 1

    as_of = pd.Timestamp(params.simulate.start_date) + pd.Timedelta(days=180)
    scored = run_score(ScoreJob(params, tmp_path / "canonical", "models:/churnlens@champion",
                                tmp_path / "scores.parquet", tmp_path / "segments.json", as_of=as_of,
                                manifest_path=tmp_path / "manifest.json"))
    assert io.read_json(tmp_path / "manifest.json")["model_kind"] == "bgnbd_fallback"
    scores = pd.read_parquet(tmp_path / "scores.parquet").set_index("customer_id")
    snapshot, _ = compute_snapshots(DuckDBEngine().tables(str(tmp_path / "canonical")), [as_of], params.features,
                                    with_labels=False)
    expected = snapshot.set_index("customer_id").loc[scores.index, "btyd_p_no_purchase_horizon"]
    floor = params.train.probability_floor
    # Probabilities keep PREDICTION_BITS significant bits (churnlens.portable), so equal to that precision.
    np.testing.assert_allclose(scores["churn_probability"], expected.clip(floor, 1 - floor), rtol=2.0**-PREDICTION_BITS)
    assert scores["churn_probability"].between(0, 1, inclusive="neither").all()
    assert scored["outputs"]["scores"]


@pytest.mark.parametrize("days", [540, 200], ids=["temporal-model", "young-log-bgnbd-fallback"])
def test_a_log_of_customers_and_times_runs_ingest_to_evaluate(tmp_path: Path, monkeypatch, days: int) -> None:
    """Visits with no amount: spend features are left out with their reason, the model learns
    from purchases and their timing, the RFM baseline from recency and frequency, and the model
    (or, on a log too young for one, the BG/NBD fallback) is judged and promoted."""
    from churnlens.stages import run_features, run_ingest_stage, run_simulate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    raw = small_params_dict(simulate={"n_days": days})
    if days < 365:
        raw["features"]["cutoffs"].update({"min_history_days": 60, "every_days": 30})
    run_simulate(parse_params(raw), tmp_path / "data/raw", tmp_path / "truth.parquet")
    lines = pd.read_parquet(tmp_path / "data/raw/transactions.parquet")
    lines.loc[lines["amount"] > 0, ["customer_id", "timestamp"]].to_csv(tmp_path / "visits.csv", index=False)
    raw["ingest"].update({"transactions": {"path": "visits.csv"}, "interactions": None, "customers": None})
    params = parse_params(raw)

    ingested = run_ingest_stage(params, tmp_path, tmp_path / "canonical", tmp_path / "quarantine",
                                tmp_path / "ingest.json")
    assert ingested["tables"]["transactions"]["amount"] == "absent" and ingested["quarantined"] == 0
    features = run_features(params, tmp_path / "canonical", tmp_path / "snapshots.parquet", tmp_path / "features.json")
    assert "amount" in features["left_out"]["spend_365d"] and "spend_365d" not in features["model_features"]
    assert {"purchases_365d", "days_since_last_purchase", "btyd_p_no_purchase_horizon"} <= set(features["features"])
    trained = run_train(params, tmp_path / "snapshots.parquet", tmp_path / "features.json", tmp_path / "model",
                        tmp_path / "train.json", PROJECT_ROOT)
    evaluated = run_evaluate(params, tmp_path / "snapshots.parquet", tmp_path / "model", tmp_path / "train.json",
                             tmp_path / "metrics.json", tmp_path / "plots")
    assert evaluated["promotion"]["promoted"]
    assert tracking.alias_version(params.train.registered_model_name, tracking.CHAMPION) == trained["model_version"]
    if days < 365:
        assert trained["model_kind"] == "bgnbd_fallback" and 0.5 < evaluated["model"]["roc_auc"] <= 1
    else:
        assert "model_kind" not in trained and evaluated["model"]["roc_auc"] > 0.6
        assert evaluated["rfm_logistic"]["roc_auc"] > 0.6  # recency and frequency alone
