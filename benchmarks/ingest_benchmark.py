"""Ingest throughput and peak memory on a large messy CSV, against a plain pandas baseline.

    python benchmarks/ingest_benchmark.py --rows 10000000

Writes the CSV once under benchmarks/out/ (about 0.7 GB for 10M rows), then runs, each in its
own process so peak RSS is its own: churnlens ingest (DuckDB) and the baseline a user would
otherwise write (pandas.read_csv, to_datetime, to_numeric, dropna, drop_duplicates, to_parquet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure, table

OUT = Path(__file__).resolve().parent / "out"


def write_csv(path: Path, rows: int) -> None:
    import duckdb

    # 0.5% blank ids, 0.2% bad dates, 0.2% bad amounts, 0.3% exact duplicate rows: a realistic mess.
    duckdb.sql(f"""
        COPY (
          WITH base AS (
            SELECT i,
                   CASE WHEN i % 200 = 0 THEN '' ELSE 'C' || lpad(CAST(hash(i // 20) % 500000 AS VARCHAR), 7, '0') END
                     AS CustomerID,
                   CASE WHEN i % 500 = 1 THEN 'not a date'
                        ELSE strftime(TIMESTAMP '2023-01-01' + to_seconds(CAST(hash(i) % 63072000 AS BIGINT)),
                                      '%Y-%m-%d %H:%M:%S') END AS InvoiceDate,
                   'INV' || CAST(i // 3 AS VARCHAR) AS InvoiceNo,
                   CAST(1 + hash(i * 7) % 12 AS INTEGER) - CASE WHEN i % 97 = 0 THEN 20 ELSE 0 END AS Quantity,
                   CASE WHEN i % 500 = 3 THEN 'n/a' ELSE CAST(round(0.5 + (hash(i * 13) % 5000) / 100.0, 2) AS VARCHAR) END
                     AS UnitPrice,
                   'SKU' || CAST(hash(i * 3) % 4000 AS VARCHAR) AS StockCode,
                   'cat' || CAST(hash(i * 3) % 4000 % 40 AS VARCHAR) AS Category
            FROM range({rows}) t(i)
          )
          SELECT * EXCLUDE (i) FROM base
          UNION ALL
          SELECT * EXCLUDE (i) FROM (SELECT * FROM base WHERE i % 333 = 5 ORDER BY i LIMIT {rows // 333})
        ) TO '{path}' (HEADER, DELIMITER ',')
    """)


def run_churnlens(csv: Path, out: Path) -> None:
    from churnlens.config import IngestConfig
    from churnlens.ingest import run_ingest

    config = IngestConfig(transactions={
        "path": str(csv), "return_order_prefix": None,
        "columns": {"customer_id": "CustomerID", "timestamp": "InvoiceDate", "order_id": "InvoiceNo",
                    "quantity": "Quantity", "unit_price": "UnitPrice", "product_id": "StockCode",
                    "category": "Category"}})
    report = run_ingest(config, Path("."), out / "canonical", out / "quarantine", out / "report.json")
    print(json.dumps({k: report[k] for k in ("rows_read", "accepted", "quarantined", "duplicates_removed")}))


def run_pandas(csv: Path, out: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(csv, dtype=str)
    rows = len(frame)
    frame = frame.drop_duplicates()
    frame["customer_id"] = frame.pop("CustomerID").str.strip().replace("", None)
    frame["timestamp"] = pd.to_datetime(frame.pop("InvoiceDate"), errors="coerce", format="%Y-%m-%d %H:%M:%S")
    frame["quantity"] = pd.to_numeric(frame.pop("Quantity"), errors="coerce")
    frame["unit_price"] = pd.to_numeric(frame.pop("UnitPrice"), errors="coerce")
    frame["amount"] = frame["quantity"] * frame["unit_price"]
    bad = frame[["customer_id", "timestamp", "amount"]].isna().any(axis=1)
    frame[bad].to_parquet(out / "pandas_quarantine.parquet")
    frame[~bad].sort_values(["customer_id", "timestamp"]).to_parquet(out / "pandas_canonical.parquet")
    print(json.dumps({"rows_read": rows, "accepted": int((~bad).sum()), "quarantined": int(bad.sum())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--run", choices=["churnlens", "pandas"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    csv = OUT / f"transactions_{args.rows}.csv"
    if args.run:
        {"churnlens": run_churnlens, "pandas": run_pandas}[args.run](csv, OUT / args.run)
        return
    OUT.mkdir(exist_ok=True)
    for name in ("churnlens", "pandas"):
        (OUT / name).mkdir(exist_ok=True)
    if not csv.exists():
        write_csv(csv, args.rows)
    size_mb = csv.stat().st_size / 2**20
    rows = [measure("pandas baseline", __file__, "--rows", str(args.rows), "--run", "pandas"),
            measure("churnlens ingest", __file__, "--rows", str(args.rows), "--run", "churnlens")]
    read = args.rows + args.rows // 333
    print(f"\n{read:,} CSV rows ({size_mb:,.0f} MB), {os.cpu_count()} cores\n")
    print(table(rows, "pandas baseline", {r.name: read for r in rows}))


if __name__ == "__main__":
    main()
