"""The single-machine engine: DuckDB prepares the events, numpy computes every cutoff in one sweep.

How all cutoffs are computed in one sweep, without joining every event to every cutoff:

* DuckDB prepares the events (orders, lines, interactions keyed by a dense customer code) and
  evaluates every SQL expression of the definitions (:mod:`churnlens.sql`): per-event measures,
  then, per (customer, cutoff) row, history, profile and derived features;
* :mod:`churnlens.engines.timegrid` turns per-event measures into as-of values: the sum over
  ``(c - w, c]`` is the running total as of ``c`` minus the one as of ``c - w``, and all running
  totals at all the instants needed (every cutoff minus every window edge) come from one
  scatter-add and one cumulative sum, so the work grows with events plus customers x instants,
  not with events x cutoffs; "last" features (last NPS, last complaint) are a running latest;
* distinct counts in a window (categories, products) OR each (customer, key)'s purchases into a
  bit mask of the cutoffs whose window holds them, and count the bits;
* customers are processed in blocks, so memory is bounded by the block, not the customer base.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from churnlens.config import FeaturesConfig
from churnlens.engines import timegrid
from churnlens.features import Feature, FeaturePlan, definitions_for, fit_columns, plan_features, with_fitted_features
from churnlens.schemas import CANONICAL_TABLES
from churnlens.sql import (
    EVENT_RELATIONS,
    assembly_sql,
    check_label_source,
    event_steps,
    has_cancellations,
    last_columns,
    snapshot_sql,
)
from churnlens.sqltext import literal, quote_name

if TYPE_CHECKING:
    from churnlens.config import Params
    from churnlens.engines import Laps, Scored
    from churnlens.score import ScoreJob
    from churnlens.tracking import LoadedModel, ResolvedModel

log = logging.getLogger(__name__)
Tables = dict[str, "pd.DataFrame | str | None"]


def register_sources(con: duckdb.DuckDBPyConnection, tables: dict[str, pd.DataFrame | str | None],
                     prefix: str = "src_") -> dict[str, set[str]]:
    """Expose canonical tables (DataFrames or Parquet paths) as DuckDB views named ``prefix`` +
    table; return their columns."""
    available: dict[str, set[str]] = {}
    for name, table in tables.items():
        if table is None:
            continue
        if isinstance(table, pd.DataFrame):
            con.register(f"{prefix}{name}", table)
        else:
            con.execute(f"CREATE OR REPLACE VIEW {prefix}{name} AS SELECT * FROM read_parquet({literal(str(table))})")
        available[name] = {row[0] for row in con.execute(f"DESCRIBE {prefix}{name}").fetchall()}
    if "transactions" not in available:
        raise ValueError("features: a transactions table is required")
    return available


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


_US_PER_DAY = 86_400_000_000
_NEVER = np.iinfo(np.int64).max


class _Engine:
    """One DuckDB session holding the prepared events; computes snapshots block by block.

    DuckDB prepares the events and evaluates every SQL expression of the definitions (per-event
    measures, derived features, profile features); :mod:`churnlens.engines.timegrid` turns per-event
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
                        f"temp_directory = {literal(self._spill.name)}",
                        # Measures are fetched one query at a time and must line up row by row.
                        "preserve_insertion_order = true"):
            self.con.execute(f"SET {setting}")
        self.available = register_sources(self.con, tables)
        definitions = features if features is not None else definitions_for(config)
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
            offsets |= {-c.lead_days, -c.label_end.days, c.horizon_days}
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

        # Orders carry a value only where transactions have an amount (a log of customers and
        # times has none); only the partial-churn label reads it, and it demands an amount.
        spend = "amount" in self.available["transactions"]
        orders = self._events("orders", low, high,
                              f"code - {low} AS code, epoch_us(ts) AS t{', value' if spend else ''}")
        on_grid = timegrid.EventsOnGrid(grid, orders["code"], orders["t"])
        n_orders, value = on_grid.running_sum(), on_grid.running_sum(orders["value"]) if spend else None
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
            # Every measure of the source in one scan of the block's events (was a scan per measure).
            measures = list(dict.fromkeys(f.expression for f in group if f.expression != "1"))
            events = self._events(source, low, high, ", ".join(
                [f"code - {low} AS code", "epoch_us(ts) AS t"]
                + [f"CAST({expression} AS DOUBLE) AS m{index}" for index, expression in enumerate(measures)]))
            on_grid = timegrid.EventsOnGrid(grid, events["code"], events["t"])
            running: dict[str, np.ndarray] = {}  # one running total per distinct measure
            for f in group:
                if f.expression not in running:
                    measure = None if f.expression == "1" else events[f"m{measures.index(f.expression)}"]
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
            ts_column, value_column = last_columns(f)
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
        start, end = at(-c.lead_days)[which], at(-c.label_end.days)[which]
        purchases = n_orders[codes, end] - n_orders[codes, start]
        cutoff = self.cutoffs[which]
        cancelled = ((cancelled_at[codes] > cutoff + c.lead_days * _US_PER_DAY)
                     & (cancelled_at[codes] <= cutoff + c.label_end.days * _US_PER_DAY))
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


