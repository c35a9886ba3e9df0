"""The feature definitions as one portable SQL query, for engines other than the DuckDB sweep.

:mod:`churnlens.features` computes snapshots with DuckDB plus numpy running totals, which is
fast on one machine but is not SQL an engine such as Spark can run. This module generates, from
the same :class:`~churnlens.features.Feature` definitions, the plain relational form: every
event joined to the cutoffs whose window holds it, then conditional aggregates. It is written
in DuckDB's dialect and transpiled with sqlglot (:func:`to_dialect`); the history, profile,
'last' and derived expressions go through :func:`churnlens.features.assembly_sql`, the same
code the DuckDB engine uses, so the two engines share every feature expression and differ only
in how windows are aggregated. Tests run this query on DuckDB and on Spark and compare both with
the DuckDB sweep, cell by cell.

Expected relations: ``src_transactions``, optionally ``src_interactions`` and
``src_customers`` (canonical columns), and ``cutoffs`` (one TIMESTAMP column ``cutoff``).
"""

from __future__ import annotations

from dataclasses import dataclass

from churnlens.config import FeaturesConfig
from churnlens.features import (
    Feature,
    FeaturePlan,
    Step,
    _last_columns,
    assembly_sql,
    check_label_source,
    event_steps,
    has_cancellations,
    quote_name,
)


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
            SELECT customer_id, ts, value,
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
    ts_column, value_column = (quote_name(c) for c in _last_columns(feature))
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
    lead, end, horizon = config.lead_days, config.lead_days + config.horizon_days, config.horizon_days
    cancellations = _cancellations(available)
    cancelled = (f"(k.cancelled_at > w.cutoff + INTERVAL {lead} DAY "
                 f"AND k.cancelled_at <= w.cutoff + INTERVAL {end} DAY)") if cancellations else "false"
    rule = {"no_purchase": "w.purchases = 0", "cancellation": f"coalesce({cancelled}, false)",
            "no_purchase_or_cancellation": f"(w.purchases = 0 OR coalesce({cancelled}, false))"}[config.label]
    if config.partial_churn_below is not None:
        rule = f"({rule} OR w.spend < {config.partial_churn_below} * w.spend_before)"
    inside = f"o.ts > p.cutoff + INTERVAL {lead} DAY AND o.ts <= p.cutoff + INTERVAL {end} DAY"
    join = f"LEFT JOIN ({cancellations}) k ON k.customer_id = w.customer_id" if cancellations else ""
    return "labels", f"""
        SELECT w.customer_id, w.cutoff, {rule} AS churned
        FROM (SELECT p.customer_id, p.cutoff,
                     sum(CASE WHEN {inside} THEN 1 ELSE 0 END) AS purchases,
                     coalesce(sum(CASE WHEN {inside} THEN o.value END), 0) AS spend,
                     coalesce(sum(CASE WHEN o.ts <= p.cutoff THEN o.value END), 0) AS spend_before
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
            joins.append((f"l{index}", list(_last_columns(feature))))
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


def compute_snapshots_duckdb(tables: dict, cutoffs: list, config: FeaturesConfig, with_labels: bool = True):
    """:func:`snapshot_sql` run by DuckDB: the slow, obviously-correct reference for tests."""
    import duckdb
    import pandas as pd

    from churnlens.features import _register_sources, feature_definitions, plan_features, with_fitted_features

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        available = _register_sources(con, tables)
        plan = plan_features(feature_definitions(config.windows_days), available)
        con.register("cutoff_frame", pd.DataFrame({"cutoff": pd.to_datetime(pd.Series(cutoffs)).astype("datetime64[us]")}))
        con.execute("CREATE TEMP TABLE cutoffs AS SELECT CAST(cutoff AS TIMESTAMP) AS cutoff FROM cutoff_frame")
        frame = con.sql(snapshot_sql(plan, config, available, with_labels)).df()
    frame["cutoff"] = frame["cutoff"].astype("datetime64[us]")
    for name in plan.categorical:
        frame[name] = frame[name].astype("string")
    return with_fitted_features(frame, plan, config), plan
