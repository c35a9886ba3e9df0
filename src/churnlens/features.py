"""Point-in-time behavioural features and churn labels, for many cutoffs in one sweep.

The point-in-time rule: a cutoff is an instant (a date means its midnight, UTC). An event at
time ``t`` is history for cutoff ``c`` when ``t <= c``; it can only count towards that cutoff's
label when ``c + lead < t <= c + lead + horizon``. Nothing later than ``c`` reaches a feature.

Every feature is defined once in :data:`FEATURES` (name, family, source, window, SQL
expression, description). The SQL that computes them, the feature catalog and the model's
feature list are all generated from that one list.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, replace
from typing import Literal

import duckdb
import numpy as np
import pandas as pd

from churnlens.config import FeaturesConfig

log = logging.getLogger(__name__)

Family = Literal["purchase_frequency", "interaction", "emotional", "economic", "differentiation", "switching_cost"]
Source = Literal["history", "orders", "lines", "interactions", "customers", "derived"]
FAMILIES: tuple[Family, ...] = (
    "purchase_frequency", "interaction", "emotional", "economic", "differentiation", "switching_cost",
)
KEY = ["customer_id", "cutoff"]
DAY_SECONDS = 86400.0


@dataclass(frozen=True)
class Feature:
    """One feature. ``expression`` is SQL evaluated per (customer, cutoff):

    * ``orders`` / ``lines`` / ``interactions``: an aggregate over that table's rows with
      ``cutoff - window < ts <= cutoff`` (the window filter is added for you; ``{cutoff}``
      may be used for finer sub-windows inside it);
    * ``history``: an expression over the customer's running purchase statistics as of the
      last purchase at or before the cutoff (``n_orders``, ``first_ts``, ``last_ts``, ...);
    * ``customers``: an expression over the customer's profile row and ``cutoff``;
    * ``derived``: an expression over other features' names.
    """

    name: str
    family: Family
    source: Source
    expression: str
    description: str
    window_days: int | None = None
    requires: tuple[str, ...] = ()  # canonical columns that must be present in the source table
    categorical: bool = False


def _days(a: str, b: str) -> str:
    return f"(epoch({a}) - epoch({b})) / {DAY_SECONDS}"


def _windowed(template: Feature, windows: tuple[int, ...]) -> list[Feature]:
    return [
        replace(template, name=template.name.format(w=w), window_days=w,
                description=template.description.format(w=w))
        for w in windows
    ]


def feature_definitions(windows: tuple[int, ...] = (30, 90, 365)) -> list[Feature]:
    """The full catalogue; ``windows`` expands the per-window templates."""
    long = max(windows)
    recent = f"ts > {{cutoff}} - INTERVAL 90 DAY"
    previous = f"ts <= {{cutoff}} - INTERVAL 90 DAY"
    features: list[Feature] = [
        # ---- purchase frequency
        Feature("days_since_last_purchase", "purchase_frequency", "history", _days("cutoff", "last_ts"),
                "Recency: days from the last purchase to the cutoff."),
        Feature("days_since_first_purchase", "purchase_frequency", "history", _days("cutoff", "first_ts"),
                "Days from the first observed purchase to the cutoff."),
        Feature("purchases_lifetime", "purchase_frequency", "history", "n_orders",
                "Purchases (orders with at least one non-return line) up to the cutoff."),
        Feature("mean_purchase_gap_days", "purchase_frequency", "history",
                "gap_sum / nullif(n_orders - 1, 0)", "Mean days between consecutive purchases."),
        Feature("purchase_gap_std_days", "purchase_frequency", "history",
                "CASE WHEN n_orders > 1 THEN sqrt(greatest(gap_sq_sum / (n_orders - 1) "
                "- pow(gap_sum / (n_orders - 1), 2), 0)) END",
                "Standard deviation of the days between purchases (rhythm regularity)."),
        *_windowed(Feature("purchases_{w}d", "purchase_frequency", "orders", "count(*)",
                           "Purchases in the {w} days up to the cutoff."), windows),
        Feature("purchase_trend_90d", "purchase_frequency", "orders",
                f"ln((count(*) FILTER ({recent}) + 1) / (count(*) FILTER ({previous}) + 1))",
                "log of (purchases in the last 90 days + 1) / (purchases in the 90 days before + 1).",
                window_days=180),
        Feature("return_rate_365d", "purchase_frequency", "lines",
                "count(*) FILTER (is_return) / count(*)",
                "Share of transaction lines in the last 365 days that are returns or cancellations.",
                window_days=365),
        Feature("overdue_ratio", "purchase_frequency", "derived",
                "days_since_last_purchase / nullif(mean_purchase_gap_days, 0)",
                "How overdue the customer is against their own rhythm (recency / mean gap)."),
        # ---- economic
        *_windowed(Feature("spend_{w}d", "economic", "orders", "coalesce(sum(value), 0)",
                           "Net spend of purchases in the {w} days up to the cutoff."), windows),
        Feature("avg_order_value_365d", "economic", "orders", "avg(value)",
                "Mean purchase value over the last 365 days.", window_days=365),
        Feature("spend_trend_90d", "economic", "orders",
                f"ln((coalesce(sum(greatest(value, 0)) FILTER ({recent}), 0) + 1) / "
                f"(coalesce(sum(greatest(value, 0)) FILTER ({previous}), 0) + 1))",
                "log of (spend in the last 90 days + 1) / (spend in the 90 days before + 1).", window_days=180),
        Feature("spend_volatility_365d", "economic", "orders", "stddev_samp(value) / nullif(avg(value), 0)",
                "Coefficient of variation of purchase values over 365 days.", window_days=365),
        Feature("discount_share_365d", "economic", "lines",
                "avg(CASE WHEN list_price > unit_price THEN 1.0 ELSE 0.0 END) FILTER (NOT is_return)",
                "Share of purchased lines bought below list price (365 days).", window_days=365,
                requires=("list_price", "unit_price")),
        Feature("discount_depth_365d", "economic", "lines",
                "avg((list_price - unit_price) / list_price) FILTER (NOT is_return AND list_price > unit_price)",
                "Mean discount depth of discounted lines (365 days).", window_days=365,
                requires=("list_price", "unit_price")),
        Feature("price_vs_category_median_365d", "economic", "lines",
                "median(unit_price / nullif(category_median_price, 0)) FILTER (NOT is_return)",
                "Median of price paid / the category's median price over all customers (365 days).",
                window_days=365, requires=("unit_price", "category")),
        # ---- product differentiation
        Feature("distinct_categories_365d", "differentiation", "lines",
                "count(DISTINCT category) FILTER (NOT is_return)",
                "Breadth: distinct categories bought in 365 days.", window_days=365, requires=("category",)),
        Feature("category_entropy_365d", "differentiation", "lines",
                "entropy(category) FILTER (NOT is_return)",
                "Shannon entropy (bits) of the categories bought in 365 days.", window_days=365,
                requires=("category",)),
        Feature("distinct_products_365d", "differentiation", "lines",
                "count(DISTINCT product_id) FILTER (NOT is_return)",
                "Distinct products bought in 365 days.", window_days=365, requires=("product_id",)),
        Feature("premium_share_365d", "differentiation", "lines",
                "coalesce(sum(amount) FILTER (NOT is_return AND unit_price > 1.5 * category_median_price), 0) / "
                "nullif(sum(amount) FILTER (NOT is_return), 0)",
                "Share of spend on lines priced above 1.5x their category median (distinctive products).",
                window_days=365, requires=("unit_price", "category")),
        # ---- interaction
        *_windowed(Feature("visits_{w}d", "interaction", "interactions", "count(*) FILTER (type = 'visit')",
                           "Visits / logins in the {w} days up to the cutoff."), windows),
        Feature("support_contacts_90d", "interaction", "interactions",
                "count(*) FILTER (type = 'support_contact')", "Support contacts in 90 days.", window_days=90),
        Feature("campaign_responses_365d", "interaction", "interactions",
                "count(*) FILTER (type = 'campaign_response')", "Campaign responses in 365 days.",
                window_days=365),
        Feature("days_since_last_contact", "interaction", "interactions", _days("{cutoff}", "max(ts)"),
                f"Days since the last interaction of any type (null if none in {long} days).", window_days=long),
        Feature("days_since_last_complaint", "interaction", "interactions",
                _days("{cutoff}", "max(ts) FILTER (type = 'complaint')"),
                f"Days since the last complaint (null if none in {long} days).", window_days=long),
        # ---- emotional
        Feature("last_nps", "emotional", "interactions", "arg_max(value, ts) FILTER (type = 'survey')",
                f"Latest NPS answer (0-10) within {long} days.", window_days=long),
        Feature("mean_nps_365d", "emotional", "interactions", "avg(value) FILTER (type = 'survey')",
                "Mean NPS answer over 365 days.", window_days=365),
        Feature("complaints_365d", "emotional", "interactions", "count(*) FILTER (type = 'complaint')",
                "Complaints in 365 days.", window_days=365),
        Feature("complaints_90d", "emotional", "interactions", "count(*) FILTER (type = 'complaint')",
                "Complaints in 90 days.", window_days=90),
        Feature("praise_365d", "emotional", "interactions", "count(*) FILTER (type = 'praise')",
                "Praise / compliments in 365 days.", window_days=365),
        Feature("referrals_365d", "emotional", "interactions", "count(*) FILTER (type = 'referral')",
                "Referrals made in 365 days.", window_days=365),
        Feature("praise_complaint_balance_365d", "emotional", "derived",
                "(praise_365d - complaints_365d) / (praise_365d + complaints_365d + 1.0)",
                "(praise - complaints) / (praise + complaints + 1), in (-1, 1)."),
        # ---- switching cost
        Feature("tenure_days", "switching_cost", "customers",
                _days("cutoff", "signup_date"), "Days since signup.", requires=("signup_date",)),
        Feature("products_held", "switching_cost", "customers", "products_held",
                "Products / services held (profile attribute).", requires=("products_held",)),
        Feature("contract_type", "switching_cost", "customers", "coalesce(contract_type, 'unknown')",
                "Contract type (categorical).", requires=("contract_type",), categorical=True),
        Feature("days_to_contract_end", "switching_cost", "customers",
                f"CASE WHEN contract_term_months > 0 AND signup_date <= cutoff THEN "
                f"contract_term_months * 30.4375 - fmod({_days('cutoff', 'signup_date')}, "
                f"contract_term_months * 30.4375) END",
                "Days until the current contract term renews (terms repeat from signup).",
                requires=("contract_term_months", "signup_date")),
        Feature("autopay", "switching_cost", "customers", "CAST(autopay AS DOUBLE)",
                "1 if the customer pays by autopay / direct debit.", requires=("autopay",)),
        Feature("plan_price", "switching_cost", "customers", "plan_price",
                "Recurring plan price.", requires=("plan_price",)),
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
        lines += [f"## {family.replace('_', ' ')}", "", "| feature | source | window | meaning |", "|---|---|---|---|"]
        for f in (f for f in features if f.family == family):
            window = f"{f.window_days} d" if f.window_days else "all history" if f.source == "history" else ""
            lines.append(f"| `{f.name}` | {f.source} | {window} | {f.description} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class FeaturePlan:
    features: list[Feature]
    left_out: dict[str, str]  # feature -> why

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.categorical]

    def families(self) -> dict[str, list[str]]:
        return {family: [f.name for f in self.features if f.family == family] for family in FAMILIES}


_SOURCE_TABLE = {"history": "transactions", "orders": "transactions", "lines": "transactions",
                 "interactions": "interactions", "customers": "customers"}


def plan_features(features: list[Feature], available: dict[str, set[str]]) -> FeaturePlan:
    """Keep the features whose source table and columns exist; report the rest (never zero-fill)."""
    kept: list[Feature] = []
    left_out: dict[str, str] = {}
    for feature in features:
        if feature.source == "derived":
            inputs = [name for name in _identifiers(feature.expression)]
            missing = [name for name in inputs if name not in {f.name for f in kept}]
            if missing:
                left_out[feature.name] = f"needs {missing}"
            else:
                kept.append(feature)
            continue
        table = _SOURCE_TABLE[feature.source]
        if table not in available:
            left_out[feature.name] = f"no {table} table"
        elif missing := [c for c in feature.requires if c not in available[table]]:
            left_out[feature.name] = f"{table} has no column {missing}"
        else:
            kept.append(feature)
    return FeaturePlan(kept, left_out)


def _identifiers(expression: str) -> list[str]:
    names = re.findall(r"[a-z_][a-z0-9_]*", expression)
    return [n for n in dict.fromkeys(names) if n not in {"nullif", "greatest", "least", "ln", "abs"}]


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
def _register_sources(con: duckdb.DuckDBPyConnection, tables: dict[str, pd.DataFrame | str]) -> dict[str, set[str]]:
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
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW lines AS
        SELECT customer_id, timestamp AS ts, amount, {is_return} AS is_return{''.join(', ' + c for c in optional)}
        FROM src_transactions
    """)
    # Without order ids, lines of one customer at the same instant form one order.
    order_key = "coalesce(order_id, CAST(ts AS VARCHAR))" if "order_id" in tx else "CAST(ts AS VARCHAR)"
    # A purchase is an order holding at least one non-return line; returns alone are not purchases.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE orders AS
        SELECT customer_id, min(ts) AS ts, sum(amount) FILTER (NOT is_return) AS value
        FROM lines
        GROUP BY customer_id, {order_key}
        HAVING count(*) FILTER (NOT is_return) > 0
    """)
    # Running purchase statistics: each row holds what was known right after that purchase.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE purchase_history AS
        SELECT customer_id, ts AS last_ts,
               min(ts) OVER w AS first_ts,
               count(*) OVER w AS n_orders,
               sum(value) OVER w AS lifetime_value,
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
        cancelled = ("AND NOT EXISTS (SELECT 1 FROM src_customers p WHERE p.customer_id = h.customer_id "
                     "AND p.cancellation_date <= c.cutoff)")
    # ASOF: for each customer and cutoff, the running statistics of the last purchase <= cutoff.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE population AS
        SELECT k.customer_id, c.cutoff, h.* EXCLUDE (customer_id)
        FROM (SELECT DISTINCT customer_id FROM orders) k
        CROSS JOIN cutoffs c
        ASOF JOIN purchase_history h ON h.customer_id = k.customer_id AND h.last_ts <= c.cutoff
        WHERE h.last_ts > c.cutoff - INTERVAL {config.active_lookback_days} DAY {cancelled}
    """)