def write_snapshots(tables: dict[str, pd.DataFrame | str | None], cutoffs: list[pd.Timestamp],
                    config: FeaturesConfig, target: Path, label_complete_until: pd.Timestamp | None = None
                    ) -> FeaturePlan:
    """Like :func:`compute_snapshots`, streamed block by block into one Parquet file (atomically),
    with ``label_complete`` = the cutoff's label window ends by ``label_complete_until``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from churnlens.io import atomic_path

    from churnlens import bgnbd

    with _Engine(tables, cutoffs, config, None) as engine, atomic_path(target) as temporary:
        # Pass 1 streams the blocks (by customer) to a scratch file and keeps the few columns the
        # per-cutoff fits need; pass 2 appends the fitted features, batch by batch. The scratch file
        # is Arrow IPC, uncompressed: it is read once, and compressing then decoding it as Parquet
        # was a fifth of the sweep (5-6 s of 58 at 10M lines).
        scratch, fit_inputs = Path(engine._spill.name) / "snapshots.arrow", fit_columns(engine.plan)
        inputs, writer = [], None
        for block in engine.blocks(with_labels=True):
            if label_complete_until is None:
                complete = pa.array([False] * block.num_rows)
            else:
                limit = pa.scalar(config.labels_complete_until(pd.Timestamp(label_complete_until)),
                                  type=pa.timestamp("us"))
                complete = pc.less_equal(block["cutoff"], limit)
            block = block.append_column("label_complete", complete)
            if fit_inputs:
                # Gathered into new buffers, not selected: DuckDB's Arrow export frees a batch only
                # once all its columns are gone, so a few columns kept per block kept every block of
                # the run (peak RSS 3.9 GB at 10M lines, ~1.7 GB of it those blocks).
                inputs.append(block.select(fit_inputs).take(np.arange(block.num_rows)))
            if writer is None:
                writer = (pa.ipc.new_file(str(scratch), block.schema) if fit_inputs
                          else pq.ParquetWriter(temporary, block.schema, compression="zstd"))
            writer.write_table(block)
        writer.close()
        if fit_inputs:
            fits = bgnbd.fits_per_cutoff(_cutoff_frame(pa.concat_tables(inputs)))
            writer, written = None, None
            # One thread compresses and writes each row group while the next batch's fitted features
            # are computed (Arrow releases the GIL): the zstd writes were 6.5 s of a 43 s sweep at 10M
            # lines. One worker writes in submission order, so the file's bytes do not change.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="churnlens-write") as pool:
                for table in _in_batches(scratch, SNAPSHOT_ROW_GROUP):
                    rows = _cutoff_frame(table.select(fit_inputs))
                    fitted = with_fitted_features(rows, engine.plan, config, fits)[list(bgnbd.BTYD_FEATURES)]
                    for name in bgnbd.BTYD_FEATURES:
                        table = table.append_column(name, pa.array(fitted[name].to_numpy(dtype=np.float64)))
                    # Same column order as compute_snapshots (and the Spark engine): the flag comes last.
                    table = table.select([c for c in table.column_names if c != "label_complete"]
                                         + ["label_complete"])
                    if writer is None:
                        writer = pq.ParquetWriter(temporary, table.schema, compression="zstd")
                    if written is not None:
                        written.result()  # at most one row group waits: memory stays one batch
                    written = pool.submit(writer.write_table, table)
                if written is not None:
                    written.result()
            writer.close()
        return engine.plan


SNAPSHOT_ROW_GROUP = 200_000  # rows per row group of the snapshots file


def _in_batches(path: Path, rows: int) -> Iterator[pa.Table]:
    """The Arrow IPC file at ``path`` as tables of exactly ``rows`` rows (the last may be shorter),
    each column one contiguous array, whatever the file's own batches: each becomes one Parquet row
    group. Batches are read one at a time, not memory-mapped, so the file never sits in memory."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        pending = reader.schema.empty_table()
        for index in range(reader.num_record_batches):
            pending = pa.concat_tables([pending, pa.Table.from_batches([reader.get_batch(index)])])
            while pending.num_rows >= rows:
                yield pending.slice(0, rows).combine_chunks()
                pending = pending.slice(rows)
        if pending.num_rows:
            yield pending.combine_chunks()


