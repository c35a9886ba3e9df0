"""The feature definitions as portable SQL: the one relational definition of a line, an order,
an interaction, the active population and the labels, shared by every engine.

:func:`event_steps` and :func:`assembly_sql` are used by both engines (the DuckDB sweep evaluates
the per-event measures and the history, profile, 'last' and derived expressions with them).
:func:`snapshot_query` is the whole computation in plain relational form: every event joined to
the cutoffs whose window holds it, then conditional aggregates. It is written in DuckDB's dialect
and transpiled with sqlglot (:func:`to_dialect`); the Spark engine runs it, and tests run it on
DuckDB and on Spark and compare both with the DuckDB sweep, cell by cell.

Expected relations: ``src_transactions``, optionally ``src_interactions`` and
``src_customers`` (canonical columns), and ``cutoffs`` (one TIMESTAMP column ``cutoff``). No
paths here: the engines register the sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from churnlens.config import FeaturesConfig
from churnlens.features import USUAL_PRICE_MIN_LINES, USUAL_PRICE_MONTHS, Feature, FeaturePlan
from churnlens.sqltext import quote_name

Step = tuple[str, str]  # (relation name, the SELECT that defines it)
EVENT_RELATIONS = ("lines", "orders", "interactions")
# Steps of :func:`event_steps` that pool every customer's lines (a category's or a product's level in
# a month) and the step only they read: an engine that works on a block of customers at a time
# computes these once, over the whole log, and the blocks read the result.
POOLED_STEPS = ("category_month_median", "product_usual_price", "product_month_repeats", "product_repeat_rate")


def median_from_counts(counts: str, key: str, value: str, alias: str, min_count: int = 1) -> str:
    """``median(value)`` per ``key`` (``key`` and ``month``), from ``counts``: rows of (key, month,
    value, n), n lines having that value; groups of fewer than ``min_count`` lines are left out.

    The same number as SQL's ``median`` over the lines (the two middle values averaged as
    ``0.5 * lo + 0.5 * hi``, DuckDB's and Spark's own form), but from aggregates that spill to disk: a
    ``median`` keeps every line of a group in memory, which at 30M lines outgrows the default
    ``features.memory_limit``, while prices repeat, so the counts are small. The value at 1-based
    position k is the smallest whose running count reaches k; the middle positions of N lines are
    those where 2 x running count reaches N (lo) and passes N (hi)."""
    return f"""
        SELECT {key}, month, 0.5 * lo + 0.5 * hi AS {alias} FROM (
            SELECT {key}, month, min({value}) FILTER (WHERE 2 * upto >= total) AS lo,
                   min({value}) FILTER (WHERE 2 * upto > total) AS hi
            FROM (SELECT {key}, month, {value},
                         sum(n) OVER (PARTITION BY {key}, month ORDER BY {value}
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS upto,
                         sum(n) OVER (PARTITION BY {key}, month) AS total
                  FROM ({counts}) c) r
            WHERE total >= {min_count}
            GROUP BY {key}, month) m"""


def usual_price_step(is_return: str) -> Step:
    """A product's usual price for each calendar month: the median unit price of its purchased
    lines in the ``USUAL_PRICE_MONTHS`` calendar months *before* that month (at least
    ``USUAL_PRICE_MIN_LINES`` lines, else unknown). Earlier data only, and no list price needed."""
    # Lines counted per product, month and price once, then summed over the months before.
    per_month = (f"SELECT product_id, date_trunc('month', timestamp) AS month, unit_price, count(*) AS n "
                 f"FROM src_transactions WHERE NOT ({is_return}) AND unit_price > 0 "
                 "GROUP BY product_id, date_trunc('month', timestamp), unit_price")
    shifted = " UNION ALL ".join(f"SELECT product_id, month + INTERVAL {k} MONTH AS month, unit_price, n "
                                 f"FROM ({per_month}) p{k}" for k in range(1, USUAL_PRICE_MONTHS + 1))
    counts = f"SELECT product_id, month, unit_price, sum(n) AS n FROM ({shifted}) s GROUP BY product_id, month, unit_price"
    return ("product_usual_price", median_from_counts(counts, "product_id", "unit_price", "usual_price",
                                                      USUAL_PRICE_MIN_LINES))


def product_repeat_rate_steps(is_return: str) -> list[Step]:
    """A product's repeat rate for each calendar month: the share of its purchased lines in the
    ``USUAL_PRICE_MONTHS`` calendar months *before* that month that were bought by a customer who
    had bought it before (at least ``USUAL_PRICE_MIN_LINES`` lines, else unknown). What a basket of
    such products usually turns into (staples are re-bought, one-off lines are not) is the one
    habit signal a single basket carries; earlier data only. Needs the ``first_purchase`` step."""
    # Counted per product and month once, then summed over the months before: the rate is a ratio
    # of counts, so this equals averaging every line of those months without reading each line
    # USUAL_PRICE_MONTHS times.
    shifted = " UNION ALL ".join(
        f"SELECT product_id, month + INTERVAL {k} MONTH AS month, repeated, lines FROM product_month_repeats"
        for k in range(1, USUAL_PRICE_MONTHS + 1))
    return [
        ("product_month_repeats", f"""
            SELECT t.product_id, date_trunc('month', t.timestamp) AS month,
                   sum(CASE WHEN t.timestamp > f.first_ts THEN 1 ELSE 0 END) AS repeated, count(*) AS lines
            FROM src_transactions t JOIN first_purchase f ON f.customer_id = t.customer_id
                 AND f.product_id = t.product_id
            WHERE NOT ({is_return}) AND t.product_id IS NOT NULL
            GROUP BY t.product_id, date_trunc('month', t.timestamp)"""),
        ("product_repeat_rate", f"""
            SELECT product_id, month, CAST(sum(repeated) AS DOUBLE) / sum(lines) AS repeat_rate FROM ({shifted}) s
            GROUP BY product_id, month HAVING sum(lines) >= {USUAL_PRICE_MIN_LINES}"""),
    ]


def event_steps(available: dict[str, set[str]]) -> list[Step]:
    """The canonical event relations as portable SQL over the ``src_`` tables, keyed by
    customer_id: the one definition of a line, a purchase (order) and an interaction, shared by
    every engine. Steps come in dependency order."""
    tx = available["transactions"]
    # Canonical tables carry is_return (ingest); a table given directly falls back to the signs
    # ingest reads, and a log of customers and times has no returns.
    is_return = next((expr for column, expr in (("is_return", "is_return"), ("amount", "amount < 0"),
                                                ("quantity", "coalesce(quantity < 0, false)")) if column in tx), "false")
    # A log without amounts has no spend: lines and orders carry no amount / value column, so a
    # feature reading one fails loudly (those declare requires=("amount",) and are left out).
    spend = "amount" in tx
    optional = [c for c in ("unit_price", "list_price", "product_id", "category") if c in tx]
    steps: list[Step] = []
    price_ratio, price_join = "CAST(NULL AS DOUBLE) AS price_ratio", ""
    if {"unit_price", "category"} <= tx:
        # Point-in-time price level: the category's median price in the calendar month *before* the
        # line's month, so a line's ratio depends on earlier data only, never on the cutoff.
        counts = (f"SELECT category, date_trunc('month', timestamp) + INTERVAL 1 MONTH AS month, unit_price, "
                  f"count(*) AS n FROM src_transactions WHERE NOT ({is_return}) AND unit_price > 0 "
                  "GROUP BY category, date_trunc('month', timestamp) + INTERVAL 1 MONTH, unit_price")
        steps.append(("category_month_median", median_from_counts(counts, "category", "unit_price", "median_price")))
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
    product_rate, product_rate_join = "CAST(NULL AS DOUBLE) AS product_repeat_rate", ""
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
        steps += product_repeat_rate_steps(is_return)
        product_rate = "r.repeat_rate AS product_repeat_rate"
        product_rate_join = ("LEFT JOIN product_repeat_rate r ON r.product_id = t.product_id "
                             "AND r.month = date_trunc('month', t.timestamp)")
    steps.append(("lines", f"""
        SELECT t.customer_id, t.timestamp AS ts{', t.amount' if spend else ''}, {is_return} AS is_return
               {''.join(', t.' + c for c in optional)}, {price_ratio}, {usual_ratio}, {repeat}, {product_rate},
               CAST(t.timestamp AS DATE) AS purchase_day
        FROM src_transactions t {price_join} {usual_join} {repeat_join} {product_rate_join}"""))
    # Without order ids, lines of one customer at the same instant form one order.
    order_key = "coalesce(order_id, CAST(timestamp AS VARCHAR))" if "order_id" in tx else "CAST(timestamp AS VARCHAR)"
    # A purchase is an order holding at least one non-return line; returns alone are not purchases.
    # The order value is summed in exact decimal arithmetic: a float sum depends on the order in
    # which a parallel engine meets the lines, and the same data must give the same bytes.
    value = (f", CAST(sum(CASE WHEN NOT ({is_return}) THEN CAST(amount AS DECIMAL(38, 9)) END) AS DOUBLE) AS value"
             if spend else "")
    steps.append(("orders", f"""
        SELECT customer_id, min(timestamp) AS ts{value}
        FROM src_transactions GROUP BY customer_id, {order_key}
        HAVING sum(CASE WHEN NOT ({is_return}) THEN 1 ELSE 0 END) > 0"""))
    if "interactions" in available:
        value = "value" if "value" in available["interactions"] else "CAST(NULL AS DOUBLE) AS value"
        steps.append(("interactions", f"SELECT customer_id, timestamp AS ts, type, {value} FROM src_interactions"))
    return steps



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


def last_columns(feature: Feature) -> tuple[str, str]:
    return f"{feature.name}__ts", f"{feature.name}__value"


def _last_expression(feature: Feature) -> str:
    """A 'last' expression over the latest matching event's ``ts`` / ``value`` columns."""
    ts, value = (quote_name(c) for c in last_columns(feature))
    return re.sub(r"\bts\b", ts, re.sub(r"\bvalue\b", value, feature.expression))


def check_label_source(config: FeaturesConfig, available: dict[str, set[str]]) -> None:
    """A contractual label needs cancellation dates, partial churn needs spend; say so before any
    work is done."""
    if config.label == "cancellation" and not has_cancellations(available):
        raise ValueError(
            f"features.label={config.label!r} needs a customers table with cancellation_date; map it in "
            "ingest.customers.columns or use label: no_purchase"
        )
    if config.partial_churn_below is not None and "amount" not in available["transactions"]:
        raise ValueError(
            f"features.partial_churn_below={config.partial_churn_below} compares a customer's spend after the "
            "cutoff with the spend before it, but the transactions have no amount (ingest found neither amount "
            "nor both quantity and unit_price). Map one in ingest.transactions.columns, or set "
            "features.partial_churn_below: null to label churn by purchases alone"
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


def _cancellations(available: dict[str, set[str]]) -> str | None:
    if has_cancellations(available):
        return ("SELECT customer_id, min(cancellation_date) AS cancelled_at FROM src_customers "
                "WHERE cancellation_date IS NOT NULL GROUP BY customer_id")
    return None


def _population(config: FeaturesConfig, available: dict[str, set[str]]) -> list[Step]:
    cancellations = _cancellations(available)
    join = f"LEFT JOIN ({cancellations}) k ON k.customer_id = h.customer_id" if cancellations else ""
    still_customer = "AND (k.cancelled_at IS NULL OR k.cancelled_at > h.cutoff)" if cancellations else ""
    return [
        ("order_gaps", """
            SELECT customer_id, ts,
                   (epoch_us(ts) - epoch_us(lag(ts) OVER (PARTITION BY customer_id ORDER BY ts))) / 86400000000.0
                     AS gap
            FROM orders"""),
        ("history", """
            SELECT o.customer_id, c.cutoff, count(*) AS n_orders, min(o.ts) AS first_ts, max(o.ts) AS last_ts,
                   coalesce(sum(o.gap), 0) AS gap_sum, coalesce(sum(o.gap * o.gap), 0) AS gap_sq_sum
            FROM order_gaps o JOIN cutoffs c ON o.ts <= c.cutoff
            GROUP BY o.customer_id, c.cutoff"""),
        ("population", f"""
            SELECT h.* FROM history h {join}
            WHERE h.last_ts > h.cutoff - INTERVAL {config.active_lookback_days} DAY {still_customer}"""),
    ]


def _window_step(source: str, features: list[Feature]) -> Step:
    nearest = min(f.offset_days for f in features)
    farthest = max(f.offset_days + f.window_days for f in features)
    sums = [f"sum(CASE WHEN e.ts > p.cutoff - INTERVAL {f.offset_days + f.window_days} DAY "
            f"AND e.ts <= p.cutoff - INTERVAL {f.offset_days} DAY THEN ({f.expression}) ELSE 0 END) "
            f"AS {quote_name(f.name)}" for f in features]
    return f"w_{source}", f"""
        SELECT p.customer_id, p.cutoff, {', '.join(sums)}
        FROM population p LEFT JOIN {source} e ON e.customer_id = p.customer_id
             AND e.ts <= p.cutoff - INTERVAL {nearest} DAY AND e.ts > p.cutoff - INTERVAL {farthest} DAY
        GROUP BY p.customer_id, p.cutoff"""


def _last_steps(feature: Feature, alias: str) -> list[Step]:
    """The latest matching event in (cutoff - window, cutoff]; ties at one instant take the largest value."""
    ts_column, value_column = (quote_name(c) for c in last_columns(feature))
    return [
        (f"{alias}_at", f"""
            SELECT p.customer_id, p.cutoff, max(e.ts) AS latest
            FROM population p JOIN {feature.source} e ON e.customer_id = p.customer_id
                 AND e.ts <= p.cutoff AND e.ts > p.cutoff - INTERVAL {feature.window_days} DAY
            WHERE {feature.where}
            GROUP BY p.customer_id, p.cutoff"""),
        (alias, f"""
            SELECT l.customer_id, l.cutoff, l.latest AS {ts_column}, max(CAST(e.value AS DOUBLE)) AS {value_column}
            FROM {alias}_at l JOIN {feature.source} e ON e.customer_id = l.customer_id AND e.ts = l.latest
            WHERE {feature.where}
            GROUP BY l.customer_id, l.cutoff, l.latest"""),
    ]


def _distinct_step(feature: Feature, alias: str) -> Step:
    return alias, f"""
        SELECT p.customer_id, p.cutoff, count(DISTINCT e.{feature.expression}) AS {quote_name(feature.name)}
        FROM population p LEFT JOIN lines e ON e.customer_id = p.customer_id AND NOT e.is_return
             AND e.ts <= p.cutoff AND e.ts > p.cutoff - INTERVAL {feature.window_days} DAY
        GROUP BY p.customer_id, p.cutoff"""


def _labels_step(config: FeaturesConfig, available: dict[str, set[str]]) -> Step:
    check_label_source(config, available)
    lead, end, horizon = config.lead_days, config.label_end.days, config.horizon_days
    cancellations = _cancellations(available)
    cancelled = (f"(k.cancelled_at > w.cutoff + INTERVAL {lead} DAY "
                 f"AND k.cancelled_at <= w.cutoff + INTERVAL {end} DAY)") if cancellations else "false"
    rule = {"no_purchase": "w.purchases = 0", "cancellation": f"coalesce({cancelled}, false)",
            "no_purchase_or_cancellation": f"(w.purchases = 0 OR coalesce({cancelled}, false))"}[config.label]
    inside = f"o.ts > p.cutoff + INTERVAL {lead} DAY AND o.ts <= p.cutoff + INTERVAL {end} DAY"
    spend = ""  # summed only for the rule that reads it: a log without amounts has no order value
    if config.partial_churn_below is not None:
        rule = f"({rule} OR w.spend < {config.partial_churn_below} * w.spend_before)"
        spend = (f"coalesce(sum(CASE WHEN {inside} THEN o.value END), 0) AS spend, "
                 "coalesce(sum(CASE WHEN o.ts <= p.cutoff THEN o.value END), 0) AS spend_before, ")
    join = f"LEFT JOIN ({cancellations}) k ON k.customer_id = w.customer_id" if cancellations else ""
    return "labels", f"""
        SELECT w.customer_id, w.cutoff, {rule} AS churned
        FROM (SELECT p.customer_id, p.cutoff, {spend}
                     sum(CASE WHEN {inside} THEN 1 ELSE 0 END) AS purchases
              FROM population p LEFT JOIN orders o ON o.customer_id = p.customer_id
                   AND o.ts > p.cutoff - INTERVAL {horizon} DAY AND o.ts <= p.cutoff + INTERVAL {end} DAY
              GROUP BY p.customer_id, p.cutoff) w {join}"""


@dataclass(frozen=True)
class SnapshotQuery:
    """The reference computation as named steps (each one SELECT over earlier steps and the
    sources) and a final SELECT over them. Engines without CTE materialisation (Spark) register
    the steps one by one and cache the ones read many times."""

    steps: list[Step]
    final: str

    def sql(self) -> str:
        """Everything as one query (DuckDB dialect)."""
        return f"WITH {', '.join(f'{name} AS ({body})' for name, body in self.steps)} SELECT * FROM ({self.final})"


def snapshot_query(plan: FeaturePlan, config: FeaturesConfig, available: dict[str, set[str]],
                   with_labels: bool) -> SnapshotQuery:
    """The same rows and columns as the DuckDB sweep, as portable SQL (DuckDB dialect)."""
    steps = [*event_steps(available), *_population(config, available)]
    joins: list[tuple[str, list[str]]] = []  # (step, its raw columns)
    for source in ("orders", "lines", "interactions"):
        group = [f for f in plan.features if f.kind == "window" and f.source == source]
        if group:
            steps.append(_window_step(source, group))
            joins.append((f"w_{source}", [f.name for f in group]))
    for index, feature in enumerate(plan.features):
        if feature.kind == "last":
            steps += _last_steps(feature, f"l{index}")
            joins.append((f"l{index}", list(last_columns(feature))))
        elif feature.kind == "distinct":
            steps.append(_distinct_step(feature, f"d{index}"))
            joins.append((f"d{index}", [feature.name]))
    if with_labels:
        steps.append(_labels_step(config, available))
        joins.append(("labels", ["churned"]))
    history = ["n_orders", "first_ts", "last_ts", "gap_sum", "gap_sq_sum"]
    columns = ["p.customer_id", "p.cutoff"] + [f"p.{c}" for c in history]
    # Window sums and distinct counts are 0, not missing, for a customer with no such events.
    zero_when_absent = {f.name for f in plan.features if f.kind in ("window", "distinct")}
    for alias, names in joins:
        columns += [f"coalesce({alias}.{quote_name(n)}, 0) AS {quote_name(n)}" if n in zero_when_absent
                    else f"{alias}.{quote_name(n)}" for n in names]
    joined = " ".join(f"LEFT JOIN {alias} ON {alias}.customer_id = p.customer_id AND {alias}.cutoff = p.cutoff"
                      for alias, _ in joins)
    rows = f"SELECT {', '.join(columns)} FROM population p {joined}"
    raw = history + [n for _, names in joins for n in names]
    customers = "src_customers" if "customers" in available else None
    return SnapshotQuery(steps, assembly_sql(plan, rows, raw, with_labels, customers))


def snapshot_sql(plan: FeaturePlan, config: FeaturesConfig, available: dict[str, set[str]],
                 with_labels: bool) -> str:
    """:func:`snapshot_query` as one query (DuckDB dialect)."""
    return snapshot_query(plan, config, available, with_labels).sql()


def to_dialect(sql: str, dialect: str) -> str:
    """Transpile DuckDB SQL with sqlglot, mapping the functions sqlglot leaves alone."""
    import sqlglot
    from sqlglot import exp

    renamed = {"spark": {"EPOCH_US": "UNIX_MICROS"}}.get(dialect, {})
    # Spark reads 1.5 as a DECIMAL, and DECIMAL division rounds to 6 places: make them doubles.
    decimals_are_doubles = dialect == "spark"

    def adapt(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.upper() in renamed:
            return exp.Anonymous(this=renamed[node.name.upper()], expressions=node.expressions)
        if (decimals_are_doubles and isinstance(node, exp.Literal) and node.is_number
                and not isinstance(node.parent, exp.Interval) and any(ch in node.this for ch in ".eE")):
            return exp.Cast(this=node.copy(), to=exp.DataType.build("DOUBLE"))
        return node

    return sqlglot.parse_one(sql, read="duckdb").transform(adapt).sql(dialect=dialect)
