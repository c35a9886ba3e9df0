"""A champion always serves after evaluate: the challenger, the current champion or a deployable
baseline, by one rule on this run's holdout; scoring names what it scores and why it serves."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from churnlens import io, tracking
from churnlens.config import parse_params
from churnlens.score import ScoreJob
from churnlens.stages import run_evaluate, run_features, run_ingest_stage, run_score, run_simulate, run_train
from conftest import PROJECT_ROOT, point_mlflow_at, small_params_dict

# One tree of depth one, barely trained: on the small data it ranks customers worse than BG/NBD.
DEGENERATE = {"n_estimators": 1, "max_depth": 1, "early_stopping_rounds": 1, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def lost(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fresh registry whose first challenger loses to the BG/NBD baseline on its holdout."""
    root = tmp_path_factory.mktemp("lost")
    with pytest.MonkeyPatch.context() as patch:
        point_mlflow_at(patch, f"sqlite:///{root / 'mlflow.db'}")
        patch.chdir(root)
        params = parse_params(small_params_dict(train={"xgboost": DEGENERATE}))
        run_simulate(params, root / "data/raw", root / "data/truth/ground_truth.parquet")
        run_ingest_stage(params, root, root / "data/canonical", root / "data/quarantine", root / "ingest.json")
        run_features(params, root / "data/canonical", root / "snapshots.parquet", root / "reports/features.json")
        trained = run_train(params, root / "snapshots.parquet", root / "reports/features.json", root / "models/m",
                            root / "reports/train.json", PROJECT_ROOT)
        evaluated = run_evaluate(params, root / "snapshots.parquet", root / "models/m", root / "reports/train.json",
                                 root / "reports/metrics.json", root / "reports/plots")
        yield {"root": root, "params": params, "trained": trained, "evaluated": evaluated}


def test_a_challenger_losing_to_bgnbd_leaves_the_baseline_as_champion(lost) -> None:
    root, trained, evaluated = lost["root"], lost["trained"], lost["evaluated"]
    promotion = evaluated["promotion"]
    assert promotion["promoted"] is False and "bgnbd_no_purchase" in promotion["reason"]
    deployed = promotion["deployed"]
    assert deployed["kind"] == "baseline" and deployed["decision"] == "baseline"
    assert deployed["model_version"] != trained["model_version"]
    assert "baseline bgnbd_fallback scores" in deployed["reason"] and "no champion" in deployed["reason"]
    # The champion alias exists and is the registered baseline, which says why it serves.
    assert tracking.alias_version("churnlens", tracking.CHAMPION) == deployed["model_version"]
    client = MlflowClient()
    baseline = client.get_model_version("churnlens", deployed["model_version"])
    assert baseline.tags["scorer"] == "baseline" and baseline.tags["promotion.reason"] == deployed["reason"]
    assert baseline.description.startswith("Promoted to champion: challenger v1")
    challenger = client.get_model_version("churnlens", trained["model_version"])
    assert challenger.tags["deployed.version"] == deployed["model_version"]
    assert f"Serving instead: baseline v{deployed['model_version']}" in challenger.description
    # The metrics report and the pipeline's deployed.json record the same decision.
    assert io.read_json(root / "reports/metrics.json")["promotion"]["deployed"] == deployed
    assert io.read_json(root / "reports/deployed.json") == deployed
    assert deployed["model_uri"] == f"models:/churnlens/{deployed['model_version']}"


def test_scoring_without_a_model_scores_the_baseline_and_says_so(lost, caplog) -> None:
    root, params = lost["root"], lost["params"]
    deployed = lost["evaluated"]["promotion"]["deployed"]
    report = run_score(ScoreJob(params, root / "data/canonical", params.score.model_uri, root / "s.parquet",
                                root / "s_report.json", manifest_path=root / "s_manifest.json"))
    manifest = io.read_json(root / "s_manifest.json")
    assert manifest["model_version"] == deployed["model_version"] and manifest["model_kind"] == "bgnbd_fallback"
    assert manifest["deployment"]["kind"] == "baseline" and manifest["deployment"]["is_champion"]
    assert manifest["deployment"]["decision"] == "promoted"
    assert manifest["deployment"]["reason"] == deployed["reason"]
    assert report["deployment"] == manifest["deployment"] and report["model_kind"] == "bgnbd_fallback"
    assert (pd.read_parquet(root / "s.parquet")["model_version"] == deployed["model_version"]).all()

    # The pipeline's way: the exact version evaluate wrote, with evaluate's decision.
    run_score(ScoreJob(params, root / "data/canonical", "models:/churnlens@nonexistent", root / "d.parquet",
                       root / "d_report.json", manifest_path=root / "d_manifest.json"),
              root / "reports/deployed.json")
    pinned = io.read_json(root / "d_manifest.json")
    assert pinned["model_uri"] == deployed["model_uri"] and pinned["deployment"]["decision"] == "baseline"
    assert pinned["deployment"]["source"].endswith("deployed.json")

    # The challenger its own evaluation rejected: scored on request, and said to be no champion.
    with caplog.at_level(logging.WARNING, logger="churnlens.stages"):
        run_score(ScoreJob(params, root / "data/canonical", "models:/churnlens@challenger", root / "c.parquet",
                           root / "c_report.json", manifest_path=root / "c_manifest.json"))
    rejected = io.read_json(root / "c_manifest.json")["deployment"]
    assert rejected["is_champion"] is False and rejected["decision"] == "not promoted"
    assert rejected["champion_version"] == deployed["model_version"] and rejected["kind"] == "model"
    assert any("is not the champion" in r.getMessage() and "not promoted" in r.getMessage() for r in caplog.records)


