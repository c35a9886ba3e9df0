"""Point-in-time behavioural features and churn labels, for many cutoffs in one sweep.

The point-in-time rule: a cutoff is an instant (a date means its midnight, UTC). An event at
time ``t`` is history for cutoff ``c`` when ``t <= c``; it can only count towards that cutoff's
label when ``c + lead < t <= c + lead + horizon``. Nothing later than ``c`` reaches a feature.

Every feature is defined once in :func:`feature_definitions` (name, family, kind, window, SQL,
description). The SQL that computes them, the feature catalog and the model's feature list are
all generated from that one list.

How all cutoffs are computed in one sweep, without joining every event to every cutoff:

* windowed sums use running totals per customer: the sum over ``(c - w, c]`` is the running
  total as of ``c`` minus the one as of ``c - w``, each found by an ASOF join, so the work
  grows with the number of events plus (customers x cutoffs), not with their product;
* "last" features (last NPS, last complaint) are one ASOF join on the filtered events;
* distinct counts in a window (categories, products) turn each key's purchases into coverage
  intervals ``[first, last + w)``: +1 where one starts, -1 where it ends; the count at ``c`` is
  the running total of those edges as of ``c``;
* ratios, trends and spreads are derived from those sums in SQL.
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
import pandas as pd

from churnlens.config import FeaturesConfig

log = logging.getLogger(__name__)

Family = Literal["purchase_frequency", "interaction", "emotional", "economic", "differentiation", "switching_cost"]
Kind = Literal["history", "window", "last", "distinct", "customers", "derived"]
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
    * ``derived``: SQL over other features' names.

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
    return f"(epoch({a}) - epoch({b})) / {DAY_SECONDS}"


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
                f"contract_term_months * 30.4375 - fmod({_days('cutoff', 'signup_date')}, "
                f"contract_term_months * 30.4375) END",
                "Days until the current contract term renews (terms repeat from signup).",
                requires=("contract_term_months", "signup_date")),
        Feature("autopay", sc, "customers", "CAST(autopay AS DOUBLE)",
                "1 if the customer pays by autopay / direct debit.", requires=("autopay",)),
        Feature("plan_price", sc, "customers", "plan_price", "Recurring plan price.", requires=("plan_price",)),
    ]
    names = [f.name for f in features]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"feature names must be unique; duplicated: {sorted(duplicated)}")
    return features


# --------------------------------------------------------------------------- catalogue
def feature_catalog_markdown(features: list[Feature]) -> str:
    lines = ["# Feature catalog", "",
             "Generated from `churnlens.features.feature_definitions`; do not edit by hand.", "",
             "Point-in-time rule: history is every event with timestamp <= cutoff.", ""]
    for family in FAMILIES:
        lines += [f"## {family.replace('_', ' ')}", "", "| feature | kind | window | meaning |", "|---|---|---|---|"]
        for f in (f for f in features if f.family == family and not f.internal):
            window = f"{f.window_days} d" if f.window_days else "all history" if f.kind == "history" else ""
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
    if feature.kind == "history":
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
    return list(pd.date_range(start, end, freq=f"{grid.every_days}D"))


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


def _prepare_events(con: duckdb.DuckDBPyConnection, available: dict[str, set[str]]) -> None:
    tx = available["transactions"]
    is_return = "is_return" if "is_return" in tx else "amount < 0"
    optional = [c for c in ("order_id", "quantity", "unit_price", "list_price", "product_id", "category") if c in tx]
    price_ratio = "NULL::DOUBLE AS price_ratio"
    if {"unit_price", "category"} <= tx:
        # Point-in-time price level: the category's median price in the calendar month *before* the
        # line's month, so a line's ratio depends on earlier data only, never on the cutoff.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE category_month_median AS
            SELECT category, date_trunc('month', timestamp) + INTERVAL 1 MONTH AS month,
                   median(unit_price) AS median_price
            FROM src_transactions WHERE NOT ({is_return}) AND unit_price > 0 GROUP BY ALL
        """)
        price_ratio = ("unit_price / nullif((SELECT median_price FROM category_month_median m WHERE "
                       "m.category = t.category AND m.month = date_trunc('month', t.timestamp)), 0) AS price_ratio")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE lines AS
        SELECT customer_id, timestamp AS ts, amount, {is_return} AS is_return
               {''.join(', ' + c for c in optional)}, {price_ratio}
        FROM src_transactions t
    """)
    # Without order ids, lines of one customer at the same instant form one order.
    order_key = "coalesce(order_id, CAST(ts AS VARCHAR))" if "order_id" in tx else "CAST(ts AS VARCHAR)"
    # A purchase is an order holding at least one non-return line; returns alone are not purchases.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE orders AS
        SELECT customer_id, min(ts) AS ts, sum(amount) FILTER (NOT is_return) AS value
        FROM lines GROUP BY customer_id, {order_key}
        HAVING count(*) FILTER (NOT is_return) > 0
    """)
    # Running purchase statistics: each row holds what was known right after that purchase.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE purchase_history AS
        SELECT customer_id, ts AS last_ts,
               min(ts) OVER w AS first_ts,
               count(*) OVER w AS n_orders,
               coalesce(sum(gap) OVER w, 0) AS gap_sum,
               coalesce(sum(gap * gap) OVER w, 0) AS gap_sq_sum
        FROM (SELECT *, (epoch(ts) - epoch(lag(ts) OVER (PARTITION BY customer_id ORDER BY ts))) / 86400.0 AS gap
              FROM orders)
        WINDOW w AS (PARTITION BY customer_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    """)
    if "interactions" in available:
        value = "value" if "value" in available["interactions"] else "NULL::DOUBLE AS value"
        con.execute(f"CREATE OR REPLACE TEMP VIEW interactions AS "
                    f"SELECT customer_id, timestamp AS ts, type, {value} FROM src_interactions")


def _population(con: duckdb.DuckDBPyConnection, config: FeaturesConfig, available: dict[str, set[str]]) -> None:
    """(customer, cutoff) pairs active at each cutoff, with the running history as of the cutoff."""
    cancelled = ""
    if "customers" in available and "cancellation_date" in available["customers"]:
        cancelled = ("AND NOT EXISTS (SELECT 1 FROM src_customers x WHERE x.customer_id = k.customer_id "
                     "AND x.cancellation_date <= c.cutoff)")
    # ASOF: for each customer and cutoff, the running statistics of the last purchase <= cutoff.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE population AS
        SELECT k.customer_id, c.cutoff, h.* EXCLUDE (customer_id)
        FROM (SELECT DISTINCT customer_id FROM orders) k
        CROSS JOIN cutoffs c
        ASOF JOIN purchase_history h ON h.customer_id = k.customer_id AND h.last_ts <= c.cutoff
        WHERE h.last_ts > c.cutoff - INTERVAL {config.active_lookback_days} DAY {cancelled}
    """)


