from __future__ import annotations

from pathlib import Path

import pytest

from churnlens.config import ConfigError, load_params, parse_params
from conftest import PROJECT_ROOT, project_params_dict


def test_project_params_file_loads() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.simulate.n_customers == project_params_dict()["simulate"]["n_customers"]
    assert params.score.risk_tiers["medium"] < params.score.risk_tiers["high"]


def test_unknown_key_is_named() -> None:
    raw = project_params_dict()
    raw["train"]["xgboost"]["max_dept"] = 4
    with pytest.raises(ConfigError, match=r"train\.xgboost\.max_dept: unknown key"):
        parse_params(raw)


def test_wrong_type_names_key_and_value() -> None:
    raw = project_params_dict()
    raw["features"]["horizon_days"] = "ninety"
    with pytest.raises(ConfigError, match=r"features\.horizon_days: .*integer.*received 'ninety'"):
        parse_params(raw)


def test_impossible_value_is_rejected() -> None:
    raw = project_params_dict()
    raw["simulate"]["persona_shares"] = {"brand_advocate": 0.5, "brand_user": 0.5, "brand_comparer": 0.5}
    with pytest.raises(ConfigError, match=r"simulate\.persona_shares: .*sum to 1\.0, got 1\.5000"):
        parse_params(raw)


def test_risk_tiers_must_be_ordered() -> None:
    raw = project_params_dict()
    raw["score"]["risk_tiers"] = {"medium": 0.7, "high": 0.6}
    with pytest.raises(ConfigError, match=r"0 < medium < high < 1"):
        parse_params(raw)


def test_playbook_must_cover_every_segment_and_tier() -> None:
    raw = project_params_dict()
    del raw["score"]["actions"]["brand_user"]["high"]
    with pytest.raises(ConfigError, match=r"missing \['brand_user\.high'\]"):
        parse_params(raw)


def test_every_problem_is_reported_at_once() -> None:
    raw = project_params_dict()
    raw["train"]["seed"] = -1
    raw["evaluate"]["top_fraction"] = 2
    with pytest.raises(ConfigError, match=r"2 invalid parameter\(s\)") as error:
        parse_params(raw)
    assert "train.seed" in str(error.value) and "evaluate.top_fraction" in str(error.value)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"parameter file not found; run from the project root"):
        load_params(tmp_path / "params.yaml")


def test_windows_must_increase() -> None:
    raw = project_params_dict()
    raw["features"]["windows_days"] = [90, 30]
    with pytest.raises(ConfigError, match=r"features\.windows_days: .*strictly increasing"):
        parse_params(raw)


def test_windows_without_a_year_are_rejected_before_any_stage_runs() -> None:
    raw = project_params_dict()
    raw["features"]["windows_days"] = [30, 90]
    with pytest.raises(ConfigError, match=r"features\.windows_days must include 365 \(got \[30, 90\]\)"):
        parse_params(raw)
    raw["features"]["windows_days"] = [30, 365, 730]
    assert parse_params(raw).features.windows_days == (30, 365, 730)


def test_boolean_for_a_number_is_rejected() -> None:
    raw = project_params_dict()
    raw["train"]["xgboost"]["n_estimators"] = True
    with pytest.raises(ConfigError, match=r"train\.xgboost: .*n_estimators: expected a number, got True"):
        parse_params(raw)


def test_duplicate_yaml_key_is_rejected(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8").replace(
        "  seed: 7\n", "  seed: 7\n  seed: 8\n", 1)
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"(?s)duplicate key 'seed'.*line \d+"):
        load_params(tmp_path / "params.yaml")


def test_plausible_dates_must_be_ordered() -> None:
    raw = project_params_dict()
    raw["ingest"].update({"earliest_plausible_date": "2024-01-01", "latest_plausible_date": "2020-01-01"})
    with pytest.raises(ConfigError, match=r"ingest: .*latest_plausible_date \(2020-01-01\) must be after "
                                          r"earliest_plausible_date \(2024-01-01\)"):
        parse_params(raw)


def test_unknown_time_zone_names_its_key() -> None:
    raw = project_params_dict()
    raw["ingest"]["transactions"]["source_timezone"] = "Europe/Berln"
    with pytest.raises(ConfigError, match=r"ingest\.transactions\.source_timezone: .*unknown time zone "
                                          r"'Europe/Berln'") as error:
        parse_params(raw)
    assert "1 invalid parameter" in str(error.value)


@pytest.mark.parametrize("memory", ["lots", "4 g", "-1g", "4.5g"])
def test_spark_driver_memory_must_be_a_jvm_size(memory: str) -> None:
    raw = project_params_dict()
    raw["engine"]["spark_driver_memory"] = memory
    with pytest.raises(ConfigError, match=r"engine\.spark_driver_memory: String should match pattern"):
        parse_params(raw)


def test_tuning_budget_is_a_number_of_trials_not_seconds() -> None:
    from churnlens.config import TrainConfig

    with pytest.raises(ValueError, match="max_seconds"):
        TrainConfig(tuning={"n_trials": 2, "max_seconds": 60})
