"""The one-date path (one DuckDB query) against the many-cutoff sweep (its point-in-time rule is
tested with the sweep's, in test_features.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.config import FeaturesConfig
from churnlens.engines.duckdb import compute_snapshots
from churnlens.single_date import compute_snapshot
from test_features import CONFIG, CUTOFF, dates_only, fixture_tables


def assert_same_snapshot(sweep: pd.DataFrame, single: pd.DataFrame, numeric: list[str]) -> None:
    assert list(sweep.columns) == list(single.columns)
    assert list(sweep["customer_id"]) == list(single["customer_id"])
    assert (sweep.dtypes == single.dtypes).all()
    for column in sweep.columns:
        if column in numeric:
            # The sweep's standard deviations are E[x^2] - E[x]^2 over float running sums: where every
            # gap is equal it leaves ~1e-7 days of rounding noise that exact sums read as 0.
            np.testing.assert_allclose(sweep[column].to_numpy(float), single[column].to_numpy(float),
                                       rtol=1e-9, atol=1e-6, err_msg=column)
        else:
            assert (sweep[column].astype("string").fillna("") == single[column].astype("string").fillna("")).all(), \
                column


@pytest.mark.parametrize("config", [FeaturesConfig(), FeaturesConfig(label="no_purchase", lead_days=5,
                                                                    partial_churn_below=0.5, windows_days=(7, 45))],
                         ids=["defaults", "other-windows"])
@pytest.mark.parametrize("cutoff", [pd.Timestamp("2023-09-01"), pd.Timestamp("2024-05-01 13:30")])
def test_one_date_equals_the_sweep(small_data, config, cutoff) -> None:
    """Every feature, the loyalty and BTYD ones included, and the same active customers."""
    tables = {"transactions": small_data.transactions, "interactions": small_data.interactions,
              "customers": small_data.customers}
    sweep, plan = compute_snapshots(tables, [cutoff], config, with_labels=False)
    single, single_plan = compute_snapshot(tables, cutoff, config)
    assert single_plan.names == plan.names and len(sweep) > 300
    assert {"below_usual_price_share_365d", "repeat_line_share_365d", "purchase_gap_cv", "btyd_p_alive",
            "distinct_products_365d", "last_nps"} <= set(plan.names)
    assert_same_snapshot(sweep, single, [n for n in plan.names if n not in plan.categorical])


def test_one_date_equals_the_sweep_on_a_log_without_amounts(small_data) -> None:
    tables = {"transactions": dates_only(small_data.transactions)}
    cutoff = pd.Timestamp("2024-03-01")
    sweep, plan = compute_snapshots(tables, [cutoff], FeaturesConfig(), with_labels=False)
    single, single_plan = compute_snapshot(tables, cutoff, FeaturesConfig())
    assert single_plan.names == plan.names and "spend_365d" not in plan.names and len(sweep) > 300
    assert_same_snapshot(sweep, single, plan.names)


def test_one_date_on_the_hand_checked_fixture_and_without_optional_tables() -> None:
    tables = fixture_tables()
    for subset in (tables, {"transactions": tables["transactions"]}):
        sweep, plan = compute_snapshots(subset, [CUTOFF], CONFIG, with_labels=False)
        single, _ = compute_snapshot(subset, CUTOFF, CONFIG)
        assert_same_snapshot(sweep, single, [n for n in plan.names if n not in plan.categorical])


def test_one_date_gives_the_same_bytes_twice_and_in_any_number_of_customer_blocks(small_data) -> None:
    """Blocks bound the query's memory; a product's price level and repeat rate pool every
    customer's lines, so they must not be computed from one block's customers."""
    tables = {"transactions": small_data.transactions, "interactions": small_data.interactions,
              "customers": small_data.customers}
    first, _ = compute_snapshot(tables, pd.Timestamp("2024-03-01"), FeaturesConfig(), blocks=1)
    second, _ = compute_snapshot(tables, pd.Timestamp("2024-03-01"), FeaturesConfig(), blocks=1)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    in_blocks, _ = compute_snapshot(tables, pd.Timestamp("2024-03-01"), FeaturesConfig(), blocks=3)
    pd.testing.assert_frame_equal(first, in_blocks, check_exact=True)
    assert first["below_usual_price_share_365d"].notna().sum() > 100 and first["product_repeat_rate_365d"].notna().sum() > 100
