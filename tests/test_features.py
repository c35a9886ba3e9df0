from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnlens.config import FeaturesConfig, load_params
from churnlens.engines.duckdb import compute_snapshots
from churnlens.features import (
    FAMILIES,
    cutoff_grid,
    definitions_for,
    feature_catalog_markdown,
    feature_definitions,
)
from conftest import PROJECT_ROOT
import itertools

CUTOFF = pd.Timestamp("2024-02-01")
CONFIG = FeaturesConfig(horizon_days=90)


def line(customer, when, amount, order, unit=None, list_price=None, category="x", product="p1", quantity=1.0):
    unit = amount / quantity if unit is None else unit
    return {"customer_id": customer, "timestamp": pd.Timestamp(when), "amount": float(amount), "order_id": order,
            "quantity": float(quantity), "unit_price": float(unit),
            "list_price": float(unit if list_price is None else list_price), "product_id": product,
            "category": category, "is_return": amount < 0}


def fixture_tables() -> dict[str, pd.DataFrame]:
    transactions = pd.DataFrame([
        line("A", "2024-01-01 10:00", 10, "O1", category="x", product="p1"),
        line("A", "2024-01-11 10:00", 8, "O2", unit=8, list_price=10, category="y", product="p2"),
        line("A", "2024-02-01 00:00:00", 30, "O3", category="x", product="p3"),  # exactly at the cutoff: history
        line("A", "2024-02-01 00:00:01", 1000, "O4"),  # one second after: future
        line("B", "2023-12-01 00:00", 50, "O5"),
        line("C", "2024-01-20 00:00", 20, "O6"),  # cancelled before the cutoff: not active
        line("D", "2024-02-02 00:00", 20, "O7"),  # first purchase after the cutoff: not active
    ])
    interactions = pd.DataFrame({
        "customer_id": ["A", "A", "A", "A"],
        "timestamp": pd.to_datetime(["2024-01-20 00:00:00", "2024-02-01 00:00:01", "2024-02-01 00:00:00",
                                     "2024-01-25 00:00:00"]),
        "type": ["survey", "survey", "complaint", "visit"],
        "value": [9.0, 3.0, np.nan, np.nan],
    })
    customers = pd.DataFrame({
        "customer_id": ["A", "B", "C", "D"],
        "signup_date": pd.to_datetime(["2023-02-01", "2023-06-01", "2023-01-01", "2024-02-02"]),
        "contract_type": ["annual", "none", "none", "none"],
        "contract_term_months": pd.array([12, None, None, None], dtype="Int64"),
        "autopay": [True, False, False, False],
        "products_held": [3, 1, 1, 1],
        "plan_price": [20.0, np.nan, np.nan, np.nan],
        "cancellation_date": pd.to_datetime([None, None, "2024-01-25", None]),
    })
    return {"transactions": transactions, "interactions": interactions, "customers": customers}


@pytest.fixture(scope="module")
def snapshot() -> pd.DataFrame:
    frame, _ = compute_snapshots(fixture_tables(), [CUTOFF], CONFIG)
    return frame.set_index("customer_id")


def test_population_is_active_customers_only(snapshot) -> None:
    assert list(snapshot.index) == ["A", "B"]  # C cancelled before, D not yet a customer


def test_purchase_frequency_by_hand(snapshot) -> None:
    a, b = snapshot.loc["A"], snapshot.loc["B"]
    assert a["days_since_last_purchase"] == 0.0  # the order at exactly the cutoff is history
    assert a["purchases_lifetime"] == 3 and a["purchases_30d"] == 2 and a["purchases_90d"] == 3
    assert a["mean_purchase_gap_days"] == pytest.approx((10 + 20 + 14 / 24) / 2)
    assert a["purchase_gap_std_days"] == pytest.approx(np.std([10, 20 + 14 / 24]), rel=1e-9)
    assert a["overdue_ratio"] == 0.0
    assert b["days_since_last_purchase"] == 62 and b["purchases_lifetime"] == 1
    assert math.isnan(b["mean_purchase_gap_days"]) and math.isnan(b["purchase_gap_std_days"])