def _aggregate_sql(source: str, features: list[Feature]) -> str:
    longest = max(f.window_days for f in features)
    columns = []
    for f in features:
        expression = f.expression.replace("{cutoff}", "p.cutoff")
        in_window = f"ts > p.cutoff - INTERVAL {f.window_days} DAY"
        if f.window_days != longest:
            expression = _add_filter(expression, in_window)
        columns.append(f"{expression} AS {f.name}")
    if source == "lines" and any("category_median_price" in f.expression for f in features):
        return _lines_with_medians_sql(columns, longest)
    return f"""
        SELECT p.customer_id, p.cutoff, {', '.join(columns)}
        FROM population p
        JOIN {source} e ON e.customer_id = p.customer_id
             AND e.ts <= p.cutoff AND e.ts > p.cutoff - INTERVAL {longest} DAY
        GROUP BY p.customer_id, p.cutoff
    """


def _lines_with_medians_sql(columns: list[str], longest: int) -> str:
    return f"""
        WITH windowed AS (
            SELECT p.customer_id AS _customer, p.cutoff, e.*
            FROM population p
            JOIN lines e ON e.customer_id = p.customer_id
                 AND e.ts <= p.cutoff AND e.ts > p.cutoff - INTERVAL {longest} DAY
        ),
        medians AS (  -- category price medians over every customer's purchases in the same window
            SELECT c.cutoff, e.category, median(e.unit_price) AS category_median_price
            FROM cutoffs c JOIN lines e ON e.ts <= c.cutoff AND e.ts > c.cutoff - INTERVAL {longest} DAY
            WHERE NOT e.is_return
            GROUP BY ALL
        ),
        enriched AS (
            SELECT w.*, m.category_median_price
            FROM windowed w LEFT JOIN medians m
              ON m.cutoff = w.cutoff AND m.category IS NOT DISTINCT FROM w.category
        )
        SELECT _customer AS customer_id, cutoff, {', '.join(c.replace('p.cutoff', 'cutoff') for c in columns)}
        FROM enriched
        GROUP BY _customer, cutoff
    """


