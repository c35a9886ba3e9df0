"""Point-in-time behavioural features and churn labels, for many cutoffs in one sweep.

The point-in-time rule: a cutoff is an instant (a date means its midnight, UTC). An event at
time ``t`` is history for cutoff ``c`` when ``t <= c``; it can only count towards that cutoff's
label when ``c + lead < t <= c + lead + horizon``. Nothing later than ``c`` reaches a feature.

Every feature is defined once in :func:`feature_definitions` (name, family, kind, window, SQL,
description). The SQL that computes them, the feature catalog and the model's feature list are
all generated from that one list.

How all cutoffs are computed in one sweep, without joining every event to every cutoff:

* DuckDB prepares the events (orders, lines, interactions keyed by a dense customer code) and
  evaluates every SQL expression of the definitions: per-event measures, then, per
  (customer, cutoff) row, history, profile and derived features;
* :mod:`churnlens.timegrid` turns per-event measures into as-of values: the sum over
  ``(c - w, c]`` is the running total as of ``c`` minus the one as of ``c - w``, and all running
  totals at all the instants needed (every cutoff minus every window edge) come from one
  scatter-add and one cumulative sum, so the work grows with events plus customers x instants,
  not with events x cutoffs; "last" features (last NPS, last complaint) are a running latest;
* distinct counts in a window (categories, products) OR each (customer, key)'s purchases into a
  bit mask of the cutoffs whose window holds them, and count the bits;
* customers are processed in blocks, so memory is bounded by the block, not the customer base.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from churnlens import timegrid
from churnlens.config import FeaturesConfig

log = logging.getLogger(__name__)

Family = Literal["purchase_frequency", "interaction", "emotional", "economic", "differentiation", "switching_cost"]
Kind = Literal["history", "window", "last", "distinct", "customers", "derived", "btyd"]
EventSource = Literal["orders", "lines", "interactions"]
FAMILIES: tuple[Family, ...] = (
    "purchase_frequency", "interaction", "emotional", "economic", "differentiation", "switching_cost",
)
DAY_SECONDS = 86400.0


@dataclass(frozen=True)
class Feature:
    """One feature, evaluated per (customer, cutoff). What ``expression`` means depends on ``kind``:

    * ``history``: SQL over the customer's running purchase statistics as of the last purchase at
      or before the cutoff (``n_orders``, ``first_ts``, ``last_ts``, ``gap_sum``, ``gap_sq_sum``);
    * ``window``: a per-event measure summed over ``source`` events with
      ``cutoff - offset - window < ts <= cutoff - offset`` (``1`` counts events);
    * ``last``: a value of the latest ``source`` event matching ``where`` within ``window`` days;
    * ``distinct``: a column whose distinct values are counted over the window (purchases only);
    * ``customers``: SQL over the customer's profile row and ``cutoff``;
    * ``derived``: SQL over other features' names;
    * ``btyd``: a BG/NBD quantity, from a model fitted on the cutoff's own rows (its customers'
      history statistics), by :func:`churnlens.bgnbd.with_btyd_features` on every engine.

    ``internal`` features are building blocks of derived ones: computed, never given to the model.
    """

    name: str
    family: Family
    kind: Kind
    expression: str
    description: str
    source: EventSource | None = None
    window_days: int | None = None
    offset_days: int = 0
    where: str = "true"
    requires: tuple[str, ...] = ()  # canonical columns that must be present in the source table
    categorical: bool = False
    internal: bool = False


def _days(a: str, b: str) -> str:
    # Microseconds, not epoch(): seconds would drop sub-second parts on some engines.
    return f"(epoch_us({a}) - epoch_us({b})) / {DAY_SECONDS * 1e6}"


def _windowed(template: Feature, windows: tuple[int, ...]) -> list[Feature]:
    return [
        replace(template, name=template.name.format(w=w), window_days=w,
                description=template.description.format(w=w))
        for w in windows
    ]


def _count(name: str, family: Family, source: EventSource, condition: str, window: int, description: str = "",
           offset: int = 0, requires: tuple[str, ...] = (), internal: bool = False) -> Feature:
    return Feature(name, family, "window", f"CASE WHEN {condition} THEN 1 ELSE 0 END", description, source, window,
                   offset, requires=requires, internal=internal)


def _sum(name: str, family: Family, source: EventSource, measure: str, window: int, description: str = "",
         offset: int = 0, requires: tuple[str, ...] = (), internal: bool = False) -> Feature:
    return Feature(name, family, "window", measure, description, source, window, offset, requires=requires,
                   internal=internal)


def _derived(name: str, family: Family, expression: str, description: str) -> Feature:
    return Feature(name, family, "derived", expression, description)


PURCHASED = "NOT is_return"
USUAL_PRICE_MONTHS = 3
USUAL_PRICE_MIN_LINES = 3
BELOW_USUAL = 0.95  # paid at least 5% under the product's usual price: a price drop, not rounding
DISCOUNTED = "NOT is_return AND list_price > unit_price"


def feature_definitions(windows: tuple[int, ...] = (30, 90, 365)) -> list[Feature]:
    """The full catalogue; ``windows`` expands the per-window templates."""
    long = max(windows)
    pf, it, em, ec, df_, sc = FAMILIES
    features: list[Feature] = [
        # ---- purchase frequency
        Feature("days_since_last_purchase", pf, "history", _days("cutoff", "last_ts"),
                "Recency: days from the last purchase to the cutoff."),
        Feature("days_since_first_purchase", pf, "history", _days("cutoff", "first_ts"),
                "Days from the first observed purchase to the cutoff."),
        Feature("purchases_lifetime", pf, "history", "n_orders",
                "Purchases (orders with at least one non-return line) up to the cutoff."),
        Feature("mean_purchase_gap_days", pf, "history", "gap_sum / nullif(n_orders - 1, 0)",
                "Mean days between consecutive purchases."),
        Feature("purchase_gap_std_days", pf, "history",
                "CASE WHEN n_orders > 1 THEN sqrt(greatest(gap_sq_sum / (n_orders - 1) "
                "- pow(gap_sum / (n_orders - 1), 2), 0)) END",
                "Standard deviation of the days between purchases (rhythm regularity)."),
        *_windowed(_sum("purchases_{w}d", pf, "orders", "1", 0, "Purchases in the {w} days up to the cutoff."),
                   windows),
        _sum("_purchases_recent_90d", pf, "orders", "1", 90, internal=True),
        _sum("_purchases_prior_90d", pf, "orders", "1", 90, offset=90, internal=True),
        _derived("purchase_trend_90d", pf, "ln((_purchases_recent_90d + 1) / (_purchases_prior_90d + 1))",
                 "log of (purchases in the last 90 days + 1) / (purchases in the 90 days before + 1)."),
        _count("_lines_365d", pf, "lines", "true", 365, internal=True),
        _count("_returned_lines_365d", pf, "lines", "is_return", 365, internal=True),
        _derived("return_rate_365d", pf, "_returned_lines_365d / nullif(_lines_365d, 0)",
                 "Share of transaction lines in the last 365 days that are returns or cancellations."),
        _derived("overdue_ratio", pf, "days_since_last_purchase / nullif(mean_purchase_gap_days, 0)",
                 "How overdue the customer is against their own rhythm (recency / mean gap)."),
        # ---- economic
        *_windowed(_sum("spend_{w}d", ec, "orders", "value", 0,
                        "Net spend of purchases in the {w} days up to the cutoff."), windows),
        _sum("_orders_365d", ec, "orders", "1", 365, internal=True),
        _sum("_spend_365d", ec, "orders", "value", 365, internal=True),
        _sum("_spend_squared_365d", ec, "orders", "value * value", 365, internal=True),
        _sum("_spend_recent_90d", ec, "orders", "greatest(value, 0)", 90, internal=True),
        _sum("_spend_prior_90d", ec, "orders", "greatest(value, 0)", 90, offset=90, internal=True),
        _derived("avg_order_value_365d", ec, "_spend_365d / nullif(_orders_365d, 0)",
                 "Mean purchase value over the last 365 days."),
        _derived("spend_trend_90d", ec, "ln((_spend_recent_90d + 1) / (_spend_prior_90d + 1))",
                 "log of (spend in the last 90 days + 1) / (spend in the 90 days before + 1)."),
        _derived("spend_volatility_365d", ec,
                 "CASE WHEN _orders_365d > 1 THEN sqrt(greatest((_spend_squared_365d - _spend_365d * _spend_365d "
                 "/ _orders_365d) / (_orders_365d - 1), 0)) / nullif(_spend_365d / _orders_365d, 0) END",
                 "Coefficient of variation of purchase values over 365 days."),
        _count("_purchased_lines_365d", ec, "lines", PURCHASED, 365, internal=True),
        _count("_discounted_lines_365d", ec, "lines", DISCOUNTED, 365, internal=True,
               requires=("list_price", "unit_price")),
        _sum("_discount_depth_sum_365d", ec, "lines",
             f"CASE WHEN {DISCOUNTED} THEN (list_price - unit_price) / list_price ELSE 0 END", 365, internal=True,
             requires=("list_price", "unit_price")),
        _derived("discount_share_365d", ec, "_discounted_lines_365d / nullif(_purchased_lines_365d, 0)",
                 "Share of purchased lines bought below list price (365 days)."),
        _derived("discount_depth_365d", ec, "_discount_depth_sum_365d / nullif(_discounted_lines_365d, 0)",
                 "Mean discount depth of discounted lines (365 days)."),
        _count("_priced_lines_365d", ec, "lines", f"{PURCHASED} AND price_ratio IS NOT NULL", 365, internal=True,
               requires=("unit_price", "category")),
        _sum("_price_ratio_sum_365d", ec, "lines", f"CASE WHEN {PURCHASED} THEN coalesce(price_ratio, 0) ELSE 0 END",
             365, internal=True, requires=("unit_price", "category")),
        _derived("price_vs_category_median_365d", ec, "_price_ratio_sum_365d / nullif(_priced_lines_365d, 0)",
                 "Mean of price paid / the category's median price in the calendar month before the purchase "
                 "(365 days)."),
        # ---- product differentiation
        Feature("distinct_categories_365d", df_, "distinct", "category",
                "Breadth: distinct categories bought in 365 days.", "lines", 365, requires=("category",)),
        Feature("distinct_products_365d", df_, "distinct", "product_id",
                "Distinct products bought in 365 days.", "lines", 365, requires=("product_id",)),
        _sum("_purchased_spend_365d", df_, "lines", f"CASE WHEN {PURCHASED} THEN amount ELSE 0 END", 365,
             internal=True),
        _sum("_premium_spend_365d", df_, "lines", f"CASE WHEN {PURCHASED} AND price_ratio > 1.5 THEN amount ELSE 0 END",
             365, internal=True, requires=("unit_price", "category")),
        _derived("premium_share_365d", df_, "_premium_spend_365d / nullif(_purchased_spend_365d, 0)",
                 "Share of spend on lines priced above 1.5x their category median (distinctive products)."),
        # ---- interaction
        *_windowed(_count("visits_{w}d", it, "interactions", "type = 'visit'", 0,
                          "Visits / logins in the {w} days up to the cutoff."), windows),
        _count("support_contacts_90d", it, "interactions", "type = 'support_contact'", 90,
               "Support contacts in 90 days."),
        _count("campaign_responses_365d", it, "interactions", "type = 'campaign_response'", 365,
               "Campaign responses in 365 days."),
        Feature("days_since_last_contact", it, "last", _days("cutoff", "ts"),
                f"Days since the last interaction of any type (null if none in {long} days).", "interactions", long),
        Feature("days_since_last_complaint", it, "last", _days("cutoff", "ts"),
                f"Days since the last complaint (null if none in {long} days).", "interactions", long,
                where="type = 'complaint'"),
        # ---- emotional
        Feature("last_nps", em, "last", "value", f"Latest NPS answer (0-10) within {long} days.", "interactions",
                long, where="type = 'survey' AND value IS NOT NULL"),
        _count("_surveys_365d", em, "interactions", "type = 'survey' AND value IS NOT NULL", 365, internal=True),
        _sum("_survey_sum_365d", em, "interactions", "CASE WHEN type = 'survey' THEN coalesce(value, 0) ELSE 0 END",
             365, internal=True),
        _derived("mean_nps_365d", em, "_survey_sum_365d / nullif(_surveys_365d, 0)", "Mean NPS answer over 365 days."),
        _count("complaints_365d", em, "interactions", "type = 'complaint'", 365, "Complaints in 365 days."),
        _count("complaints_90d", em, "interactions", "type = 'complaint'", 90, "Complaints in 90 days."),
        _count("praise_365d", em, "interactions", "type = 'praise'", 365, "Praise / compliments in 365 days."),
        _count("referrals_365d", em, "interactions", "type = 'referral'", 365, "Referrals made in 365 days."),
        _derived("praise_complaint_balance_365d", em,
                 "(praise_365d - complaints_365d) / (praise_365d + complaints_365d + 1.0)",
                 "(praise - complaints) / (praise + complaints + 1), in (-1, 1)."),
        # ---- switching cost
        Feature("tenure_days", sc, "customers", _days("cutoff", "signup_date"), "Days since signup.",
                requires=("signup_date",)),
        Feature("products_held", sc, "customers", "products_held", "Products / services held (profile attribute).",
                requires=("products_held",)),
        Feature("contract_type", sc, "customers", "coalesce(contract_type, 'unknown')", "Contract type (categorical).",
                requires=("contract_type",), categorical=True),
        Feature("days_to_contract_end", sc, "customers",
                f"CASE WHEN contract_term_months > 0 AND signup_date <= cutoff THEN "
                f"contract_term_months * 30.4375 - ({_days('cutoff', 'signup_date')}) % "
                f"(contract_term_months * 30.4375) END",
                "Days until the current contract term renews (terms repeat from signup).",
                requires=("contract_term_months", "signup_date")),
        Feature("autopay", sc, "customers", "CAST(autopay AS DOUBLE)",
                "1 if the customer pays by autopay / direct debit.", requires=("autopay",)),
        Feature("plan_price", sc, "customers", "plan_price", "Recurring plan price.", requires=("plan_price",)),
        *loyalty_features(),
    ]
    features += btyd_definitions()
    names = [f.name for f in features]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"feature names must be unique; duplicated: {sorted(duplicated)}")
    return features


BELOW_USUAL_LINE = f"{PURCHASED} AND usual_price_ratio < {BELOW_USUAL}"
USUAL_PRICED_LINE = f"{PURCHASED} AND usual_price_ratio IS NOT NULL"


def loyalty_features() -> list[Feature]:
    """Behavioural loyalty signals any purchase log supports (DOMAIN.md, "How the three attitudes
    can show in a bare purchase log"): price drops taken, repeat baskets, cadence regularity."""
    pf, _it, _em, ec, _df, _sc = FAMILIES
    priced = ("unit_price", "product_id")
    return [
        _count("_usual_priced_lines_365d", ec, "lines", USUAL_PRICED_LINE, 365, internal=True, requires=priced),
        _count("_below_usual_lines_365d", ec, "lines", BELOW_USUAL_LINE, 365, internal=True, requires=priced),
        _derived("below_usual_price_share_365d", ec, "_below_usual_lines_365d / nullif(_usual_priced_lines_365d, 0)",
                 f"Share of purchased lines (365 days) paid at least {round((1 - BELOW_USUAL) * 100)}% under the "
                 f"product's usual price: its median unit price in the {USUAL_PRICE_MONTHS} calendar months before "
                 f"the purchase month (lines of products with fewer than {USUAL_PRICE_MIN_LINES} sales then are "
                 "left out). Needs no list price."),
        _sum("_usual_priced_spend_365d", ec, "lines", f"CASE WHEN {USUAL_PRICED_LINE} THEN amount ELSE 0 END", 365,
             internal=True, requires=priced),
        _sum("_below_usual_spend_365d", ec, "lines", f"CASE WHEN {BELOW_USUAL_LINE} THEN amount ELSE 0 END", 365,
             internal=True, requires=priced),
        _derived("below_usual_spend_share_365d", ec,
                 "_below_usual_spend_365d / nullif(_usual_priced_spend_365d, 0)",
                 "Share of spend (365 days, lines with a usual price) bought in price drops, as in "
                 "`below_usual_price_share_365d`."),
        _count("_repeat_lines_365d", pf, "lines", f"{PURCHASED} AND repeat_line", 365, internal=True,
               requires=("product_id",)),
        _count("_product_lines_365d", pf, "lines", f"{PURCHASED} AND product_id IS NOT NULL", 365, internal=True,
               requires=("product_id",)),
        _derived("repeat_line_share_365d", pf, "_repeat_lines_365d / nullif(_product_lines_365d, 0)",
                 "Habit: share of purchased lines (365 days) on products this customer had bought before "
                 "(at an earlier instant, any time in their history)."),
        _derived("purchase_gap_cv", pf, "purchase_gap_std_days / nullif(mean_purchase_gap_days, 0)",
                 "Cadence irregularity: standard deviation / mean of the days between purchases "
                 "(0 = perfectly regular)."),
    ]


LIFETIME_DAYS = 36_500  # a 'distinct' window that holds every event of the data


def btyd_definitions() -> list[Feature]:
    """The buy-till-you-die signal: BG/NBD (Fader, Hardie & Lee 2005) fitted per cutoff on
    purchase-days up to the cutoff; its posterior quantities summarise recency and frequency the
    way a stationary buying process would, which trees struggle to learn from few customers."""
    pf = "purchase_frequency"
    return [
        Feature("purchase_days_lifetime", pf, "distinct", "purchase_day",
                "Distinct days (UTC) with a purchase up to the cutoff: BG/NBD's repeat transactions + 1.",
                "lines", LIFETIME_DAYS),
        Feature("btyd_p_alive", pf, "btyd", "probability_alive",
                "BG/NBD P(still active at the cutoff), from a fit on this cutoff's customers' purchase-days."),
        Feature("btyd_expected_purchases_horizon", pf, "btyd", "expected_purchases",
                "BG/NBD expected purchase-days in the label horizon after the cutoff (same per-cutoff fit)."),
        Feature("btyd_p_no_purchase_horizon", pf, "btyd", "probability_no_purchase",
                "BG/NBD P(no purchase in the label horizon after the cutoff) (same per-cutoff fit)."),
    ]


# --------------------------------------------------------------------------- catalogue
def feature_catalog_markdown(features: list[Feature]) -> str:
    lines = ["# Feature catalog", "",
             "Generated from `churnlens.features.feature_definitions`; do not edit by hand.", "",
             "Point-in-time rule: history is every event with timestamp <= cutoff.", ""]
    for family in FAMILIES:
        lines += [f"## {family.replace('_', ' ')}", "", "| feature | kind | window | meaning |", "|---|---|---|---|"]
        for f in (f for f in features if f.family == family and not f.internal):
            window = ("all history" if f.kind in ("history", "btyd") or f.window_days == LIFETIME_DAYS
                      else f"{f.window_days} d" if f.window_days else "")
            lines.append(f"| `{f.name}` | {f.kind} | {window} | {f.description} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class FeaturePlan:
    features: list[Feature]  # kept, internal ones included
    left_out: dict[str, str]  # public feature -> why

    @property
    def public(self) -> list[Feature]:
        return [f for f in self.features if not f.internal]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.public]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.public if f.categorical]

    def families(self) -> dict[str, list[str]]:
        return {family: [f.name for f in self.public if f.family == family] for family in FAMILIES}