def _cutoff_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    frame["cutoff"] = frame["cutoff"].astype("datetime64[us]")
    return frame


def data_span(tables: dict[str, pd.DataFrame | str | None]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last transaction timestamp."""
    with duckdb.connect() as con:
        register_sources(con, {"transactions": tables["transactions"]})
        first, last = con.execute("SELECT min(timestamp), max(timestamp) FROM src_transactions").fetchone()
    if first is None:
        raise ValueError("features: the transactions table is empty")
    return pd.Timestamp(first), pd.Timestamp(last)


def reference_snapshots(tables: Tables, cutoffs: list, config: FeaturesConfig, with_labels: bool = True
                        ) -> tuple[pd.DataFrame, FeaturePlan]:
    """:func:`churnlens.sql.snapshot_sql` run by DuckDB: the slow, obviously-correct reference for tests."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        available = register_sources(con, tables)
        plan = plan_features(definitions_for(config), available)
        con.register("cutoff_frame", pd.DataFrame({"cutoff": pd.to_datetime(pd.Series(cutoffs)).astype("datetime64[us]")}))
        con.execute("CREATE TEMP TABLE cutoffs AS SELECT CAST(cutoff AS TIMESTAMP) AS cutoff FROM cutoff_frame")
        frame = con.sql(snapshot_sql(plan, config, available, with_labels)).df()
    frame["cutoff"] = frame["cutoff"].astype("datetime64[us]")
    for name in plan.categorical:
        frame[name] = frame[name].astype("string")
    return with_fitted_features(frame, plan, config), plan


class MemoryLimitError(ValueError):
    """DuckDB needed more than its memory share for work it cannot spill to disk."""


@contextmanager
def memory_limit_named(config: FeaturesConfig) -> Iterator[None]:
    """DuckDB's out-of-memory error as the user's side of it: which setting bounds DuckDB and what
    to change (a :class:`MemoryLimitError`, a message rather than a traceback)."""
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MemoryLimitError(
            f"DuckDB ran out of its memory share, features.memory_limit = {config.memory_limit} in params.yaml "
            f"({first_line}). Most of its work spills to disk beyond that share, but not all: raise "
            "features.memory_limit (e.g. to half this machine's memory) and run again.") from None


class DuckDBEngine:
    """The engine interface (:mod:`churnlens.engines`) on this machine: canonical tables are
    Parquet paths, outputs single files written atomically."""

    name = "duckdb"

    def tables(self, canonical_dir: str) -> dict[str, str | None]:
        paths = {name: Path(canonical_dir) / f"{name}.parquet" for name in CANONICAL_TABLES}
        if not paths["transactions"].is_file():
            raise FileNotFoundError(f"{paths['transactions']}: no canonical transactions; run `churnlens ingest` first")
        return {name: str(path) if path.is_file() else None for name, path in paths.items()}

    def data_span(self, tables: Tables) -> tuple[pd.Timestamp, pd.Timestamp]:
        return data_span(tables)

    def write_snapshots(self, tables: Tables, cutoffs: list[pd.Timestamp], config: FeaturesConfig, target: str,
                        label_complete_until: pd.Timestamp | None) -> tuple[FeaturePlan, list[tuple]]:
        with memory_limit_named(config):
            plan = write_snapshots(tables, cutoffs, config, Path(target), label_complete_until)
        with duckdb.connect() as con:
            per_cutoff = con.execute(
                f"SELECT cutoff, count(*), avg(CAST(churned AS DOUBLE)) FROM read_parquet({literal(str(target))}) "
                "GROUP BY cutoff ORDER BY cutoff").fetchall()
        return plan, per_cutoff

    def score(self, tables: Tables, instant: pd.Timestamp, model: ResolvedModel, job: ScoreJob, laps: Laps) -> Scored:
        from churnlens import io, score, segments, tracking
        from churnlens.engines import Scored

        from churnlens import bgnbd  # noqa: F401  (imported here, before the loader thread starts importing)
        from churnlens.single_date import compute_snapshot  # one date: one query, not the sweep

        params = job.params
        log.info("score: features as of %s with %s v%s", instant.isoformat(), model.name, model.version)
        # The model is read while DuckDB computes the features: reading it is mostly importing
        # scikit-learn, skops and XGBoost (1-2 s of Python), and DuckDB releases the GIL, so on two
        # cores the two overlap instead of adding up. The feature step imports nothing new meanwhile.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="churnlens-model") as pool:
            loading = pool.submit(tracking.load_resolved, model)
            with memory_limit_named(params.features):
                snapshot, _ = compute_snapshot(tables, instant, params.features)
            laps.lap("features")
            loaded = loading.result()
        laps.lap("load_model")  # what reading the model added after the features
        log.info("score: %d active customers; probabilities, segments, plan, then reasons", len(snapshot))
        score.require_model_inputs(loaded, snapshot.columns)
        probability = probabilities_in_chunks(loaded, snapshot, params.score.chunk_rows)
        laps.lap("predict")
        assigned = segments.assign_segments(snapshot, params.score.segments)
        scores = score.build_scores(snapshot, probability, assigned, params.score, instant, loaded.name,
                                    loaded.version)
        laps.lap("segments_and_plan")
        # Reasons last: with score.reasons_for = campaign only the chosen rows get the exact method.
        ranked = pd.Index(snapshot["customer_id"]).get_indexer(scores["customer_id"])
        methods = score.reason_methods(probability[ranked], params.score, scores["in_campaign"].to_numpy())
        reasons = reasons_in_chunks(loaded, snapshot.iloc[ranked].set_axis(scores.index), methods, params,
                                    job.show_progress)
        # One contiguous column (not the chunks' pieces): Parquet pages, hence the file's bytes, follow it.
        scores["top_reasons"] = pd.array(reasons.to_numpy(dtype=object), dtype="string")
        laps.lap("reasons")
        io.write_parquet(scores, Path(job.output))
        csv_output = job.csv_output if job.csv_output is not None else job.beside("csv")
        io.write_csv(score.scores_for_csv(scores), csv_output)
        laps.lap("write")
        return Scored(scores, snapshot, loaded, io.file_fingerprint(Path(job.canonical_dir)), str(job.output),
                      str(csv_output))

    def close(self) -> None:
        """Nothing outlives a call: each computation opens and closes its own DuckDB session."""

    def __enter__(self) -> DuckDBEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probabilities_in_chunks(loaded: LoadedModel, snapshot: pd.DataFrame, chunk_rows: int) -> np.ndarray:
    """Churn probabilities for every row, ``chunk_rows`` at a time (bounds the model input's memory)."""
    from churnlens import model

    numeric, categorical = loaded.contract.numeric_features, loaded.contract.categorical_features
    probability = np.empty(len(snapshot))
    for start in range(0, len(snapshot), chunk_rows):
        chunk = snapshot.iloc[start:start + chunk_rows]
        probability[start:start + len(chunk)] = model.churn_probability(loaded.pipeline, chunk, numeric, categorical)
    return probability


def reasons_in_chunks(loaded: LoadedModel, snapshot: pd.DataFrame, methods: np.ndarray, params: Params,
                      show_progress: bool) -> pd.Series:
    """Every row's top reasons (indexed like ``snapshot``) by its method (:func:`churnlens.score.reason_methods`),
    with a progress bar: the exact ones are most of the job."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from churnlens import score

    config, contract = params.score, loaded.contract
    reasons: list[pd.Series] = [pd.Series("", index=snapshot.index[:0], dtype="string")]
    # Every row is explained on its own, so smaller steps than chunk_rows give the same bytes; about
    # twenty of them let the bar move on a batch that fits one chunk.
    step = min(config.chunk_rows, max(1_000, -(-len(snapshot) // 20)))
    columns = (TextColumn("reasons"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("reasons", total=len(snapshot))
        for start in range(0, len(snapshot), step):
            chunk = snapshot.iloc[start:start + step]
            reasons.append(score.customer_reasons_by_method(
                loaded.pipeline, chunk, methods[start:start + step], contract.numeric_features,
                contract.categorical_features, params.features.windows_days))
            progress.advance(task, len(chunk))
    return pd.concat(reasons)