def _add_filter(expression: str, condition: str) -> str:
    """Restrict every aggregate in ``expression`` to ``condition`` (FILTER clauses are combined)."""
    def patch(match: re.Match) -> str:
        return f"FILTER ({condition} AND "

    if "FILTER (" in expression:
        patched = re.sub(r"FILTER \(", patch, expression)
        # Aggregates without their own FILTER still need the window.
        return _filter_bare_aggregates(patched, condition)
    return _filter_bare_aggregates(expression, condition)


_AGGREGATES = ("count", "sum", "avg", "min", "max", "median", "stddev_samp", "arg_max", "entropy")


def _filter_bare_aggregates(expression: str, condition: str) -> str:
    """Append ``FILTER (condition)`` after each aggregate call that has none."""
    out, i = [], 0
    while i < len(expression):
        matched = next((a for a in _AGGREGATES if expression.startswith(a + "(", i)
                        and (i == 0 or not (expression[i - 1].isalnum() or expression[i - 1] == "_"))), None)
        if matched is None:
            out.append(expression[i])
            i += 1
            continue
        depth, j = 0, i + len(matched)
        while True:
            depth += expression[j] == "("
            depth -= expression[j] == ")"
            j += 1
            if depth == 0:
                break
        call = expression[i:j]
        if not expression[j:].lstrip().startswith("FILTER"):
            call += f" FILTER ({condition})"
        out.append(call)
        i = j
    return "".join(out)


