"""Loyalty segments from purchase behaviour alone: the behavioural features, the simulator's
persona signatures, the contract mapping and the construct-validity table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnlens.config import ConfigError, SegmentRules, parse_params
from churnlens.engines.duckdb import compute_snapshots
from churnlens.features import scoring_cutoff
from churnlens.segments import PERSONAS, agreement_with_truth, assign_segments, unknown_contract_types
from churnlens.simulate import simulate
from churnlens.stages import construct_validity_report, run_simulate
from churnlens.validity import construct_validity, line_flags, orderings
from conftest import small_params_dict
from test_features import CONFIG, line

MARCH = pd.Timestamp("2024-03-01")
MID_MARCH = pd.Timestamp("2024-03-15 12:00")  # later lines of the same month must not count either


def _usual_price_log() -> pd.DataFrame:
    """Product p sells at 10 in December and January (three lines: its usual price in February);
    q has no earlier sales. N buys p at 9 (10% under), p again at 9.8 (2% under: not a price drop)
    and q at 50."""
    others = [line(f"O{i}", day, 10, f"P{i}", product="p") for i, day in
              enumerate(["2023-12-05", "2023-12-20", "2024-01-15"])]
    same_month = [line("S", f"2024-02-0{i + 1} 08:00", 1, f"S{i}", product="p")  # February's own sales never count
                  for i in range(3)]
    mine = [line("N", "2024-02-05 12:00", 9, "N1", product="p"),
            line("N", "2024-02-10 12:00", 9.8, "N2", product="p"),
            line("N", "2024-02-12 12:00", 50, "N3", product="q")]
    return pd.DataFrame(others + same_month + mine)


def test_behavioural_features_by_hand() -> None:
    frame, _ = compute_snapshots({"transactions": _usual_price_log()}, [MARCH], CONFIG, with_labels=False)
    n = frame.set_index("customer_id").loc["N"]
    assert n["below_usual_price_share_365d"] == pytest.approx(1 / 2)  # q has no usual price: left out
    assert n["below_usual_spend_share_365d"] == pytest.approx(9 / (9 + 9.8))
    assert n["repeat_line_share_365d"] == pytest.approx(1 / 3)  # the second p
    assert n["purchase_gap_cv"] == pytest.approx(1.5 / 3.5)  # gaps of 5 and 2 days


def test_line_flags_by_hand() -> None:
    flags = line_flags(_usual_price_log()).set_index(["customer_id", "ts"])
    mine = flags.loc["N"]
    assert mine["below_usual"].tolist()[:2] == [1.0, 0.0] and np.isnan(mine["below_usual"].iloc[2])
    assert mine["repeat_line"].tolist() == [0.0, 1.0, 0.0]


def test_a_usual_price_needs_enough_earlier_sales() -> None:
    log = _usual_price_log()
    log = log[log["customer_id"] != "O2"]  # two earlier sales of p only
    frame, _ = compute_snapshots({"transactions": log}, [MARCH], CONFIG, with_labels=False)
    assert np.isnan(frame.set_index("customer_id").loc["N", "below_usual_price_share_365d"])


def test_lines_of_one_instant_are_not_repeats_of_each_other() -> None:
    log = pd.DataFrame([line("R", "2024-01-05", 5, "R1", product="p"), line("R", "2024-01-05", 5, "R1", product="p"),
                        line("R", "2024-02-05", 5, "R2", product="p")])
    frame, _ = compute_snapshots({"transactions": log}, [MARCH], CONFIG, with_labels=False)
    assert frame["repeat_line_share_365d"].iloc[0] == pytest.approx(1 / 3)


def _staples_log() -> pd.DataFrame:
    """p: A buys it twice in December, B once in January (1 repeat in 3 lines); q: C buys it three
    times in January (2 repeats in 3); r has no earlier sales. N's one basket in February holds p,
    q and r; February's own repeats of p (by S) never count."""
    earlier = [line("A", "2023-12-05", 5, "A1", product="p"), line("A", "2023-12-20", 5, "A2", product="p"),
               line("B", "2024-01-15", 5, "B1", product="p"),
               *[line("C", f"2024-01-{day}", 5, f"C{day}", product="q") for day in (2, 10, 20)]]
    same_month = [line("S", f"2024-02-0{day}", 5, f"S{day}", product="p") for day in (1, 2, 3)]
    basket = [line("N", "2024-02-10 12:00", 5, "N1", product=product) for product in ("p", "q", "r")]
    return pd.DataFrame(earlier + same_month + basket)


