"""Feature computation at scale, every comparison against a named baseline from the same run.

    python benchmarks/features_benchmark.py --customers 500000 --days 365 [--repeats 3]

Simulates a year of 500k customers once (about 16M lines), keeps whole orders at random down to
10M transactions (12 monthly cutoffs need a year of history: fewer days would leave early cutoffs empty)
into benchmarks/out/, then runs each contender in its own process (so its peak RSS is its own),
``--repeats`` times, taking turns, and prints medians and per-repeat ratios:

* the floor: a DuckDB scan with one aggregate per column (count, sum, max per customer, one cutoff);
* a plain DuckDB pass of 17 per-customer features (RFM, purchase gaps, 30/90/365-day windows);
* churnlens, one date (the scoring path, :mod:`churnlens.single_date`), every feature;
* churnlens, 12 monthly cutoffs in one sweep, every feature and the labels;
* the library people use today: lifetimes' ``summary_data_from_transaction_data`` once per cutoff,
  12 times (``pip install -e .[bench]``; without it, the same summary written in pandas).

Whether a change keeps every byte of the snapshots is benchmarks/same_bytes.py's question.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import alternating, log_size_args, log_size_parser, median, ratio_line, run_child, table

OUT = Path(__file__).resolve().parent / "out"


def data_dir(customers: int, days: int) -> Path:
    return OUT / f"features_{customers}_{days}"


def thinned_dir(customers: int, days: int, transactions: int) -> Path:
    return OUT / f"features_{customers}_{days}_{transactions}"


def cutoffs(folder: Path, count: int) -> list[pd.Timestamp]:
    import duckdb

    with duckdb.connect() as con:
        last = con.execute(f"SELECT max(timestamp) FROM '{folder}/transactions.parquet'").fetchone()[0]
    end = pd.Timestamp(last).normalize() - pd.Timedelta(days=1)
    return [end - pd.Timedelta(days=30 * k) for k in range(count)][::-1]


def simulate_once(folder: Path, **config: int) -> Path:
    """Simulated canonical tables (Parquet) in ``folder``, unless they are there already."""
    from churnlens.config import SimulateConfig
    from churnlens.simulate import simulate

    if not (folder / "transactions.parquet").exists():
        folder.mkdir(parents=True, exist_ok=True)
        data = simulate(SimulateConfig(seed=1, **config))
        lines = data.transactions.drop(columns=["transaction_id"])
        lines["is_return"] = lines["quantity"] < 0
        lines.to_parquet(folder / "transactions.parquet", index=False)
        data.interactions.to_parquet(folder / "interactions.parquet", index=False)
        data.customers.to_parquet(folder / "customers.parquet", index=False)
    return folder


def prepare(customers: int, days: int, transactions: int) -> Path:
    """Simulate once, then keep whole orders at random until about ``transactions`` lines remain
    (a year of history at 500k customers is ~16M lines; the issue asks for 10M)."""
    import shutil

    import duckdb

    folder = data_dir(customers, days)
    simulate_once(folder, n_customers=customers, n_days=days, customers_per_chunk=10_000)
    thinned = thinned_dir(customers, days, transactions)
    if not (thinned / "transactions.parquet").exists():
        thinned.mkdir(parents=True, exist_ok=True)
        with duckdb.connect() as con:
            total = con.execute(f"SELECT count(*) FROM '{folder}/transactions.parquet'").fetchone()[0]
            keep = min(10_000, round(10_000 * transactions / total))
            con.execute(f"COPY (SELECT * FROM '{folder}/transactions.parquet' WHERE hash(order_id) % 10000 < {keep}) "
                        f"TO '{thinned}/transactions.parquet' (FORMAT parquet)")
        for name in ("interactions", "customers"):
            shutil.copy(folder / f"{name}.parquet", thinned / f"{name}.parquet")
    return thinned


def run_churnlens(folder: Path, n_cutoffs: int) -> None:
    from churnlens.config import FeaturesConfig
    from churnlens.engines.duckdb import write_snapshots

    tables = {name: str(folder / f"{name}.parquet") for name in ("transactions", "interactions", "customers")}
    target = OUT / f"snapshots_{n_cutoffs}.parquet"
    plan = write_snapshots(tables, cutoffs(folder, n_cutoffs), FeaturesConfig(), target)
    rows = pd.read_parquet(target, columns=["cutoff"]).shape[0]
    print(f"churnlens: {rows:,} rows x {len(plan.names)} features (+ labels), written to Parquet")


def run_floor(folder: Path) -> None:
    import duckdb

    cutoff = cutoffs(folder, 1)[0]
    result = duckdb.connect().sql(f"""
        SELECT customer_id, count(*) AS n, sum(amount) AS spend, max(timestamp) AS last
        FROM '{folder}/transactions.parquet' WHERE timestamp <= TIMESTAMP '{cutoff}' GROUP BY customer_id
    """).fetchdf()
    print(f"floor: {len(result):,} customers")


def run_plain(folder: Path) -> None:
    """What a data scientist writes by hand in DuckDB: 17 per-customer features at one cutoff."""
    import duckdb

    cutoff = cutoffs(folder, 1)[0]
    windows = ", ".join(
        f"count(DISTINCT order_id) FILTER (WHERE timestamp > c - INTERVAL {w} DAY) AS orders_{w}d, "
        f"sum(amount) FILTER (WHERE timestamp > c - INTERVAL {w} DAY) AS spend_{w}d, "
        f"count(*) FILTER (WHERE timestamp > c - INTERVAL {w} DAY) AS lines_{w}d" for w in (30, 90, 365))
    result = duckdb.connect().sql(f"""
        WITH tx AS (SELECT *, TIMESTAMP '{cutoff}' AS c FROM '{folder}/transactions.parquet'
                    WHERE timestamp <= TIMESTAMP '{cutoff}'),
        orders AS (SELECT customer_id, order_id, min(timestamp) AS ts, sum(amount) AS value FROM tx
                   GROUP BY customer_id, order_id),
        gaps AS (SELECT customer_id, ts, value,
                        epoch(ts - lag(ts) OVER (PARTITION BY customer_id ORDER BY ts)) / 86400 AS gap FROM orders)
        SELECT * FROM (SELECT customer_id, {windows}, count(*) AS lines, sum(CAST(is_return AS INT)) AS returns
                       FROM tx GROUP BY customer_id)
        JOIN (SELECT customer_id, count(*) AS orders, epoch(max(TIMESTAMP '{cutoff}') - max(ts)) / 86400 AS recency,
                     epoch(max(ts) - min(ts)) / 86400 AS span, avg(value) AS avg_value, avg(gap) AS mean_gap,
                     stddev(gap) AS gap_std FROM gaps GROUP BY customer_id) USING (customer_id)
    """).fetchdf()
    print(f"plain: {len(result):,} customers x {result.shape[1] - 1} features")


def run_single(folder: Path) -> None:
    from churnlens.config import FeaturesConfig
    from churnlens.single_date import compute_snapshot

    tables = {name: str(folder / f"{name}.parquet") for name in ("transactions", "interactions", "customers")}
    frame, plan = compute_snapshot(tables, cutoffs(folder, 1)[0], FeaturesConfig())
    frame.to_parquet(OUT / "snapshot_one_date.parquet")
    print(f"churnlens one date: {len(frame):,} rows x {len(plan.names)} features")


def rfm_summary(transactions: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """lifetimes.utils.summary_data_from_transaction_data, as a user would write it in pandas."""
    history = transactions[transactions["timestamp"] <= cutoff]
    daily = history.assign(day=history["timestamp"].dt.floor("D")).groupby(["customer_id", "day"], as_index=False)[
        "amount"].sum()
    grouped = daily.groupby("customer_id")
    summary = pd.DataFrame({
        "frequency": grouped["day"].count() - 1,
        "recency": (grouped["day"].max() - grouped["day"].min()).dt.days,
        "T": (cutoff - grouped["day"].min()).dt.days,
        "monetary_value": grouped["amount"].sum() / grouped["day"].count(),
    })
    return summary


def run_pandas(folder: Path, n_cutoffs: int) -> None:
    transactions = pd.read_parquet(folder / "transactions.parquet", columns=["customer_id", "timestamp", "amount"])
    try:
        from lifetimes.utils import summary_data_from_transaction_data
    except ImportError:  # not installed (pip install -e .[bench]): the same summary in pandas
        summaries = [rfm_summary(transactions, c) for c in cutoffs(folder, n_cutoffs)]
    else:
        summaries = [summary_data_from_transaction_data(transactions, "customer_id", "timestamp",
                                                        monetary_value_col="amount", observation_period_end=c)
                     for c in cutoffs(folder, n_cutoffs)]
    total = sum(len(s) for s in summaries)
    print(f"RFM summaries: {total:,} rows")


def baseline_name() -> str:
    import importlib.util

    return ("lifetimes summary x 12 cutoffs" if importlib.util.find_spec("lifetimes")
            else "pandas RFM summary x 12 cutoffs (lifetimes not installed)")


def main() -> None:
    parser = log_size_parser(__doc__)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = thinned_dir(args.customers, args.days, args.transactions)
    if args.run:
        kind, _, count = args.run.partition(":")
        {"churnlens": lambda: run_churnlens(folder, int(count)), "floor": lambda: run_floor(folder),
         "plain": lambda: run_plain(folder), "single": lambda: run_single(folder),
         "pandas": lambda: run_pandas(folder, int(count)),
         "prepare": lambda: prepare(args.customers, args.days, args.transactions)}[kind]()
        return
    sizes = log_size_args(args)
    run_child(__file__, *sizes, "--run", "prepare")
    import duckdb

    with duckdb.connect() as con:
        n_tx = con.execute(f"SELECT count(*) FROM '{folder}/transactions.parquet'").fetchall()[0][0]
    common = [__file__, *sizes, "--run"]
    baseline = baseline_name()
    floor, plain, one, twelve, library = alternating({
        "duckdb floor (1 cutoff, 1 aggregate per column)": [*common, "floor"],
        "plain duckdb, 17 features (1 cutoff)": [*common, "plain"],
        "churnlens, 1 date": [*common, "single"],
        "churnlens, 12 cutoffs": [*common, "churnlens:12"],
        baseline: [*common, "pandas:12"],
    }, args.repeats)
    print(f"\n{n_tx:,} transactions, {args.customers:,} customers, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, medians of {args.repeats} alternating runs\n")
    print(table([median(r) for r in (floor, plain, one, twelve, library)], baseline))
    print()
    print(ratio_line(one, plain, "target <= 2"))
    print(ratio_line(twelve, one, "target <= 1.5"))
    print(ratio_line(library, twelve, "target >= 5"))
    print(ratio_line(one, floor))
    print(f"peak RSS: 1 date {median(one).peak_text(1024, 2)} GB, 12 cutoffs {median(twelve).peak_text(1024, 2)} GB "
          "(target <= 3 at 10M)")


if __name__ == "__main__":
    main()