def test_economic_by_hand(snapshot) -> None:
    a = snapshot.loc["A"]
    assert a["spend_30d"] == 38 and a["spend_365d"] == 48  # 1000 one second later is not included
    assert a["avg_order_value_365d"] == pytest.approx(16)
    assert a["discount_share_365d"] == pytest.approx(1 / 3)
    assert a["discount_depth_365d"] == pytest.approx(0.2)


def test_differentiation_by_hand(snapshot) -> None:
    a = snapshot.loc["A"]
    assert a["distinct_categories_365d"] == 2 and a["distinct_products_365d"] == 3
    assert snapshot.loc["B", "distinct_categories_365d"] == 1


def test_interaction_and_emotional_by_hand(snapshot) -> None:
    a, b = snapshot.loc["A"], snapshot.loc["B"]
    assert a["last_nps"] == 9  # the answer of 3 comes one second after the cutoff
    assert a["complaints_90d"] == 1 and a["days_since_last_complaint"] == 0  # complaint at the cutoff counts
    assert a["visits_30d"] == 1 and a["days_since_last_contact"] == 0
    assert a["praise_complaint_balance_365d"] == pytest.approx(-0.5)
    assert b["visits_30d"] == 0 and math.isnan(b["last_nps"])


def test_switching_cost_by_hand(snapshot) -> None:
    a = snapshot.loc["A"]
    assert a["tenure_days"] == 365 and a["products_held"] == 3 and a["autopay"] == 1.0
    assert a["contract_type"] == "annual"
    assert a["days_to_contract_end"] == pytest.approx(12 * 30.4375 - 365)


def test_labels_look_only_inside_the_window(snapshot) -> None:
    assert not snapshot.loc["A", "churned"]  # bought one second after the cutoff
    assert snapshot.loc["B", "churned"]


@pytest.mark.parametrize(("offset", "churned"), [
    (pd.Timedelta(0), True),  # at the cutoff: history, not the label window
    (pd.Timedelta(seconds=1), False),
    (pd.Timedelta(days=90), False),  # the window's last instant is inside
    (pd.Timedelta(days=90, seconds=1), True),  # after the window
])
def test_label_window_boundaries(offset, churned) -> None:
    transactions = pd.DataFrame([line("E", "2024-01-10", 5, "X1"), line("E", CUTOFF + offset, 5, "X2")])
    frame, _ = compute_snapshots({"transactions": transactions}, [CUTOFF], CONFIG)
    assert bool(frame["churned"].iloc[0]) is churned


def test_lead_gap_moves_the_window() -> None:
    transactions = pd.DataFrame([line("E", "2024-01-10", 5, "X1"), line("E", CUTOFF + pd.Timedelta(days=5), 5, "X2")])
    frame, _ = compute_snapshots({"transactions": transactions}, [CUTOFF], FeaturesConfig(lead_days=7))
    assert bool(frame["churned"].iloc[0])  # a purchase inside the purge gap does not count


def test_absent_tables_leave_families_out_not_zero_filled() -> None:
    tables = fixture_tables()
    frame, plan = compute_snapshots({"transactions": tables["transactions"]}, [CUTOFF], CONFIG)
    families = plan.families()
    assert families["interaction"] == [] and families["emotional"] == [] and families["switching_cost"] == []
    assert "last_nps" not in frame and "tenure_days" not in frame
    assert plan.left_out["last_nps"] == "no interactions table"
    assert plan.left_out["praise_complaint_balance_365d"].startswith("needs")


def test_missing_columns_leave_their_features_out() -> None:
    transactions = fixture_tables()["transactions"].drop(columns=["list_price", "category"])
    frame, plan = compute_snapshots({"transactions": transactions}, [CUTOFF], CONFIG)
    assert "discount_share_365d" not in frame and "distinct_categories_365d" not in frame
    assert "list_price" in plan.left_out["discount_share_365d"]
    assert "category" in plan.left_out["distinct_categories_365d"]


def test_many_cutoffs_equal_one_cutoff_at_a_time() -> None:
    tables = fixture_tables()
    cutoffs = [pd.Timestamp("2024-01-05"), CUTOFF, pd.Timestamp("2024-03-01")]
    together, _ = compute_snapshots(tables, cutoffs, CONFIG)
    separately = pd.concat([compute_snapshots(tables, [c], CONFIG)[0] for c in cutoffs])
    pd.testing.assert_frame_equal(together, separately.sort_values(["customer_id", "cutoff"]).reset_index(drop=True))


