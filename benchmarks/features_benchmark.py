"""Feature computation at scale: one sweep over 12 cutoffs vs 1, vs a bare DuckDB floor, vs pandas.

    python benchmarks/features_benchmark.py --customers 500000 --days 365

Simulates a year of 500k customers once (about 16M lines), keeps whole orders at random down to
10M transactions (12 monthly cutoffs need a year of history: fewer days would leave early cutoffs empty)
into benchmarks/out/, then
runs each contender in its own process so its peak RSS is its own:

* churnlens features, 1 cutoff and 12 monthly cutoffs (all six families, labels included);
* the floor: one bare DuckDB aggregate (count, sum, max per customer at one cutoff);
* the baseline a user would otherwise write: a lifetimes-style RFM summary in pandas
  (frequency, recency, T, monetary value per customer), run once per cutoff, 12 times.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure, table

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
    record_values(f"churnlens:{n_cutoffs}", rows * (len(plan.names) + 1))


def record_values(run: str, values: int) -> None:
    """How many (row, column) values a contender produced, for the per-value comparison."""
    (OUT / f"values_{run.replace(':', '_')}.txt").write_text(str(values))


def recorded_values(run: str) -> int:
    return int((OUT / f"values_{run.replace(':', '_')}.txt").read_text())


def run_floor(folder: Path) -> None:
    import duckdb

    cutoff = cutoffs(folder, 1)[0]
    result = duckdb.connect().sql(f"""
        SELECT customer_id, count(*) AS n, sum(amount) AS spend, max(timestamp) AS last
        FROM '{folder}/transactions.parquet' WHERE timestamp <= TIMESTAMP '{cutoff}' GROUP BY customer_id
    """).fetchdf()
    print(f"floor: {len(result):,} customers")


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
    summaries = [rfm_summary(transactions, c) for c in cutoffs(folder, n_cutoffs)]
    total = sum(len(s) for s in summaries)
    print(f"pandas: {total:,} rows")
    record_values(f"pandas:{n_cutoffs}", total * summaries[0].shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = thinned_dir(args.customers, args.days, args.transactions)
    if args.run:
        kind, _, count = args.run.partition(":")
        {"churnlens": lambda: run_churnlens(folder, int(count)), "floor": lambda: run_floor(folder),
         "pandas": lambda: run_pandas(folder, int(count))}[kind]()
        return
    prepare(args.customers, args.days, args.transactions)
    import duckdb

    with duckdb.connect() as con:
        n_tx = con.execute(f"SELECT count(*) FROM '{folder}/transactions.parquet'").fetchone()[0]
    common = [__file__, "--customers", str(args.customers), "--days", str(args.days),
              "--transactions", str(args.transactions), "--run"]
    rows = [
        measure("duckdb floor (1 cutoff, 3 aggregates)", *common, "floor"),
        measure("churnlens features, 1 cutoff", *common, "churnlens:1"),
        measure("churnlens features, 12 cutoffs", *common, "churnlens:12"),
        measure("pandas RFM summary x 12 cutoffs", *common, "pandas:12"),
    ]
    by_name = {r.name: r for r in rows}
    one, twelve = by_name["churnlens features, 1 cutoff"], by_name["churnlens features, 12 cutoffs"]
    pandas12 = by_name["pandas RFM summary x 12 cutoffs"]
    print(f"\n{n_tx:,} transactions, {args.customers:,} customers, {os.cpu_count()} cores\n")
    values = {"churnlens features, 1 cutoff": recorded_values("churnlens:1"),
              "churnlens features, 12 cutoffs": recorded_values("churnlens:12"),
              "pandas RFM summary x 12 cutoffs": recorded_values("pandas:12")}
    print(table(rows, "pandas RFM summary x 12 cutoffs", values, unit="feature values"))
    print(f"\n12 cutoffs / 1 cutoff: {twelve.seconds / one.seconds:.2f}x (target <= 4)")
    print(f"pandas x12 / churnlens 12 cutoffs: {pandas12.seconds / twelve.seconds:.1f}x (target >= 10)")
    per_value = (values["churnlens features, 12 cutoffs"] / twelve.seconds) / (
        values["pandas RFM summary x 12 cutoffs"] / pandas12.seconds)
    print(f"feature values per second, churnlens 12 cutoffs / pandas x12: {per_value:.1f}x")
    print(f"churnlens 1 cutoff / duckdb floor: {one.seconds / by_name['duckdb floor (1 cutoff, 3 aggregates)'].seconds:.1f}x")
    print(f"peak RSS, 12 cutoffs: {twelve.peak_rss_mb / 1024:.2f} GB (target <= 3)")


if __name__ == "__main__":
    main()
