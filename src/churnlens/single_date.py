"""Features for one as-of date in one DuckDB query: the scoring job's and the latest snapshot's path.

The many-cutoff sweep (:func:`churnlens.engines.duckdb.compute_snapshots`) prepares every event into a
sorted, customer-coded copy and places it on a time grid, which pays off across many cutoffs. With
one cutoff, a window feature is just a filtered aggregate: ``sum(measure) FILTER (WHERE cutoff -
offset - window < ts <= cutoff - offset)`` per customer. This module generates that query from the
same :func:`~churnlens.features.feature_definitions`, the same event relations
(:func:`~churnlens.features.event_steps`) and the same assembly SQL
(:func:`~churnlens.features.assembly_sql`) as the other engines, one aggregate per source, and
DuckDB runs it in parallel without copying the events anywhere. Past what ``features.memory_limit``
holds, the query runs once per block of customers (a hash of customer_id), after the steps that
pool every customer (a product's usual price and repeat rate) have been computed once.

Sums are taken in exact decimal arithmetic (``DECIMAL(38, 12)``) and only then turned into
doubles: a float sum depends on the order in which a parallel engine meets the rows, and the same
data must give the same bytes. A log whose sums overflow that decimal (amounts near 10^13 squared)
falls back to the sweep, which gives the same values.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from churnlens.config import FeaturesConfig, memory_bytes
from churnlens.engines.duckdb import register_sources
from churnlens.features import Feature, FeaturePlan, definitions_for, plan_features, with_fitted_features
from churnlens.sql import POOLED_STEPS, assembly_sql, event_steps, has_cancellations, last_columns
from churnlens.sqltext import quote_name

log = logging.getLogger(__name__)

EXACT = "DECIMAL(38, 12)"  # 26 integer digits: a year of squared order values up to ~10^12 each
HISTORY = ("n_orders", "first_ts", "last_ts", "gap_sum", "gap_sq_sum")
_US_PER_DAY = 86_400_000_000


def _exact_sum(measure: str, condition: str) -> str:
    """An order-independent sum of a per-event measure (NULL and non-finite values count as 0,
    as in the sweep's running totals), as a DOUBLE."""
    value = f"CAST({measure} AS DOUBLE)"
    return (f"CAST(coalesce(sum(CAST(CASE WHEN isfinite({value}) THEN {value} END AS {EXACT})) "
            f"FILTER (WHERE {condition}), 0) AS DOUBLE)")


def _inside(offset_days: int, window_days: int, ts: str = "ts") -> str:
    """The window ``(cutoff - offset - window, cutoff - offset]`` on event time ``ts``, in
    microseconds, the unit the sweep's grid uses."""
    upper = f"epoch_us(cutoff) - {offset_days * _US_PER_DAY}"
    lower = f"epoch_us(cutoff) - {(offset_days + window_days) * _US_PER_DAY}"
    return f"epoch_us({ts}) > {lower} AND epoch_us({ts}) <= {upper}"


def _window_columns(features: list[Feature]) -> list[str]:
    return [f"{_exact_sum(f.expression, _inside(f.offset_days, f.window_days))} AS {quote_name(f.name)}"
            for f in features]


def _distinct_step(feature: Feature, alias: str) -> tuple[str, str]:
    """Distinct keys bought in the window ``(cutoff - window, cutoff]``: a key counts when its
    latest purchase up to the cutoff is inside. Two plain aggregates rather than a DISTINCT one,
    which DuckDB cannot spill to disk."""
    return alias, f"""
        SELECT customer_id, CAST(count(*) FILTER (WHERE {_inside(0, feature.window_days, 'latest')})
                                 AS DOUBLE) AS {quote_name(feature.name)}
        FROM (SELECT customer_id, {feature.expression} AS key, max(ts) AS latest FROM lines CROSS JOIN as_of
              WHERE NOT is_return AND ts <= as_of.cutoff AND {feature.expression} IS NOT NULL
              GROUP BY customer_id, {feature.expression}) CROSS JOIN as_of
        GROUP BY customer_id"""


def _last_ts_columns(features: list[Feature]) -> list[str]:
    return [f"max(ts) FILTER (WHERE ({f.where}) AND {_inside(0, f.window_days)}) AS {quote_name(last_columns(f)[0])}"
            for f in features]


def _uses_value(feature: Feature) -> bool:
    return re.search(r"\bvalue\b", feature.expression) is not None


def _last_value_step(feature: Feature, alias: str) -> tuple[str, str]:
    """The value of the latest matching event; ties at one instant take the largest value, as
    in the sweep. Only the events at the latest instant are read."""
    ts_column, value_column = (quote_name(c) for c in last_columns(feature))
    return alias, f"""
        SELECT e.customer_id, max(CAST(e.value AS DOUBLE)) AS {value_column}
        FROM {feature.source} e JOIN agg_{feature.source} a ON a.customer_id = e.customer_id AND e.ts = a.{ts_column}
        WHERE ({feature.where})
        GROUP BY e.customer_id"""


def snapshot_sql(plan: FeaturePlan, config: FeaturesConfig, available: dict[str, set[str]],
                 materialized: frozenset[str] = frozenset()) -> str:
    """Every feature of ``plan`` at the one instant in relation ``as_of`` (column ``cutoff``), as
    one DuckDB query over the ``src_`` tables: one aggregate per event source, then the shared
    assembly. Rows: the active customers, sorted by customer_id. Steps named in ``materialized``
    are read as tables already there (the pooled steps, computed once over every customer)."""
    by_kind = lambda kind, source=None: [f for f in plan.features  # noqa: E731
                                         if f.kind == kind and (source is None or f.source == source)]
    steps = [step for step in event_steps(available) if step[0] not in materialized]
    # Orders: the running purchase statistics of the sweep (its gap of a purchase is to the
    # customer's previous purchase, so only purchases up to the cutoff are read), and the sums.
    gap = "(epoch_us(ts) - epoch_us(lag(ts) OVER (PARTITION BY customer_id ORDER BY ts))) / 86400000000.0"
    history = ["count(*) FILTER (WHERE ts <= cutoff) AS n_orders", "min(ts) AS first_ts",
               "max(ts) FILTER (WHERE ts <= cutoff) AS last_ts",
               f"{_exact_sum('gap * gap', 'ts <= cutoff')} AS gap_sq_sum"]
    steps.append(("agg_orders", f"""
        SELECT customer_id, {', '.join(history + _window_columns(by_kind('window', 'orders')))}
        FROM (SELECT o.*, {gap} AS gap FROM orders o CROSS JOIN as_of WHERE o.ts <= as_of.cutoff) o
        CROSS JOIN as_of GROUP BY customer_id"""))
    cancelled = ""
    if has_cancellations(available):
        steps.append(("cancellations", "SELECT customer_id, min(cancellation_date) AS cancelled_at FROM src_customers "
                                       "WHERE cancellation_date IS NOT NULL GROUP BY customer_id"))
        cancelled = ("AND NOT EXISTS (SELECT 1 FROM cancellations k WHERE k.customer_id = h.customer_id "
                     "AND k.cancelled_at <= as_of.cutoff)")
    steps.append(("population", f"""
        SELECT h.*, as_of.cutoff FROM agg_orders h CROSS JOIN as_of
        WHERE h.n_orders > 0 AND epoch_us(h.last_ts) > epoch_us(as_of.cutoff)
              - {config.active_lookback_days * _US_PER_DAY} {cancelled}"""))
    joins: list[tuple[str, list[str], bool]] = []  # (step, its columns, absent means zero)
    for source in ("lines", "interactions"):
        columns = _window_columns(by_kind("window", source))
        if source == "interactions":
            columns += _last_ts_columns(by_kind("last"))
        if columns:
            steps.append((f"agg_{source}", f"""
                SELECT customer_id, {', '.join(columns)} FROM {source} CROSS JOIN as_of
                WHERE ts <= as_of.cutoff GROUP BY customer_id"""))
            joins.append((f"agg_{source}", [f.name for f in by_kind("window", source)], True))
            lasts = [f for f in by_kind("last") if f.source == source]
            if lasts:
                joins.append((f"agg_{source}", [last_columns(f)[0] for f in lasts], False))
    for index, feature in enumerate(by_kind("distinct")):
        steps.append(_distinct_step(feature, f"d{index}"))
        joins.append((f"d{index}", [feature.name], True))
    for index, feature in enumerate(by_kind("last")):
        if feature.source != "interactions":
            raise ValueError(f"internal: 'last' feature {feature.name} reads {feature.source}; only interactions")
        if _uses_value(feature):  # the others read only the time of the latest event
            steps.append(_last_value_step(feature, f"v{index}"))
            joins.append((f"v{index}", [last_columns(feature)[1]], False))
    columns = ["p.customer_id", "p.cutoff", "CAST(p.n_orders AS DOUBLE) AS n_orders", "p.first_ts", "p.last_ts",
               f"(epoch_us(p.last_ts) - epoch_us(p.first_ts)) / {float(_US_PER_DAY)} AS gap_sum", "p.gap_sq_sum"]
    order_sums = [f.name for f in by_kind("window", "orders")]
    columns += [f"p.{quote_name(n)}" for n in order_sums]
    for alias, names, zero in joins:
        columns += [f"coalesce({alias}.{quote_name(n)}, 0) AS {quote_name(n)}" if zero
                    else f"{alias}.{quote_name(n)}" for n in names]
    joined = " ".join(f"LEFT JOIN {alias} ON {alias}.customer_id = p.customer_id"
                      for alias in dict.fromkeys(alias for alias, _, _ in joins))
    raw = [*HISTORY, *order_sums, *(n for _, names, _ in joins for n in names)]
    rows = f"SELECT {', '.join(columns)} FROM population p {joined}"
    customers = "src_customers" if "customers" in available else None
    body = assembly_sql(plan, rows, raw, False, customers)
    return f"WITH {', '.join(f'{name} AS ({sql})' for name, sql in steps)} SELECT * FROM ({body}) ORDER BY customer_id"


def compute_snapshot(tables: dict[str, pd.DataFrame | str | None], cutoff: pd.Timestamp, config: FeaturesConfig,
                     features: list[Feature] | None = None, blocks: int | None = None
                     ) -> tuple[pd.DataFrame, FeaturePlan]:
    """Features (no labels) of every active customer at ``cutoff``: the same rows, columns and
    values as ``compute_snapshots(tables, [cutoff], config, with_labels=False)``, computed over
    ``blocks`` blocks of customers (default: as many as ``config.memory_limit`` needs)."""
    instant = pd.Timestamp(cutoff)
    with tempfile.TemporaryDirectory(prefix="churnlens-single-date-") as spill, duckdb.connect() as con:
        # Rows come out in an explicit order, so DuckDB need not keep its scans in insertion order
        # (which holds more in memory).
        for setting in ("TimeZone = 'UTC'", f"memory_limit = '{config.memory_limit}'", f"temp_directory = '{spill}'",
                        "preserve_insertion_order = false"):
            con.execute(f"SET {setting}")
        available = register_sources(con, tables, prefix=WHOLE)
        definitions = features if features is not None else definitions_for(config)
        plan = plan_features(definitions, available)
        con.execute(f"CREATE TEMP TABLE as_of AS SELECT TIMESTAMP '{instant.isoformat(sep=' ')}' AS cutoff")
        try:
            frame = _snapshot_in_blocks(con, plan, config, available, blocks).to_pandas()
        except (duckdb.OutOfRangeException, duckdb.ConversionException) as exc:
            log.info("features: exact sums overflow on this log (%s); using the many-cutoff sweep", exc)
            frame = None
    if frame is None:
        from churnlens.engines.duckdb import compute_snapshots

        return compute_snapshots(tables, [instant], config, with_labels=False, features=features)
    frame["cutoff"] = frame["cutoff"].astype("datetime64[us]")
    for name in plan.categorical:
        frame[name] = frame[name].astype("string")
    for name in plan.names:
        if name in frame and name not in plan.categorical:
            frame[name] = frame[name].astype(np.float64)
    return with_fitted_features(frame, plan, config), plan


WHOLE = "whole_"  # the registered tables; the query reads their ``src_`` views of one block of customers
# DuckDB's working memory per event (transaction line or interaction) for this query, measured at
# 10M lines + 9M interactions (4.0 GB at the peak): sizes the first try at the number of blocks.
BYTES_PER_EVENT = 210
MAX_BLOCKS = 256


def _snapshot_in_blocks(con: duckdb.DuckDBPyConnection, plan: FeaturePlan, config: FeaturesConfig,
                        available: dict[str, set[str]], blocks: int | None) -> pa.Table:
    """:func:`snapshot_sql` over the customers split into blocks (by a hash of customer_id), so that
    DuckDB's memory is bounded by a block, not the customer base: part of one query's state (the
    orders' window, the shared event relations) cannot spill to disk. A customer's features read
    only that customer's events and the pooled steps (a product's price level or repeat rate),
    which are computed once over every customer first, so any number of blocks gives the same rows.
    The first try sizes blocks to half of ``features.memory_limit``; out of memory, blocks shrink."""
    pooled = _materialize_pooled_steps(con, available)
    blocks = blocks or _first_block_count(con, available, memory_bytes(config.memory_limit))
    while True:
        try:
            parts = []
            for block in range(blocks):
                _select_block(con, available, block, blocks)
                parts.append(con.sql(snapshot_sql(plan, config, available, materialized=pooled)).to_arrow_table())
            break
        except duckdb.OutOfMemoryException as exc:
            if blocks * 4 > MAX_BLOCKS:
                raise
            log.info("features: a block of 1/%d of the customers needs more than features.memory_limit = %s (%s); "
                     "trying 1/%d", blocks, config.memory_limit, str(exc).splitlines()[0], blocks * 4)
            blocks *= 4
    table = pa.concat_tables(parts)
    return table if blocks == 1 else table.sort_by("customer_id")


def _select_block(con: duckdb.DuckDBPyConnection, available: dict[str, set[str]], block: int, blocks: int) -> None:
    """Point the ``src_`` views at one block of customers (all of them when ``blocks`` is 1)."""
    where = f" WHERE hash(customer_id) % {blocks} = {block}" if blocks > 1 else ""
    for name in available:
        con.execute(f"CREATE OR REPLACE TEMP VIEW src_{name} AS SELECT * FROM {WHOLE}{name}{where}")


def _materialize_pooled_steps(con: duckdb.DuckDBPyConnection, available: dict[str, set[str]]) -> frozenset[str]:
    """The :data:`~churnlens.sql.POOLED_STEPS` of this log as tables over every customer (each with
    the earlier steps it reads as CTEs); returns their names."""
    _select_block(con, available, 0, 1)
    steps = event_steps(available)
    done: list[str] = []
    for index, (name, body) in enumerate(steps):
        if name in POOLED_STEPS:
            earlier = [f"{n} AS ({sql})" for n, sql in steps[:index] if n not in done]
            con.execute(f"CREATE TEMP TABLE {name} AS {'WITH ' + ', '.join(earlier) if earlier else ''} {body}")
            done.append(name)
    return frozenset(done)


def _first_block_count(con: duckdb.DuckDBPyConnection, available: dict[str, set[str]], limit_bytes: int) -> int:
    events = sum(con.execute(f"SELECT count(*) FROM {WHOLE}{name}").fetchone()[0]
                 for name in ("transactions", "interactions") if name in available)
    return min(MAX_BLOCKS, max(1, math.ceil(events * BYTES_PER_EVENT / (limit_bytes / 2))))