_SOURCE_TABLE = {"orders": "transactions", "lines": "transactions", "interactions": "interactions"}


def _table_of(feature: Feature) -> str:
    if feature.kind in ("history", "btyd"):
        return "transactions"
    if feature.kind == "customers":
        return "customers"
    return _SOURCE_TABLE[feature.source]


def _identifiers(expression: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"[a-z_][a-z0-9_]*", expression)))


def plan_features(features: list[Feature], available: dict[str, set[str]]) -> FeaturePlan:
    """Keep the features whose source table and columns exist; report the rest (never zero-fill)."""
    kept: list[Feature] = []
    left_out: dict[str, str] = {}
    why: dict[str, str] = {}
    all_names = {f.name for f in features}
    for feature in features:
        if feature.kind == "derived":
            missing = [n for n in _identifiers(feature.expression) if n in all_names and n not in {k.name for k in kept}]
            reason = f"needs {missing}: {why.get(missing[0], 'not computed')}" if missing else ""
        else:
            table = _table_of(feature)
            absent = [c for c in feature.requires if table in available and c not in available[table]]
            reason = (f"no {table} table" if table not in available
                      else f"{table} has no column {absent}" if absent else "")
        if reason:
            why[feature.name] = reason
            if not feature.internal:
                left_out[feature.name] = reason
        else:
            kept.append(feature)
    return FeaturePlan(kept, left_out)