def test_product_repeat_rate_by_hand() -> None:
    frame, _ = compute_snapshots({"transactions": _staples_log()}, [MARCH], CONFIG, with_labels=False)
    rates = frame.set_index("customer_id")["product_repeat_rate_365d"]
    assert rates["N"] == pytest.approx((1 / 3 + 2 / 3) / 2)  # r has no repeat rate yet: left out
    assert np.isnan(rates["C"])  # q had no sales before January
    # In March, February's sales of p count too: (1 + 2 repeats of S) / 7 lines of p.
    april, _ = compute_snapshots({"transactions": pd.concat([_staples_log(), pd.DataFrame([
        line("M", "2024-03-05", 5, "M1", product="p")])])}, [pd.Timestamp("2024-04-01")], CONFIG, with_labels=False)
    assert april.set_index("customer_id").loc["M", "product_repeat_rate_365d"] == pytest.approx(3 / 7)


@st.composite
def priced_logs(draw):
    """Many lines on few products around the cutoff, so that usual prices exist on both sides."""
    rows = []
    for i in range(draw(st.integers(min_value=5, max_value=40))):
        when = MID_MARCH + pd.Timedelta(hours=draw(st.integers(min_value=-150 * 24, max_value=90 * 24)))
        price = draw(st.sampled_from([5.0, 8.0, 10.0, 10.0, 10.0]))
        rows.append(line(draw(st.sampled_from(["A", "B", "C"])), when, price, f"O{i}",
                         product=draw(st.sampled_from(["p", "q"]))))
    return pd.DataFrame(rows)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=priced_logs(), factor=st.sampled_from([0.1, 3.0]), drop=st.booleans())
def test_later_prices_and_purchases_never_change_the_behavioural_features(log, factor, drop) -> None:
    """Repricing or removing every line after the cutoff (which moves later usual prices and
    'bought before' flags) leaves the cutoff's features as they were."""
    future = log["timestamp"] > MID_MARCH
    changed = log[~future] if drop else log.assign(
        unit_price=np.where(future, log["unit_price"] * factor, log["unit_price"]),
        amount=np.where(future, log["amount"] * factor, log["amount"]))
    columns = ["customer_id", "below_usual_price_share_365d", "below_usual_spend_share_365d",
               "repeat_line_share_365d", "product_repeat_rate_365d", "purchase_gap_cv"]
    before, _ = compute_snapshots({"transactions": log}, [MID_MARCH], CONFIG, with_labels=False)
    after, _ = compute_snapshots({"transactions": changed}, [MID_MARCH], CONFIG, with_labels=False)
    pd.testing.assert_frame_equal(before[columns], after[columns])


# ---------------------------------------------------------------- simulator
@pytest.fixture(scope="module")
def simulated():
    params = parse_params(small_params_dict(simulate={"n_customers": 1500}))
    data = simulate(params.simulate)
    cutoff = scoring_cutoff(params.features, data.transactions["timestamp"].max())
    return params, data, cutoff


def _segments(params, data, cutoff, tables):
    frame, _ = compute_snapshots({name: getattr(data, name) for name in tables}, [cutoff], params.features,
                                 with_labels=False)
    return frame, assign_segments(frame, params.score.segments)


def test_personas_leave_their_signature_in_the_transactions(simulated) -> None:
    params, data, cutoff = simulated
    frame, _ = _segments(params, data, cutoff, ["transactions"])
    by_persona = frame.merge(data.ground_truth, on="customer_id").groupby("persona")[
        ["below_usual_price_share_365d", "repeat_line_share_365d", "purchase_gap_cv"]].mean()
    assert by_persona["below_usual_price_share_365d"].idxmax() == "brand_comparer"
    assert by_persona["below_usual_price_share_365d"].idxmin() != "brand_comparer"
    assert by_persona["repeat_line_share_365d"].idxmax() == "brand_user"
    assert by_persona["purchase_gap_cv"].idxmin() == "brand_user"  # the steadiest cadence


@pytest.mark.parametrize(("tables", "min_f1"), [(["transactions"], 0.75),
                                                (["transactions", "interactions", "customers"], 0.90)],
                         ids=["transactions-only", "all-tables"])
def test_segments_recover_personas(simulated, tables, min_f1) -> None:
    params, data, cutoff = simulated
    frame, assigned = _segments(params, data, cutoff, tables)
    agreement = agreement_with_truth(assigned, data.ground_truth)
    repeat_buyers = (frame["purchases_lifetime"] >= 2).to_numpy()
    assert assigned.loc[repeat_buyers, "segment"].isin(PERSONAS).mean() >= 0.9
    assert agreement["macro_f1"] >= min_f1
    assert set(assigned["segment"]) >= set(PERSONAS)