def test_every_family_has_features_and_catalog_is_current() -> None:
    definitions = definitions_for(load_params(PROJECT_ROOT / "params.yaml").features)  # as `churnlens catalog` has it
    assert {f.family for f in definitions} == set(FAMILIES)
    committed = (PROJECT_ROOT / "docs" / "features.md").read_text(encoding="utf-8")
    assert committed == feature_catalog_markdown(definitions), "run `churnlens catalog` to regenerate docs/features.md"


def test_cutoff_grid_from_data_span() -> None:
    config = FeaturesConfig(cutoffs={"every_days": 30, "min_history_days": 60, "short_history_every_days": None})
    grid = cutoff_grid(config, pd.Timestamp("2024-01-01 08:00"), pd.Timestamp("2024-06-15 10:00"))
    assert grid[0] == pd.Timestamp("2024-03-01") and grid[-1] <= pd.Timestamp("2024-06-15")
    assert all((b - a).days == 30 for a, b in itertools.pairwise(grid))
    with pytest.raises(ValueError, match="min_history_days"):
        cutoff_grid(FeaturesConfig(cutoffs={"min_history_days": 400}), grid[0], grid[-1])


def test_cutoff_grid_is_weekly_while_the_log_is_young() -> None:
    young = (pd.Timestamp("2024-01-01"), pd.Timestamp("2024-09-30"))  # ~6 months of labelled cutoffs
    mature = (pd.Timestamp("2022-01-01"), pd.Timestamp("2024-09-30"))
    config = FeaturesConfig(cutoffs={"every_days": 30, "min_history_days": 60, "short_history_every_days": 7})
    steps = lambda grid: {(b - a).days for a, b in itertools.pairwise(grid)}  # noqa: E731
    assert steps(cutoff_grid(config, *young)) == {7}
    assert steps(cutoff_grid(config, *mature)) == {30}
    off = FeaturesConfig(cutoffs={"every_days": 30, "min_history_days": 60, "short_history_every_days": None})
    assert steps(cutoff_grid(off, *young)) == {30}


# ---------------------------------------------------------------- leakage, property-based
_event_time = st.integers(min_value=-200 * 24, max_value=200 * 24).map(lambda h: CUTOFF + pd.Timedelta(hours=h))


@st.composite
def event_logs(draw):
    n = draw(st.integers(min_value=1, max_value=25))
    rows = []
    for i in range(n):
        customer = draw(st.sampled_from(["A", "B", "C"]))
        amount = draw(st.floats(min_value=-50, max_value=500, allow_nan=False).filter(lambda v: abs(v) > 0.01))
        rows.append(line(customer, draw(_event_time), round(amount, 2), f"O{i}",
                         category=draw(st.sampled_from(["x", "y", "z"])), product=f"p{draw(st.integers(0, 4))}",
                         list_price=None))
    interactions = [
        {"customer_id": draw(st.sampled_from(["A", "B", "C"])), "timestamp": draw(_event_time),
         "type": draw(st.sampled_from(["visit", "complaint", "survey", "praise", "referral"])),
         "value": float(draw(st.integers(0, 10)))}
        for _ in range(draw(st.integers(0, 10)))
    ]
    interactions = pd.DataFrame(interactions, columns=["customer_id", "timestamp", "type", "value"]).astype(
        {"customer_id": "str", "timestamp": "datetime64[us]", "type": "str", "value": "float64"})
    return pd.DataFrame(rows), interactions


@st.composite
def future_changes(draw, after: pd.Timestamp):
    """Events strictly after ``after``: some added, and a flag to drop/alter the existing ones."""
    hours = st.integers(min_value=1, max_value=300 * 24).map(lambda h: after + pd.Timedelta(hours=h))
    added = [line(draw(st.sampled_from(["A", "B", "C", "Z"])), draw(hours), draw(st.integers(1, 900)), f"F{i}")
             for i in range(draw(st.integers(0, 5)))]
    return pd.DataFrame(added, columns=list(line("A", CUTOFF, 1, "x"))), draw(st.booleans()), draw(st.booleans())