# --------------------------------------------------------------------------- cutoffs
def midnight(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(day)


def cutoff_grid(config: FeaturesConfig, data_start: pd.Timestamp, data_end: pd.Timestamp) -> list[pd.Timestamp]:
    """Cutoffs from params; null start/end are derived from the data's time span."""
    grid = config.cutoffs
    start = midnight(grid.start) if grid.start else (data_start + pd.Timedelta(days=grid.min_history_days)).normalize()
    end = midnight(grid.end) if grid.end else data_end.normalize()
    if start > end:
        raise ValueError(
            f"features.cutoffs: the first cutoff {start.date()} is after the last {end.date()}; the data spans "
            f"{data_start.date()} .. {data_end.date()}. Lower features.cutoffs.min_history_days or set start/end"
        )
    step = grid.every_days
    labelled_span = end - pd.Timedelta(days=config.lead_days + config.horizon_days) - start
    if grid.short_history_every_days and labelled_span < pd.Timedelta(days=365):
        # A young log has few labelled cutoffs: a denser grid gives the split enough of them
        # (training rows are weighted per customer, so repeated customers do not dominate).
        step = min(step, grid.short_history_every_days)
    return list(pd.date_range(start, end, freq=f"{step}D"))


def scoring_cutoff(config: FeaturesConfig, data_end: pd.Timestamp) -> pd.Timestamp:
    """The as-of instant for scoring: params ``as_of`` or the midnight after the last event."""
    return midnight(config.as_of) if config.as_of else data_end.normalize() + pd.Timedelta(days=1)


def label_complete(cutoffs: list[pd.Timestamp], config: FeaturesConfig, data_end: pd.Timestamp) -> dict:
    """A cutoff's label is trustworthy only if its whole window lies inside the observed data."""
    span = pd.Timedelta(days=config.lead_days + config.horizon_days)
    return {c: bool(c + span <= data_end) for c in cutoffs}


# --------------------------------------------------------------------------- SQL
def _register_sources(con: duckdb.DuckDBPyConnection, tables: dict[str, pd.DataFrame | str | None]
                      ) -> dict[str, set[str]]:
    """Expose canonical tables (DataFrames or Parquet paths) as DuckDB views; return their columns."""
    available: dict[str, set[str]] = {}
    for name, table in tables.items():
        if table is None:
            continue
        if isinstance(table, pd.DataFrame):
            con.register(f"src_{name}", table)
        else:
            con.execute(f"CREATE OR REPLACE VIEW src_{name} AS SELECT * FROM read_parquet('{table}')")
        available[name] = {row[0] for row in con.execute(f"DESCRIBE src_{name}").fetchall()}
    if "transactions" not in available:
        raise ValueError("features: a transactions table is required")
    return available


Step = tuple[str, str]  # (relation name, the SELECT that defines it)
EVENT_RELATIONS = ("lines", "orders", "interactions")


def usual_price_step(is_return: str) -> Step:
    """A product's usual price for each calendar month: the median unit price of its purchased
    lines in the ``USUAL_PRICE_MONTHS`` calendar months *before* that month (at least
    ``USUAL_PRICE_MIN_LINES`` lines, else unknown). Earlier data only, and no list price needed."""
    shifted = " UNION ALL ".join(
        f"SELECT product_id, date_trunc('month', timestamp) + INTERVAL {k} MONTH AS month, unit_price "
        f"FROM src_transactions WHERE NOT ({is_return}) AND unit_price > 0"
        for k in range(1, USUAL_PRICE_MONTHS + 1))
    return ("product_usual_price", f"""
        SELECT product_id, month, median(unit_price) AS usual_price FROM ({shifted}) s
        GROUP BY product_id, month HAVING count(*) >= {USUAL_PRICE_MIN_LINES}""")


def event_steps(available: dict[str, set[str]]) -> list[Step]:
    """The canonical event relations as portable SQL over the ``src_`` tables, keyed by
    customer_id: the one definition of a line, a purchase (order) and an interaction, shared by
    every engine. Steps come in dependency order."""
    tx = available["transactions"]
    is_return = "is_return" if "is_return" in tx else "amount < 0"
    optional = [c for c in ("unit_price", "list_price", "product_id", "category") if c in tx]
    steps: list[Step] = []
    price_ratio, price_join = "CAST(NULL AS DOUBLE) AS price_ratio", ""
    if {"unit_price", "category"} <= tx:
        # Point-in-time price level: the category's median price in the calendar month *before* the
        # line's month, so a line's ratio depends on earlier data only, never on the cutoff.
        steps.append(("category_month_median", f"""
            SELECT category, date_trunc('month', timestamp) + INTERVAL 1 MONTH AS month,
                   median(unit_price) AS median_price
            FROM src_transactions WHERE NOT ({is_return}) AND unit_price > 0
            GROUP BY category, date_trunc('month', timestamp) + INTERVAL 1 MONTH"""))
        price_ratio = "t.unit_price / nullif(m.median_price, 0) AS price_ratio"
        price_join = ("LEFT JOIN category_month_median m ON m.category = t.category "
                      "AND m.month = date_trunc('month', t.timestamp)")
    # Loyalty-segment measures per line, from a bare purchase log (DOMAIN.md).
    usual_ratio, usual_join = "CAST(NULL AS DOUBLE) AS usual_price_ratio", ""
    repeat, repeat_join = "CAST(NULL AS BOOLEAN) AS repeat_line", ""
    if {"unit_price", "product_id"} <= tx:
        steps.append(usual_price_step(is_return))
        usual_ratio = "t.unit_price / nullif(u.usual_price, 0) AS usual_price_ratio"
        usual_join = ("LEFT JOIN product_usual_price u ON u.product_id = t.product_id "
                      "AND u.month = date_trunc('month', t.timestamp)")
    if "product_id" in tx:
        # Bought before = an earlier purchase of the product by the same customer; the earliest
        # purchase is at or before the line, so later events can never change the flag.
        # A grouped minimum joined back, not a window: the same value without sorting every line.
        steps.append(("first_purchase", f"""
            SELECT customer_id, product_id, min(CASE WHEN NOT ({is_return}) THEN timestamp END) AS first_ts
            FROM src_transactions GROUP BY customer_id, product_id"""))
        repeat = "t.timestamp > f.first_ts AS repeat_line"
        repeat_join = ("LEFT JOIN first_purchase f ON f.customer_id = t.customer_id "
                       "AND f.product_id IS NOT DISTINCT FROM t.product_id")
    steps.append(("lines", f"""
        SELECT t.customer_id, t.timestamp AS ts, t.amount, {is_return} AS is_return
               {''.join(', t.' + c for c in optional)}, {price_ratio}, {usual_ratio}, {repeat},
               CAST(t.timestamp AS DATE) AS purchase_day
        FROM src_transactions t {price_join} {usual_join} {repeat_join}"""))
    # Without order ids, lines of one customer at the same instant form one order.
    order_key = "coalesce(order_id, CAST(timestamp AS VARCHAR))" if "order_id" in tx else "CAST(timestamp AS VARCHAR)"
    # A purchase is an order holding at least one non-return line; returns alone are not purchases.
    # The order value is summed in exact decimal arithmetic: a float sum depends on the order in
    # which a parallel engine meets the lines, and the same data must give the same bytes.
    steps.append(("orders", f"""
        SELECT customer_id, min(timestamp) AS ts,
               CAST(sum(CASE WHEN NOT ({is_return}) THEN CAST(amount AS DECIMAL(38, 9)) END) AS DOUBLE) AS value
        FROM src_transactions GROUP BY customer_id, {order_key}
        HAVING sum(CASE WHEN NOT ({is_return}) THEN 1 ELSE 0 END) > 0"""))
    if "interactions" in available:
        value = "value" if "value" in available["interactions"] else "CAST(NULL AS DOUBLE) AS value"
        steps.append(("interactions", f"SELECT customer_id, timestamp AS ts, type, {value} FROM src_interactions"))
    return steps


def _prepare_events(con: duckdb.DuckDBPyConnection, available: dict[str, set[str]]) -> None:
    """The event relations of :func:`event_steps` as tables keyed by a dense customer code, stored
    in code order so that one block of customers is a cheap range scan (DuckDB skips the other
    row groups)."""
    # Codes follow customer_id order, so output sorted by code is sorted by customer. Events are
    # stored in a total order (code first, then every column), because the grid sums them in
    # storage order and a float sum in another order can differ in its last bits.
    con.execute("""
        CREATE OR REPLACE TABLE customer_codes AS
        SELECT customer_id, CAST(row_number() OVER (ORDER BY customer_id) - 1 AS INTEGER) AS code
        FROM (SELECT DISTINCT customer_id FROM src_transactions)
    """)
    for name, body in event_steps(available):
        if name in EVENT_RELATIONS:
            body = (f"SELECT k.code, e.* EXCLUDE (customer_id) FROM ({body}) e "
                    "JOIN customer_codes k USING (customer_id) ORDER BY ALL")
        con.execute(f"CREATE OR REPLACE TABLE {name} AS {body}")
    if "customers" in available:
        con.execute("CREATE OR REPLACE TABLE customers AS SELECT * FROM src_customers")


def quote_name(name: str) -> str:
    return '"' + name + '"'


def _inline_derived(features: list[Feature]) -> dict[str, str]:
    """SQL for each derived feature with derived inputs replaced by their own SQL (any depth)."""
    derived = {f.name: f.expression for f in features if f.kind == "derived"}

    def expand(expression: str, depth: int = 0) -> str:
        if depth > 10:
            raise ValueError(f"derived features reference each other in a cycle: {expression}")
        return re.sub(r"\b[a-z_][a-z0-9_]*\b",
                      lambda m: f"({expand(derived[m.group(0)], depth + 1)})" if m.group(0) in derived else m.group(0),
                      expression)

    return {name: expand(expression) for name, expression in derived.items()}


def _last_columns(feature: Feature) -> tuple[str, str]:
    return f"{feature.name}__ts", f"{feature.name}__value"


def _last_expression(feature: Feature) -> str:
    """A 'last' expression over the latest matching event's ``ts`` / ``value`` columns."""
    ts, value = (quote_name(c) for c in _last_columns(feature))
    return re.sub(r"\bts\b", ts, re.sub(r"\bvalue\b", value, feature.expression))


def check_label_source(config: FeaturesConfig, available: dict[str, set[str]]) -> None:
    """A contractual label needs cancellation dates; say so before any work is done."""
    if config.label == "cancellation" and not has_cancellations(available):
        raise ValueError(
            f"features.label={config.label!r} needs a customers table with cancellation_date; map it in "
            "ingest.customers.columns or use label: no_purchase"
        )


def has_cancellations(available: dict[str, set[str]]) -> bool:
    return "customers" in available and "cancellation_date" in available["customers"]


def assembly_sql(plan: FeaturePlan, rows: str, raw_columns: list[str], with_labels: bool,
                 customers_table: str | None) -> str:
    """The SQL side of the definitions, shared by every engine: from ``rows`` (customer_id,
    cutoff and the engine's raw columns: running purchase statistics, window sums, distinct
    counts, latest events, churned) to the public features: history, profile, 'last' and derived
    expressions, cast to the output types, sorted by (customer_id, cutoff)."""
    selected = []
    for f in plan.features:
        if f.kind in ("history", "customers"):
            selected.append(f"{f.expression} AS {quote_name(f.name)}")
        elif f.kind == "last":
            selected.append(f"{_last_expression(f)} AS {quote_name(f.name)}")
    derived = _inline_derived(plan.features)
    outputs = [f"CAST({derived.get(f.name, quote_name(f.name))} AS {'VARCHAR' if f.categorical else 'DOUBLE'}) "
               f"AS {quote_name(f.name)}" for f in plan.public if f.kind != "btyd"]
    profile = f"LEFT JOIN {customers_table} c ON c.customer_id = r.customer_id" if customers_table else ""
    columns = ", ".join(["r.customer_id", "r.cutoff"] + [f"r.{quote_name(c)}" for c in raw_columns] + selected)
    return f"""
        WITH base AS (SELECT {columns} FROM ({rows}) r {profile})
        SELECT customer_id, cutoff, {', '.join(outputs)}{', churned' if with_labels else ''}
        FROM base ORDER BY customer_id, cutoff
    """


_US_PER_DAY = 86_400_000_000
_NEVER = np.iinfo(np.int64).max


class _Engine:
    """One DuckDB session holding the prepared events; computes snapshots block by block.

    DuckDB prepares the events and evaluates every SQL expression of the definitions (per-event
    measures, derived features, profile features); :mod:`churnlens.timegrid` turns per-event
    measures into as-of values at all cutoffs at once. Customers are processed in blocks so the
    memory used is bounded by the block, not by the customer base.
    """

    def __init__(self, tables: dict[str, pd.DataFrame | str | None], cutoffs: list[pd.Timestamp],
                 config: FeaturesConfig, features: list[Feature] | None):
        self._spill = tempfile.TemporaryDirectory(prefix="churnlens-features-")
        # A file-backed database keeps the prepared events compressed and lets DuckDB evict them to
        # disk, so memory_limit really bounds DuckDB's share of memory.
        self.con = duckdb.connect(str(Path(self._spill.name) / "events.duckdb"))
        for setting in ("TimeZone = 'UTC'", f"memory_limit = '{config.memory_limit}'",
                        f"temp_directory = '{self._spill.name}'",
                        # Measures are fetched one query at a time and must line up row by row.
                        "preserve_insertion_order = true"):
            self.con.execute(f"SET {setting}")
        self.available = _register_sources(self.con, tables)
        definitions = features if features is not None else feature_definitions(config.windows_days)
        self.plan = plan_features(definitions, self.available)
        self.config = config
        self.cutoffs = np.array(sorted({pd.Timestamp(c).value // 1000 for c in cutoffs}), dtype=np.int64)
        _prepare_events(self.con, self.available)
        self.n_customers = self.con.execute("SELECT count(*) FROM customer_codes").fetchall()[0][0]

    # ---------------------------------------------------------------- blocks
    def blocks(self, with_labels: bool, max_cells: int = 4_000_000, max_pairs: int = 600_000,
               max_events: int = 2_000_000):
        """Yield Arrow tables of finished snapshot rows, one block of customers at a time, in
        (customer_id, cutoff) order. A block is sized so that its dense customers x instants
        arrays, its output rows and its share of the events each stay within a bound."""
        if with_labels:
            check_label_source(self.config, self.available)
        n_instants = len(self._instants(with_labels))
        lines = self.con.execute("SELECT count(*) FROM lines").fetchall()[0][0]
        per_customer = max(lines, 1) / max(self.n_customers, 1)
        size = max(1, min(max_cells // max(n_instants, 1), max_pairs // max(len(self.cutoffs), 1),
                          int(max_events / per_customer)))
        for low in range(0, max(self.n_customers, 1), size):
            yield self._block(low, min(low + size, self.n_customers), with_labels)

    def _instants(self, with_labels: bool) -> np.ndarray:
        offsets = {0}
        for f in self.plan.features:
            if f.kind == "window":
                offsets |= {f.offset_days, f.offset_days + f.window_days}
        if with_labels:
            c = self.config
            offsets |= {-c.lead_days, -(c.lead_days + c.horizon_days), c.horizon_days}
        return np.unique(np.concatenate([self.cutoffs - o * _US_PER_DAY for o in offsets]))

    def _events(self, table: str, low: int, high: int, columns: str, where: str = "true") -> dict[str, np.ndarray]:
        return self.con.execute(f"SELECT {columns} FROM {table} WHERE code >= {low} AND code < {high} "
                                f"AND ({where})").fetchnumpy()

    def _block(self, low: int, high: int, with_labels: bool):
        n = high - low
        grid = timegrid.TimeGrid.of(self._instants(with_labels), n)
        cut_at = grid.position(self.cutoffs)

        def at(offset_days: int) -> np.ndarray:
            return grid.position(self.cutoffs - offset_days * _US_PER_DAY)

        orders = self._events("orders", low, high, f"code - {low} AS code, epoch_us(ts) AS t, value")
        on_grid = timegrid.EventsOnGrid(grid, orders["code"], orders["t"])
        n_orders, value = on_grid.running_sum(), on_grid.running_sum(orders["value"])
        last_ts = on_grid.running_max(orders["t"])
        first_ts = np.full(n, _NEVER, dtype=np.int64)
        np.minimum.at(first_ts, orders["code"], orders["t"])
        by_time = np.lexsort((orders["t"], orders["code"]))
        code_sorted, t_sorted = orders["code"][by_time], orders["t"][by_time]
        gap = np.where(np.r_[False, code_sorted[1:] == code_sorted[:-1]],
                       np.diff(t_sorted, prepend=t_sorted[:1]) / _US_PER_DAY, 0.0)
        gap_sq = timegrid.EventsOnGrid(grid, code_sorted, t_sorted).running_sum(gap * gap)

        # Population: a purchase at or before the cutoff, the latest within the lookback, not cancelled.
        cancelled_at = np.full(n, _NEVER, dtype=np.int64)
        if has_cancellations(self.available):
            rows = self.con.execute(f"""
                SELECT k.code - {low} AS code, epoch_us(min(c.cancellation_date)) AS t FROM customers c
                JOIN customer_codes k USING (customer_id)
                WHERE k.code >= {low} AND k.code < {high} AND c.cancellation_date IS NOT NULL GROUP BY k.code
            """).fetchnumpy()
            cancelled_at[rows["code"]] = rows["t"]
        lookback = self.config.active_lookback_days * _US_PER_DAY
        active = ((n_orders[:, cut_at] > 0) & (last_ts[:, cut_at] > self.cutoffs - lookback)
                  & (cancelled_at[:, None] > self.cutoffs))
        codes, which = np.nonzero(active)  # row-major: by customer, then cutoff
        cutoff = self.cutoffs[which]
        columns: dict[str, np.ndarray] = {
            "code": codes + low, "cutoff": cutoff,
            "n_orders": n_orders[codes, cut_at[which]], "first_ts": first_ts[codes],
            "last_ts": last_ts[codes, cut_at[which]],
            "gap_sum": (last_ts[codes, cut_at[which]] - first_ts[codes]) / _US_PER_DAY,
            "gap_sq_sum": gap_sq[codes, cut_at[which]],
        }
        self._window_features(columns, grid, low, high, codes, which, at)
        self._last_features(columns, grid, low, high, codes, which, cut_at)
        self._distinct_features(columns, low, high, n, codes, which)
        if with_labels:
            columns["churned"] = self._churned(n_orders, value, cancelled_at, codes, which, cut_at, at)
        return self._finish(columns, with_labels)

    def _window_features(self, columns, grid, low, high, codes, which, at) -> None:
        for source in ("orders", "lines", "interactions"):
            group = [f for f in self.plan.features if f.kind == "window" and f.source == source]
            if not group:
                continue
            events = self._events(source, low, high, f"code - {low} AS code, epoch_us(ts) AS t")
            on_grid = timegrid.EventsOnGrid(grid, events["code"], events["t"])
            running: dict[str, np.ndarray] = {}  # one running total per distinct measure
            for f in group:
                if f.expression not in running:
                    measure = None if f.expression == "1" else self._events(
                        source, low, high, f"CAST({f.expression} AS DOUBLE) AS m")["m"]
                    running[f.expression] = on_grid.running_sum(measure)
                total = running[f.expression]
                upper, lower = at(f.offset_days)[which], at(f.offset_days + f.window_days)[which]
                columns[f.name] = total[codes, upper] - total[codes, lower]

    def _last_features(self, columns, grid, low, high, codes, which, cut_at) -> None:
        for f in (f for f in self.plan.features if f.kind == "last"):
            events = self._events(f.source, low, high, f"code - {low} AS code, epoch_us(ts) AS t, "
                                  f"CAST(value AS DOUBLE) AS v", where=f.where)
            ts, value = timegrid.EventsOnGrid(grid, events["code"], events["t"]).latest(events["t"], events["v"])
            ts, value = ts[codes, cut_at[which]], value[codes, cut_at[which]]
            inside = (ts != timegrid.NO_TIME) & (ts > self.cutoffs[which] - f.window_days * _US_PER_DAY)
            ts_column, value_column = _last_columns(f)
            columns[ts_column] = np.where(inside, ts, 0)
            columns[ts_column + "__valid"] = inside
            columns[value_column] = np.where(inside, value, np.nan)

    def _distinct_features(self, columns, low, high, n, codes, which) -> None:
        for f in (f for f in self.plan.features if f.kind == "distinct"):
            events = self.con.execute(f"""
                SELECT l.code - {low} AS code, k.key_code, epoch_us(l.ts) AS t
                FROM lines l JOIN (SELECT key, CAST(row_number() OVER (ORDER BY key) - 1 AS BIGINT) AS key_code
                                   FROM (SELECT DISTINCT {f.expression} AS key FROM lines
                                         WHERE code >= {low} AND code < {high})) k ON l.{f.expression} = k.key
                WHERE l.code >= {low} AND l.code < {high} AND NOT l.is_return
            """).fetchnumpy()
            counts = timegrid.distinct_in_window(events["code"], events["key_code"], events["t"], self.cutoffs,
                                                 f.window_days * _US_PER_DAY, n)
            columns[f.name] = counts[codes, which]

    def _churned(self, n_orders, value, cancelled_at, codes, which, cut_at, at) -> np.ndarray:
        c = self.config
        start, end = at(-c.lead_days)[which], at(-(c.lead_days + c.horizon_days))[which]
        purchases = n_orders[codes, end] - n_orders[codes, start]
        cutoff = self.cutoffs[which]
        cancelled = ((cancelled_at[codes] > cutoff + c.lead_days * _US_PER_DAY)
                     & (cancelled_at[codes] <= cutoff + (c.lead_days + c.horizon_days) * _US_PER_DAY))
        churned = {"no_purchase": purchases == 0, "cancellation": cancelled,
                   "no_purchase_or_cancellation": (purchases == 0) | cancelled}[c.label]
        if c.partial_churn_below is not None:
            spend = value[codes, end] - value[codes, start]
            spend_before = value[codes, cut_at[which]] - value[codes, at(c.horizon_days)[which]]
            churned = churned | (spend < c.partial_churn_below * spend_before)
        return churned

    def _finish(self, columns: dict[str, np.ndarray], with_labels: bool):
        """Evaluate the SQL side of the definitions on one block of (customer, cutoff) rows."""
        arrays = {}
        for name, values in columns.items():
            if name in ("cutoff", "first_ts", "last_ts") or name.endswith("__ts"):
                valid = columns.get(name + "__valid")
                arrays[name] = pa.array(values, type=pa.int64(), mask=None if valid is None else ~valid
                                        ).cast(pa.timestamp("us"))
            elif not name.endswith("__valid"):
                arrays[name] = pa.array(values)
        rows = pa.table(arrays)
        self.con.register("block_rows", rows)
        raw = [c for c in rows.column_names if c not in ("code", "cutoff")]
        customer_rows = f"SELECT k.customer_id, {', '.join(['b.cutoff'] + [f'b.{quote_name(c)}' for c in raw])} " \
                        "FROM block_rows b JOIN customer_codes k USING (code)"
        customers = "customers" if "customers" in self.available else None
        result = self.con.sql(assembly_sql(self.plan, customer_rows, raw, with_labels, customers)).to_arrow_table()
        self.con.unregister("block_rows")
        return result

    def close(self) -> None:
        self.con.close()
        self._spill.cleanup()

    def __enter__(self) -> _Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compute_snapshots(tables: dict[str, pd.DataFrame | str | None], cutoffs: list[pd.Timestamp],
                      config: FeaturesConfig, with_labels: bool = True,
                      features: list[Feature] | None = None) -> tuple[pd.DataFrame, FeaturePlan]:
    """Features (and labels) for every active customer at every cutoff, in one sweep, as a DataFrame.

    ``tables`` maps canonical table names to DataFrames or Parquet paths; ``interactions``
    and ``customers`` may be missing, in which case their families are left out.
    Returns a frame keyed by (customer_id, cutoff), sorted, and the plan of kept features.
    """
    with _Engine(tables, cutoffs, config, features) as engine:
        result = pa.concat_tables(list(engine.blocks(with_labels))).to_pandas()
        plan = engine.plan
    result["cutoff"] = result["cutoff"].astype("datetime64[us]")
    for name in plan.categorical:
        result[name] = result[name].astype("string")
    return with_fitted_features(result, plan, config), plan


def with_fitted_features(frame: pd.DataFrame, plan: FeaturePlan, config: FeaturesConfig,
                         fits: dict | None = None) -> pd.DataFrame:
    """Append the features fitted per cutoff (BTYD) to finished snapshot rows; every engine ends
    with this one function, so they agree by construction."""
    from churnlens import bgnbd

    if not any(f.kind == "btyd" for f in plan.features):
        return frame
    return bgnbd.with_btyd_features(frame, config.horizon_days, fits)


def _fit_columns(plan: FeaturePlan) -> list[str]:
    from churnlens import bgnbd

    return ["customer_id", "cutoff", *bgnbd.BTYD_INPUTS] if any(f.kind == "btyd" for f in plan.features) else []


def write_snapshots(tables: dict[str, pd.DataFrame | str | None], cutoffs: list[pd.Timestamp],
                    config: FeaturesConfig, target: Path, label_complete_until: pd.Timestamp | None = None
                    ) -> FeaturePlan:
    """Like :func:`compute_snapshots`, streamed block by block into one Parquet file (atomically),
    with ``label_complete`` = the cutoff's label window ends by ``label_complete_until``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from churnlens.io import atomic_path

    from churnlens import bgnbd

    span = pd.Timedelta(days=config.lead_days + config.horizon_days)
    with _Engine(tables, cutoffs, config, None) as engine, atomic_path(target) as temporary:
        # Pass 1 streams the blocks (by customer) to a scratch file and keeps the few columns the
        # per-cutoff fits need; pass 2 appends the fitted features, batch by batch.
        scratch, fit_columns = Path(engine._spill.name) / "snapshots.parquet", _fit_columns(engine.plan)
        inputs, writer = [], None
        for block in engine.blocks(with_labels=True):
            if label_complete_until is None:
                complete = pa.array([False] * block.num_rows)
            else:
                limit = pa.scalar(pd.Timestamp(label_complete_until) - span, type=pa.timestamp("us"))
                complete = pc.less_equal(block["cutoff"], limit)
            block = block.append_column("label_complete", complete)
            if fit_columns:
                inputs.append(block.select(fit_columns))
            if writer is None:
                writer = pq.ParquetWriter(scratch if fit_columns else temporary, block.schema, compression="zstd")
            writer.write_table(block)
        writer.close()
        if fit_columns:
            fits = bgnbd.fits_per_cutoff(_cutoff_frame(pa.concat_tables(inputs)))
            writer = None
            for batch in pq.ParquetFile(scratch).iter_batches(batch_size=200_000):
                table = pa.Table.from_batches([batch])
                rows = _cutoff_frame(table.select(fit_columns))
                fitted = with_fitted_features(rows, engine.plan, config, fits)[list(bgnbd.BTYD_FEATURES)]
                for name in bgnbd.BTYD_FEATURES:
                    table = table.append_column(name, pa.array(fitted[name].to_numpy(dtype=np.float64)))
                # Same column order as compute_snapshots (and the Spark engine): the flag comes last.
                table = table.select([c for c in table.column_names if c != "label_complete"] + ["label_complete"])
                if writer is None:
                    writer = pq.ParquetWriter(temporary, table.schema, compression="zstd")
                writer.write_table(table)
            writer.close()
        return engine.plan


def _cutoff_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    frame["cutoff"] = frame["cutoff"].astype("datetime64[us]")
    return frame


def data_span(tables: dict[str, pd.DataFrame | str | None]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last transaction timestamp."""
    with duckdb.connect() as con:
        _register_sources(con, {"transactions": tables["transactions"]})
        first, last = con.execute("SELECT min(timestamp), max(timestamp) FROM src_transactions").fetchone()
    if first is None:
        raise ValueError("features: the transactions table is empty")
    return pd.Timestamp(first), pd.Timestamp(last)