def _window_sql(source: str, features: list[Feature]) -> str:
    """Windowed sums as differences of running totals found by ASOF joins at each window edge."""
    measures = {f.name: f.expression for f in features}
    edges = sorted({f.offset_days for f in features} | {f.offset_days + f.window_days for f in features})
    totals = ", ".join(f"sum({expr}) AS {quote_name(name)}" for name, expr in measures.items())
    running = ", ".join(f"sum({quote_name(name)}) OVER w AS {quote_name(name)}" for name in measures)
    joins, values = [], []
    for edge in edges:
        joins.append(f"ASOF LEFT JOIN running e{edge} ON e{edge}.customer_id = p.customer_id "
                     f"AND e{edge}.ts <= p.cutoff - INTERVAL {edge} DAY")
    for f in features:
        upper, lower = f.offset_days, f.offset_days + f.window_days
        values.append(f"coalesce(e{upper}.{quote_name(f.name)}, 0) - coalesce(e{lower}.{quote_name(f.name)}, 0) "
                      f"AS {quote_name(f.name)}")
    return f"""
        WITH per_instant AS (
            SELECT customer_id, ts, {totals} FROM {source} GROUP BY customer_id, ts
        ),
        running AS MATERIALIZED (  -- read by one ASOF join per window edge: compute it once
            SELECT customer_id, ts, {running} FROM per_instant
            WINDOW w AS (PARTITION BY customer_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        )
        SELECT p.customer_id, p.cutoff, {', '.join(values)}
        FROM population p {' '.join(joins)}
    """


def _last_sql(feature: Feature) -> str:
    """Value of the latest matching event at or before the cutoff, within the lookback window."""
    return f"""
        SELECT p.customer_id, p.cutoff,
               CASE WHEN e.ts > p.cutoff - INTERVAL {feature.window_days} DAY THEN {_qualify(feature.expression)} END
                 AS {quote_name(feature.name)}
        FROM population p
        ASOF LEFT JOIN (SELECT customer_id, ts, max(value) AS value FROM {feature.source}
                        WHERE {feature.where} GROUP BY customer_id, ts) e
          ON e.customer_id = p.customer_id AND e.ts <= p.cutoff
    """