def test_simulator_can_withhold_tables(tmp_path) -> None:
    raw = small_params_dict(simulate={"n_customers": 200})
    run_simulate(parse_params(raw), tmp_path / "raw", tmp_path / "truth.parquet")
    assert (tmp_path / "raw" / "interactions.parquet").exists()
    raw["simulate"]["tables"] = ["transactions"]
    counts = run_simulate(parse_params(raw), tmp_path / "raw", tmp_path / "truth.parquet")
    assert list(counts) == ["transactions"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["transactions.parquet"]
    raw["simulate"]["tables"] = ["customers"]
    with pytest.raises(ConfigError, match=r"simulate\.tables"):
        parse_params(raw)


def test_segment_is_a_per_customer_function(simulated) -> None:
    params, data, cutoff = simulated
    frame, together = _segments(params, data, cutoff, ["transactions"])
    subset = frame.sample(frac=0.1, random_state=1).sort_index()
    alone = assign_segments(subset.reset_index(drop=True), params.score.segments)
    pd.testing.assert_frame_equal(alone, together.loc[subset.index].reset_index(drop=True))


# ---------------------------------------------------------------- contracts
def test_contract_types_are_mapped_through_params_and_unknown_ones_reported() -> None:
    frame = pd.DataFrame({"customer_id": ["a", "b", "c"], "purchases_lifetime": [5, 5, 5],
                          "days_since_first_purchase": [400] * 3, "contract_type": ["24M", "flex", "weird"],
                          "autopay": [0.0, 0.0, 0.0], "repeat_line_share_365d": [0.1] * 3,
                          "below_usual_price_share_365d": [0.1] * 3, "spend_365d": [100.0] * 3})
    default = assign_segments(frame, SegmentRules()).set_index("customer_id")
    assert unknown_contract_types(frame, SegmentRules()) == {"24M": 1, "flex": 1, "weird": 1}
    mapped = SegmentRules(contract_lock_in={"24M": 1.0, "flex": 0.1})
    result = assign_segments(frame, mapped).set_index("customer_id")
    assert unknown_contract_types(frame, mapped) == {"weird": 1}
    # Switching cost = mean(repeat 0.2, autopay 0, contract): the contract counts only where mapped.
    assert result.loc["a", "switching_cost_index"] == pytest.approx((0.2 + 0.0 + 1.0) / 3)
    assert result.loc["b", "switching_cost_index"] == pytest.approx((0.2 + 0.0 + 0.1) / 3)
    assert result.loc["c", "switching_cost_index"] == pytest.approx(default.loc["c", "switching_cost_index"])
    assert result.loc["c", "switching_cost_index"] == pytest.approx((0.2 + 0.0) / 2)


def test_contract_lock_in_values_are_validated() -> None:
    with pytest.raises(ValueError, match="lock-in values must be in"):
        SegmentRules(contract_lock_in={"annual": 2.0})


# ---------------------------------------------------------------- construct validity
AS_OF = pd.Timestamp("2024-06-01")


def _flagged(customer, day, amount, below=np.nan, repeat=0.0, is_return=False):
    return {"customer_id": customer, "ts": AS_OF + pd.Timedelta(days=day), "amount": float(amount),
            "is_return": is_return, "below_usual": below, "repeat_line": repeat}


def test_construct_validity_on_a_constructed_log() -> None:
    assigned = pd.DataFrame({"customer_id": ["a1", "a2", "u1", "c1", "c2"],
                             "segment": ["brand_advocate", "brand_advocate", "brand_user", "brand_comparer",
                                         "brand_comparer"]})
    lines = pd.DataFrame([
        _flagged("a1", -10, 100), _flagged("a2", -20, 100),  # before: 200 by advocates
        _flagged("a1", 5, 120, below=0.0), _flagged("a2", 30, 90, below=0.0, repeat=1.0),
        _flagged("a2", 91, 500),  # after the 90-day window: ignored
        _flagged("u1", -5, 50), _flagged("u1", 10, 50, below=0.0, repeat=1.0), _flagged("u1", 40, 50, repeat=1.0),
        _flagged("c1", -1, 40), _flagged("c1", 3, 20, below=1.0), _flagged("c1", 4, 20, below=0.0, repeat=1.0),
        _flagged("c1", 6, -20, below=1.0, is_return=True),  # returns are not purchases
        # c2 buys nothing after the as-of date: churned
        _flagged("x9", 10, 999, below=1.0),  # not assigned: ignored
    ])
    table = construct_validity(assigned, lines, AS_OF, 90).set_index("segment")
    # Rhythm needs two purchases in the window: advocates have one each (a2's day 91 is outside).
    assert table.loc["brand_advocate"].to_dict() == pytest.approx(
        {"customers": 2, "below_usual_price_share": 0.0, "repeat_line_share": 0.5, "churn_rate": 0.0,
         "spend_change": (120 + 90) / 200 - 1, "gap_cv_after": np.nan, "spend_cv_after": np.nan}, nan_ok=True)
    # u1 and c1 bought twice in the window: one gap, no rhythm to measure; their values do not vary.
    assert table.loc["brand_user"].to_dict() == pytest.approx(
        {"customers": 1, "below_usual_price_share": 0.0, "repeat_line_share": 1.0, "churn_rate": 0.0,
         "spend_change": 100 / 50 - 1, "gap_cv_after": np.nan, "spend_cv_after": 0.0}, nan_ok=True)
    # c1's return on day 6 is no purchase.
    assert table.loc["brand_comparer"].to_dict() == pytest.approx(
        {"customers": 2, "below_usual_price_share": 0.5, "repeat_line_share": 0.5, "churn_rate": 0.5,
         "spend_change": 40 / 40 - 1, "gap_cv_after": np.nan, "spend_cv_after": 0.0}, nan_ok=True)
    assert orderings(table.reset_index()) == {"comparers_buy_most_below_usual_price": True,
                                              "users_repeat_most": True, "advocates_churn_least": False}
    # The coarse levels' hypotheses: a measure known for fewer than the three segments does not hold;
    # one known for none of them cannot be measured.
    assert orderings(table.reset_index(), "dates") == {"advocates_churn_least": False,
                                                       "users_keep_cadence_most_regularly": None,
                                                       "comparers_time_most_irregularly": None,
                                                       "comparers_spend_most_volatile": False}


def test_an_ordering_the_outcomes_cannot_measure_is_not_said_to_hold() -> None:
    """A log of dates only has no purchase values: its spend ordering is unknown (None), not False
    and never True; the rhythm ordering is measured from the dates alone."""
    assigned = pd.DataFrame({"customer_id": ["a", "u", "c"],
                             "segment": ["brand_advocate", "brand_user", "brand_comparer"]})
    # Only the window's own purchases count: u's lapse before the as-of date is not its rhythm.
    days = {"a": [-3, 10, 12, 60], "u": [-60, 20, 50, 80], "c": [-40, 2, 30, 70]}
    lines = pd.DataFrame([_flagged(customer, day, np.nan) for customer, ds in days.items() for day in ds])
    table = construct_validity(assigned, lines, AS_OF, 90).set_index("segment")
    assert table["spend_cv_after"].isna().all() and table["spend_change"].isna().all()
    assert table.loc["brand_user", "gap_cv_after"] == 0.0  # gaps 30 and 30
    assert table.loc["brand_advocate", "gap_cv_after"] == pytest.approx(23 / 25)  # gaps 2 and 48
    assert table.loc["brand_comparer", "gap_cv_after"] == pytest.approx(6 / 34)  # gaps 28 and 40
    held = orderings(table.reset_index(), "dates")
    assert held["comparers_spend_most_volatile"] is None
    assert held["users_keep_cadence_most_regularly"] is True
    assert held["comparers_time_most_irregularly"] is False  # the advocate's timing is the most irregular
    assert held["advocates_churn_least"] is False  # nobody churned: a three-way tie


def test_construct_validity_report_reads_history_and_later_outcomes(tmp_path) -> None:
    """History (up to the as-of date) from the scored extract, outcomes after it from a later one;
    lines of the later extract before the as-of date are not read twice."""
    log = _usual_price_log()
    later = pd.concat([log, pd.DataFrame([line("N", "2024-03-10", 8, "N4", product="p")])], ignore_index=True)
    history = log[log["timestamp"] <= MARCH]
    history.to_parquet(tmp_path / "history.parquet")
    later.to_parquet(tmp_path / "later.parquet")
    scores = pd.DataFrame({"customer_id": ["N", "O0"], "segment": ["brand_comparer", "brand_advocate"]})
    report = construct_validity_report(scores, str(tmp_path / "history.parquet"), str(tmp_path / "later.parquet"),
                                       MARCH, 30)
    comparer = report["per_segment"]["brand_comparer"]
    assert comparer["customers"] == 1 and comparer["churn_rate"] == 0.0
    assert comparer["repeat_line_share"] == 1.0  # p was bought in February
    assert comparer["below_usual_price_share"] == 1.0  # 8 against March's usual price of 9.4
    assert report["per_segment"]["brand_advocate"]["churn_rate"] == 1.0
    assert "| brand_comparer | 1 |" in report["markdown"]