def test_a_missing_champion_says_what_to_run_in_this_project(lost, tmp_path: Path) -> None:
    client = MlflowClient()
    version = tracking.alias_version("churnlens", tracking.CHAMPION)
    client.delete_registered_model_alias("churnlens", tracking.CHAMPION)
    try:
        with pytest.raises(tracking.ModelNotFoundError, match=r"run `churnlens evaluate` on the model") as plain:
            tracking.resolve_model("models:/churnlens@champion", tmp_path)
        assert "--force train" not in str(plain.value)
        (tmp_path / "dvc.yaml").write_text("stages: {}\n")
        with pytest.raises(tracking.ModelNotFoundError,
                           match=r"dvc repro --force --single-item evaluate.*then `dvc repro score`"):
            tracking.resolve_model("models:/churnlens@champion", tmp_path)
    finally:
        client.set_registered_model_alias("churnlens", tracking.CHAMPION, version)


def test_deployed_file_that_names_no_version_is_a_clear_error(lost, tmp_path: Path) -> None:
    io.write_json({"model_uri": "models:/churnlens@champion"}, tmp_path / "deployed.json")
    with pytest.raises(ValueError, match=r"no models:/<name>/<version>.*rerun `dvc repro evaluate`"):
        run_score(ScoreJob(lost["params"], lost["root"] / "data/canonical", "unused", tmp_path / "x.parquet"),
                  tmp_path / "deployed.json")
    with pytest.raises(FileNotFoundError, match=r"evaluate writes it"):
        run_score(ScoreJob(lost["params"], lost["root"] / "data/canonical", "unused", tmp_path / "x.parquet"),
                  tmp_path / "absent.json")


def _decide(challenger: float, beats: bool, champion: str | None, champion_score: float | None,
            baseline: float | None, min_improvement: float = 0.01) -> dict:
    from churnlens.evaluate import deployment_decision, promotion_decision

    promotion = promotion_decision("roc_auc", "3", challenger, {"rfm_logistic": beats}, champion, champion_score,
                                   min_improvement)
    deployable = {} if baseline is None else {"bgnbd_fallback": baseline}
    return deployment_decision(promotion, champion_score, deployable, min_improvement)


@pytest.mark.parametrize(("case", "expected"), [
    ((0.80, True, None, None, 0.70), ("challenger", "3")),
    ((0.80, True, "2", 0.75, 0.70), ("challenger", "3")),
    ((0.80, True, "2", 0.75, 0.85), ("baseline", None)),      # beats the references, not the deployable baseline
    ((0.60, False, "2", 0.75, 0.70), ("champion", "2")),
    ((0.60, False, "2", 0.75, 0.755), ("champion", "2")),     # a baseline within min_improvement does not replace it
    ((0.60, False, "2", 0.75, 0.80), ("baseline", None)),
    ((0.60, False, "2", float("-inf"), 0.70), ("baseline", None)),  # a champion that cannot score this holdout
    ((0.60, False, None, None, 0.70), ("baseline", None)),
    ((0.90, True, "2", 0.70, 0.70), ("challenger", "3")),
], ids=["first-run", "beats-all", "loses-to-deployable", "champion-kept", "baseline-within-margin",
        "baseline-beats-champion", "champion-unscorable", "no-champion", "champion-is-the-baseline"])
def test_one_rule_always_deploys_a_scorer(case: tuple, expected: tuple) -> None:
    decision = _decide(*case)
    assert (decision["deploy"], decision.get("version")) == expected
    assert decision["reason"]


def test_nothing_to_deploy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"nothing can serve.*btyd features"):
        _decide(0.6, False, None, None, None)


def test_an_empty_registry_in_a_dvc_project_says_to_run_train_and_evaluate_alone(tracking_store, tmp_path) -> None:
    """`--force` on train would rerun every stage before it (in this repository: simulate)."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(tracking.ModelNotFoundError,
                       match=r"holds no model yet.*`dvc repro --force --single-item train evaluate`"):
        tracking.resolve_model("models:/churnlens@champion", tmp_path)