def _qualify(expression: str) -> str:
    """Point the bare names of a 'last' expression at the joined event (e) and population (p)."""
    return re.sub(r"\bcutoff\b", "p.cutoff", re.sub(r"\b(ts|value)\b", r"e.\1", expression))


def _distinct_sql(feature: Feature) -> str:
    """Distinct keys bought in (cutoff - w, cutoff], via coverage intervals (see module docstring)."""
    w, key = feature.window_days, feature.expression
    return f"""
        WITH bought AS (
            SELECT DISTINCT customer_id, {key} AS key, ts FROM lines WHERE NOT is_return AND {key} IS NOT NULL
        ),
        neighbours AS (
            SELECT *, lag(ts) OVER k AS previous, lead(ts) OVER k AS next FROM bought
            WINDOW k AS (PARTITION BY customer_id, key ORDER BY ts)
        ),
        edges AS (
            SELECT customer_id, ts AS edge_ts, 1 AS delta FROM neighbours
            WHERE previous IS NULL OR ts >= previous + INTERVAL {w} DAY
            UNION ALL
            SELECT customer_id, ts + INTERVAL {w} DAY AS edge_ts, -1 AS delta FROM neighbours
            WHERE next IS NULL OR next >= ts + INTERVAL {w} DAY
        ),
        running AS MATERIALIZED (
            SELECT customer_id, edge_ts, sum(delta) OVER (PARTITION BY customer_id ORDER BY edge_ts
                                                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS active
            FROM (SELECT customer_id, edge_ts, sum(delta) AS delta FROM edges GROUP BY ALL)
        )
        SELECT p.customer_id, p.cutoff, coalesce(r.active, 0) AS {quote_name(feature.name)}
        FROM population p ASOF LEFT JOIN running r ON r.customer_id = p.customer_id AND r.edge_ts <= p.cutoff
    """


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


def _snapshot_sql(plan: FeaturePlan, config: FeaturesConfig, available: dict[str, set[str]],
                  with_labels: bool) -> str:
    parts: list[tuple[str, str]] = []  # (sql keyed by customer_id, cutoff; alias)
    for source in ("orders", "lines", "interactions"):
        group = [f for f in plan.features if f.kind == "window" and f.source == source]
        if group:
            parts.append((_window_sql(source, group), f"w_{source}"))
    for f in plan.features:
        if f.kind == "last":
            parts.append((_last_sql(f), f"l_{f.name}"))
        elif f.kind == "distinct":
            parts.append((_distinct_sql(f), f"d_{f.name}"))
    customer_features = [f for f in plan.features if f.kind == "customers"]
    if customer_features:
        columns = ", ".join(f"{f.expression} AS {quote_name(f.name)}" for f in customer_features)
        parts.append((f"SELECT p.customer_id, p.cutoff, {columns} FROM population p "
                      "LEFT JOIN src_customers USING (customer_id)", "profile"))
    if with_labels:
        parts.append((_labels_sql(config, available), "labels"))

    history = ", ".join(f"{f.expression} AS {quote_name(f.name)}" for f in plan.features if f.kind == "history")
    ctes = ",\n".join(f"{alias} AS ({sql})" for sql, alias in parts)
    joins = " ".join(f"LEFT JOIN {alias} USING (customer_id, cutoff)" for _, alias in parts)
    derived = _inline_derived(plan.features)
    outputs = []
    for f in plan.public:
        expression = derived.get(f.name, quote_name(f.name))
        outputs.append(f"CAST({expression} AS {'VARCHAR' if f.categorical else 'DOUBLE'}) AS {quote_name(f.name)}")
    label = ", churned" if with_labels else ""
    return f"""
        WITH base AS (SELECT customer_id, cutoff, {history} FROM population){',' if ctes else ''}
        {ctes}
        SELECT customer_id, cutoff, {', '.join(outputs)}{label}
        FROM base {joins}
        ORDER BY customer_id, cutoff
    """