def _mutate_future(transactions, interactions, change, after):
    added, drop_future, alter_future = change
    future = transactions["timestamp"] > after
    changed = transactions[~future] if drop_future else transactions.copy()
    if alter_future and not drop_future:
        changed.loc[future, "amount"] = changed.loc[future, "amount"] * 3 + 1
    changed = pd.concat([changed, added], ignore_index=True) if len(added) else changed
    future_i = interactions["timestamp"] > after
    new_interactions = interactions[~future_i] if drop_future else interactions.assign(
        value=np.where(future_i, 0.0, interactions["value"]))
    return changed, new_interactions


def _one_date(tables: dict, cutoff: pd.Timestamp) -> pd.DataFrame:
    from churnlens.single_date import compute_snapshot

    return compute_snapshot(tables, cutoff, CONFIG)[0]


def _sweep(tables: dict, cutoff: pd.Timestamp) -> pd.DataFrame:
    return compute_snapshots(tables, [cutoff], CONFIG, with_labels=False)[0]


@pytest.mark.parametrize("engine", [_sweep, _one_date], ids=["sweep", "one-date"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_events_after_the_cutoff_never_change_its_features(engine, data) -> None:
    transactions, interactions = data.draw(event_logs())
    change = data.draw(future_changes(CUTOFF))
    changed_tx, changed_ix = _mutate_future(transactions, interactions, change, CUTOFF)
    before = engine({"transactions": transactions, "interactions": interactions}, CUTOFF)
    after = engine({"transactions": changed_tx, "interactions": changed_ix}, CUTOFF)
    pd.testing.assert_frame_equal(before, after)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_labels_only_look_inside_their_window(data) -> None:
    transactions, interactions = data.draw(event_logs())
    window_end = CUTOFF + pd.Timedelta(days=CONFIG.horizon_days)
    change = data.draw(future_changes(window_end))
    changed_tx, _ = _mutate_future(transactions, interactions, change, window_end)
    before, _ = compute_snapshots({"transactions": transactions}, [CUTOFF], CONFIG)
    after, _ = compute_snapshots({"transactions": changed_tx}, [CUTOFF], CONFIG)
    pd.testing.assert_series_equal(before["churned"], after["churned"])


def _two_customers() -> dict[str, pd.DataFrame]:
    transactions = pd.DataFrame([
        line("K", "2024-01-10", 100, "K1"), line("K", "2024-02-10", 10, "K2"),  # spend collapses, still buys
        line("L", "2024-01-10", 100, "L1"), line("L", "2024-02-10", 100, "L2"),
    ])
    customers = pd.DataFrame({"customer_id": ["K", "L"], "cancellation_date": pd.to_datetime([None, "2024-03-01"])})
    return {"transactions": transactions, "customers": customers}


@pytest.mark.parametrize(("label", "partial", "expected"), [
    ("no_purchase", None, {"K": False, "L": False}),
    ("cancellation", None, {"K": False, "L": True}),
    ("no_purchase_or_cancellation", None, {"K": False, "L": True}),
    ("no_purchase", 0.3, {"K": True, "L": False}),  # K spent 10 < 0.3 x 100 in the 90 days before
])
def test_label_definitions(label, partial, expected) -> None:
    config = FeaturesConfig(label=label, partial_churn_below=partial)
    frame, _ = compute_snapshots(_two_customers(), [CUTOFF], config)
    assert frame.set_index("customer_id")["churned"].to_dict() == expected


def test_contractual_label_without_cancellations_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"features\.label='cancellation' needs a customers table"):
        compute_snapshots({"transactions": _two_customers()["transactions"]}, [CUTOFF], FeaturesConfig(label="cancellation"))


@pytest.mark.parametrize(("cutoff", "distinct"), [
    (pd.Timestamp("2023-02-01") + pd.Timedelta(days=365) - pd.Timedelta(seconds=1), 2),  # x still inside
    (pd.Timestamp("2023-02-01") + pd.Timedelta(days=365), 1),  # x left the (c - 365, c] window
])
def test_distinct_counts_expire_exactly_at_the_window_edge(cutoff, distinct) -> None:
    transactions = pd.DataFrame([line("M", "2023-02-01", 5, "M1", category="x"),
                                 line("M", "2023-06-01", 5, "M2", category="x"),  # x again: extends to 2024-05-31
                                 line("M", "2024-01-15", 5, "M3", category="y")])
    frame, _ = compute_snapshots({"transactions": transactions}, [cutoff], CONFIG, with_labels=False)
    assert frame["distinct_categories_365d"].iloc[0] == 2  # the June purchase keeps x inside the window
    transactions = transactions[transactions["order_id"] != "M2"]
    frame, _ = compute_snapshots({"transactions": transactions}, [cutoff], CONFIG, with_labels=False)
    assert frame["distinct_categories_365d"].iloc[0] == distinct


def test_price_level_uses_the_previous_month_only() -> None:
    others = [line(f"O{i}", f"2024-01-{10 + i} 12:00", 10, f"P{i}", category="x") for i in range(3)]
    mine = [line("N", "2024-02-10 12:00", 20, "N1", category="x"), line("N", "2024-02-11 12:00", 10, "N2", category="x")]
    late = [line(f"Q{i}", "2024-02-20 12:00", 1000, f"Q{i}", category="x") for i in range(5)]  # same month: unused
    frame, _ = compute_snapshots({"transactions": pd.DataFrame(others + mine + late)}, [CUTOFF + pd.Timedelta(days=30)],
                                 CONFIG, with_labels=False)
    n = frame.set_index("customer_id").loc["N"]
    assert n["price_vs_category_median_365d"] == pytest.approx((2.0 + 1.0) / 2)
    assert n["premium_share_365d"] == pytest.approx(20 / 30)  # the line at 2x the January median


@pytest.mark.parametrize("config", [FeaturesConfig(), FeaturesConfig(label="no_purchase", lead_days=5,
                                                                    partial_churn_below=0.5, windows_days=(7, 45))],
                         ids=["defaults", "other-label-windows"])
def test_portable_sql_equals_the_sweep(small_data, config) -> None:
    """Two independent computations of every feature: the numpy time-grid sweep and the plain
    join-and-aggregate SQL that Spark runs (here on DuckDB)."""
    from churnlens.engines.duckdb import reference_snapshots

    tables = {"transactions": small_data.transactions, "interactions": small_data.interactions,
              "customers": small_data.customers}
    cutoffs = list(pd.date_range("2023-06-01", "2024-05-01", freq="37D"))
    sweep, plan = compute_snapshots(tables, cutoffs, config)
    reference, _ = reference_snapshots(tables, cutoffs, config)
    assert len(sweep) > 1000 and list(sweep.columns) == list(reference.columns)
    for column in sweep.columns:
        if column in plan.names and column not in plan.categorical:
            np.testing.assert_allclose(sweep[column].to_numpy(float), reference[column].to_numpy(float),
                                       rtol=1e-9, atol=1e-9, err_msg=column)
        else:
            assert (sweep[column].astype("string").fillna("") == reference[column].astype("string").fillna("")
                    ).all(), column


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 2),
                          st.sampled_from([0.5, 1.0, 1.25, 2.99, 3.0, 1e-3, 7.1e15, 12345.678])),
                min_size=1, max_size=60),
       st.integers(1, 4))