def _customers_sql(features: list[Feature]) -> str:
    columns = ", ".join(f"{f.expression} AS {f.name}" for f in features)
    return f"""
        SELECT p.customer_id, p.cutoff, {columns}
        FROM (SELECT customer_id, cutoff FROM population) p
        LEFT JOIN src_customers USING (customer_id)
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


def compute_snapshots(tables: dict[str, pd.DataFrame | str | None], cutoffs: list[pd.Timestamp],
                      config: FeaturesConfig, with_labels: bool = True,
                      features: list[Feature] | None = None) -> tuple[pd.DataFrame, FeaturePlan]:
    """Features (and labels) for every active customer at every cutoff, in one sweep.

    ``tables`` maps canonical table names to DataFrames or Parquet paths; ``interactions``
    and ``customers`` may be missing, in which case their families are left out.
    Returns a frame keyed by (customer_id, cutoff), sorted, and the plan of kept features.
    """
    definitions = features if features is not None else feature_definitions(config.windows_days)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        available = _register_sources(con, tables)
        plan = plan_features(definitions, available)
        con.register("cutoff_frame", pd.DataFrame({"cutoff": pd.to_datetime(cutoffs).astype("datetime64[us]")}))
        con.execute("CREATE OR REPLACE TEMP TABLE cutoffs AS SELECT CAST(cutoff AS TIMESTAMP) AS cutoff FROM cutoff_frame")
        _prepare_events(con, available)
        _population(con, config, available)

        history = [f for f in plan.features if f.source == "history"]
        select = ", ".join(f"{f.expression} AS {f.name}" for f in history)
        result = con.execute(f"SELECT customer_id, cutoff, {select} FROM population").fetchdf()
        for source in ("orders", "lines", "interactions"):
            group = [f for f in plan.features if f.source == source]
            if group:
                part = con.execute(_aggregate_sql(source, group)).fetchdf()
                result = result.merge(part, on=KEY, how="left")
        customer_features = [f for f in plan.features if f.source == "customers"]
        if customer_features:
            result = result.merge(con.execute(_customers_sql(customer_features)).fetchdf(), on=KEY, how="left")
        if with_labels:
            result = result.merge(con.execute(_labels_sql(config, available)).fetchdf(), on=KEY, how="left")

    # Counts over an empty window are zero, not unknown; ratios and recencies stay missing.
    for f in plan.features:
        if f.source in ("orders", "interactions") and f.expression.startswith("count("):
            result[f.name] = result[f.name].fillna(0)
        if f.name.startswith("spend_") and f.name[6:-1].isdigit():
            result[f.name] = result[f.name].fillna(0.0)
    for f in (f for f in plan.features if f.source == "derived"):
        result[f.name] = _evaluate_derived(result, f.expression)
    result = result.sort_values(KEY, kind="stable").reset_index(drop=True)
    numeric = [n for n in plan.names if n not in plan.categorical]
    result[numeric] = result[numeric].astype("float64")
    for name in plan.categorical:
        result[name] = result[name].astype("string")
    result["cutoff"] = result["cutoff"].astype("datetime64[us]")
    columns = KEY + plan.names + (["churned"] if with_labels else [])
    return result[columns], plan


def _evaluate_derived(frame: pd.DataFrame, expression: str) -> pd.Series:
    """Derived features are plain arithmetic on other features; ``nullif(x, 0)`` maps to NaN."""
    env: dict[str, object] = {name: frame[name].astype("float64") for name in _identifiers(expression) if name in frame}
    env["nullif"] = lambda x, v: x.where(x != v, np.nan)
    # Expressions come from feature_definitions in this module, never from user input.
    return eval(expression, {"__builtins__": {}}, env)  # noqa: S307


def data_span(tables: dict[str, pd.DataFrame | str | None]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last transaction timestamp."""
    with duckdb.connect() as con:
        _register_sources(con, {"transactions": tables["transactions"]})
        first, last = con.execute("SELECT min(timestamp), max(timestamp) FROM src_transactions").fetchone()
    if first is None:
        raise ValueError("features: the transactions table is empty")
    return pd.Timestamp(first), pd.Timestamp(last)