def _labels_sql(config: FeaturesConfig, available: dict[str, set[str]]) -> str:
    """churned per (customer, cutoff), looking only at ``(cutoff + lead, cutoff + lead + horizon]``.

    The partial-churn comparison uses spend in the horizon-long period up to the cutoff, which
    is history, so it leaks nothing.
    """
    lead, end, horizon = config.lead_days, config.lead_days + config.horizon_days, config.horizon_days
    has_cancellations = "customers" in available and "cancellation_date" in available["customers"]
    if config.label == "cancellation" and not has_cancellations:
        raise ValueError(
            f"features.label={config.label!r} needs a customers table with cancellation_date; map it in "
            "ingest.customers.columns or use label: no_purchase"
        )
    cancelled = (f"EXISTS (SELECT 1 FROM src_customers c WHERE c.customer_id = w.customer_id "
                 f"AND c.cancellation_date > w.cutoff + INTERVAL {lead} DAY "
                 f"AND c.cancellation_date <= w.cutoff + INTERVAL {end} DAY)") if has_cancellations else "false"
    rule = {"no_purchase": "w.purchases = 0", "cancellation": cancelled,
            "no_purchase_or_cancellation": f"w.purchases = 0 OR {cancelled}"}[config.label]
    if config.partial_churn_below is not None:
        rule = f"({rule}) OR w.spend < {config.partial_churn_below} * w.spend_before"
    return f"""
        WITH w AS (
            SELECT p.customer_id, p.cutoff,
                   count(*) FILTER (WHERE o.ts > p.cutoff + INTERVAL {lead} DAY) AS purchases,
                   coalesce(sum(o.value) FILTER (WHERE o.ts > p.cutoff + INTERVAL {lead} DAY), 0) AS spend,
                   coalesce(sum(o.value) FILTER (WHERE o.ts <= p.cutoff), 0) AS spend_before
            FROM population p
            LEFT JOIN orders o ON o.customer_id = p.customer_id
                 AND o.ts > p.cutoff - INTERVAL {horizon} DAY AND o.ts <= p.cutoff + INTERVAL {end} DAY
            GROUP BY p.customer_id, p.cutoff
        )
        SELECT w.customer_id, w.cutoff, ({rule}) AS churned FROM w
    """


class _Engine:
    """A DuckDB session holding the prepared events and the population for some cutoffs."""

    def __init__(self, tables: dict[str, pd.DataFrame | str | None], cutoffs: list[pd.Timestamp],
                 config: FeaturesConfig, features: list[Feature] | None):
        self._spill = tempfile.TemporaryDirectory(prefix="churnlens-features-")
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f"SET memory_limit = '{config.memory_limit}'")
        self.con.execute(f"SET temp_directory = '{self._spill.name}'")
        self.available = _register_sources(self.con, tables)
        definitions = features if features is not None else feature_definitions(config.windows_days)
        self.plan = plan_features(definitions, self.available)
        frame = pd.DataFrame({"cutoff": pd.to_datetime(pd.Series(cutoffs, dtype="datetime64[us]"))})
        self.con.register("cutoff_frame", frame)
        self.con.execute("CREATE OR REPLACE TEMP TABLE cutoffs AS SELECT CAST(cutoff AS TIMESTAMP) AS cutoff "
                         "FROM cutoff_frame")
        _prepare_events(self.con, self.available)
        _population(self.con, config, self.available)
        self.config = config

    def sql(self, with_labels: bool) -> str:
        return _snapshot_sql(self.plan, self.config, self.available, with_labels)

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
        result = engine.con.execute(engine.sql(with_labels)).fetchdf()
        plan = engine.plan
    result["cutoff"] = result["cutoff"].astype("datetime64[us]")
    for name in plan.categorical:
        result[name] = result[name].astype("string")
    return result, plan


def write_snapshots(tables: dict[str, pd.DataFrame | str | None], cutoffs: list[pd.Timestamp],
                    config: FeaturesConfig, target: Path, label_complete_until: pd.Timestamp | None = None
                    ) -> FeaturePlan:
    """Like :func:`compute_snapshots`, streamed by DuckDB straight into a Parquet file (atomically),
    with ``label_complete`` = the cutoff's label window ends by ``label_complete_until``."""
    from churnlens.io import atomic_path

    span = config.lead_days + config.horizon_days
    complete = (f"cutoff + INTERVAL {span} DAY <= TIMESTAMP '{label_complete_until}'"
                if label_complete_until is not None else "false")
    with _Engine(tables, cutoffs, config, None) as engine, atomic_path(target) as temporary:
        engine.con.execute(f"COPY (SELECT *, {complete} AS label_complete FROM ({engine.sql(True)}) "
                           f"ORDER BY customer_id, cutoff) TO '{temporary}' (FORMAT parquet, COMPRESSION zstd)")
        return engine.plan


def data_span(tables: dict[str, pd.DataFrame | str | None]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last transaction timestamp."""
    with duckdb.connect() as con:
        _register_sources(con, {"transactions": tables["transactions"]})
        first, last = con.execute("SELECT min(timestamp), max(timestamp) FROM src_transactions").fetchone()
    if first is None:
        raise ValueError("features: the transactions table is empty")
    return pd.Timestamp(first), pd.Timestamp(last)