def test_median_from_counts_is_sqls_median(rows, min_count) -> None:
    """Prices counted per group and value give exactly (bit for bit) what ``median`` over every
    line gives, groups below the minimum left out: the count form spills, ``median`` cannot."""
    import duckdb

    from churnlens.sql import median_from_counts

    lines = pd.DataFrame(rows, columns=["product_id", "month", "unit_price"])
    with duckdb.connect() as con:
        con.register("lines", lines)
        expected = con.execute(f"SELECT product_id, month, median(unit_price) AS m FROM lines GROUP BY ALL "
                               f"HAVING count(*) >= {min_count} ORDER BY ALL").df()
        counts = "SELECT product_id, month, unit_price, count(*) AS n FROM lines GROUP BY ALL"
        counted = con.execute(f"SELECT * FROM ({median_from_counts(counts, 'product_id', 'unit_price', 'm', min_count)}) "
                              "x ORDER BY ALL").df()
    pd.testing.assert_frame_equal(counted, expected, check_exact=True, check_dtype=False)


# ---------------------------------------------------------------- a log of customers and times only
PURCHASE_FEATURES = ["days_since_last_purchase", "days_since_first_purchase", "purchases_lifetime",
                     "mean_purchase_gap_days", "purchase_gap_std_days", "purchases_30d", "purchases_90d",
                     "purchases_365d", "purchase_trend_90d", "overdue_ratio", "purchase_gap_cv",
                     "purchase_days_lifetime", "btyd_p_alive", "btyd_expected_purchases_horizon",
                     "btyd_p_no_purchase_horizon"]
SPEND_FEATURES = ["spend_30d", "spend_90d", "spend_365d", "avg_order_value_365d", "spend_trend_90d",
                  "spend_volatility_365d", "premium_share_365d", "below_usual_spend_share_365d"]


def dates_only(transactions: pd.DataFrame) -> pd.DataFrame:
    """What ingest makes of a log of customers and times (its purchases): no amount, no return marked."""
    returns = transactions["is_return"] if "is_return" in transactions else transactions["amount"] < 0
    return transactions.loc[~returns, ["customer_id", "timestamp"]].assign(is_return=False)


def test_a_log_without_amounts_keeps_the_purchase_features_and_leaves_spend_out() -> None:
    full = fixture_tables()["transactions"]
    with_amounts, _ = compute_snapshots({"transactions": full}, [CUTOFF], CONFIG)
    frame, plan = compute_snapshots({"transactions": dates_only(full)}, [CUTOFF], CONFIG)
    # The same purchases at the same times: the same purchase features, to the bit.
    pd.testing.assert_frame_equal(frame[["customer_id", "cutoff", *PURCHASE_FEATURES, "churned"]],
                                  with_amounts[["customer_id", "cutoff", *PURCHASE_FEATURES, "churned"]])
    assert not set(SPEND_FEATURES) & set(frame.columns) and not set(SPEND_FEATURES) & set(plan.model_names)
    for name in SPEND_FEATURES:
        assert "amount" in plan.left_out[name], (name, plan.left_out.get(name))


def test_every_feature_that_reads_spend_declares_the_amount() -> None:
    """A spend feature without requires=("amount",) would break (or be zero-filled) on a log
    without amounts instead of being left out with its reason."""
    import re

    for f in feature_definitions((30, 90, 365)):
        reads = set(re.findall(r"[a-z_][a-z0-9_]*", f.expression))
        spend = {"orders": "value", "lines": "amount"}.get(f.source) if f.kind == "window" else None
        if spend in reads or "amount" in reads:
            assert "amount" in f.requires, f.name


def test_portable_sql_equals_the_sweep_on_a_log_without_amounts(small_data) -> None:
    from churnlens.engines.duckdb import reference_snapshots

    tables = {"transactions": dates_only(small_data.transactions)}
    cutoffs = list(pd.date_range("2023-06-01", "2024-05-01", freq="37D"))
    sweep, plan = compute_snapshots(tables, cutoffs, CONFIG)
    reference, _ = reference_snapshots(tables, cutoffs, CONFIG)
    assert len(sweep) > 1000 and list(sweep.columns) == list(reference.columns)
    assert set(PURCHASE_FEATURES) <= set(plan.names)
    for column in plan.names:
        np.testing.assert_allclose(sweep[column].to_numpy(float), reference[column].to_numpy(float),
                                   rtol=1e-9, atol=1e-9, err_msg=column)
    assert (sweep["churned"] == reference["churned"]).all()


@pytest.mark.parametrize("engine", ["sweep", "portable-sql"])
def test_partial_churn_without_amounts_is_a_clear_error(engine) -> None:
    from churnlens.engines.duckdb import reference_snapshots

    compute = compute_snapshots if engine == "sweep" else reference_snapshots
    tables = {"transactions": dates_only(_two_customers()["transactions"])}
    with pytest.raises(ValueError, match=r"features\.partial_churn_below=0\.3 compares .* spend .* no amount.*"
                                         r"features\.partial_churn_below: null"):
        compute(tables, [CUTOFF], FeaturesConfig(partial_churn_below=0.3))
