"""Construct validity of the loyalty segments on a real purchase log, three ways: as it is (product
lines), cut to purchases with amounts (customer, date, amount, quantity), and cut to dates only.

    .venv/bin/python benchmarks/segments_realdata.py [--as-of 2010-09-01] [--views lines purchases dates]

As-of protocol: for each view the pipeline's own commands (ingest, features, train, evaluate,
score) run on that view of the shared retail log truncated at the as-of date, so they see nothing
after it; then `churnlens score --outcomes` reads the view's full log and reports, per segment,
how its customers behaved in the ``features.horizon_days`` after the as-of date (churn, rhythm,
purchase values, and prices and repeat baskets where the view has products), judged by the
hypotheses of the level the segments were read from (churnlens.validity.ORDERINGS_BY_LEVEL). A
log of dates only cannot show spend; its segments are also judged against the amounts of the
same purchases, which its user would not have. Everything is written under
benchmarks/out/segments_realdata/<view>/ (its own MLflow store). The log: ../shared/data/README.md.

The views, from the Online Retail II export (columns Invoice, StockCode, Quantity, InvoiceDate,
Price, Customer ID):
* lines: every column, through examples/online_retail_ii.yaml;
* purchases: Customer ID, InvoiceDate, Quantity and Amount = Quantity x Price (returns stay, as
  negative quantities); no invoice, product or price;
* dates: Customer ID and InvoiceDate of the purchase lines (cancellations and returns left out, as a
  log of orders or visits would).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb
import pandas as pd
import yaml

# One way to run a pipeline command in its own process and MLflow store, shared with the
# real-data model benchmark (this folder is on sys.path when a script here runs).
from realdata_benchmark import RETAIL_LOG, run_command

from churnlens import validity
from churnlens.config import PERSONAS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "segments_realdata"
OVERLAY = ROOT / "examples" / "online_retail_ii.yaml"
VIEWS = ("lines", "purchases", "dates")
VIEW_COLUMNS = {
    "purchases": ('"Customer ID", InvoiceDate, Quantity, Quantity * Price AS Amount', "true"),
    "dates": ('"Customer ID", InvoiceDate', "Quantity > 0 AND NOT starts_with(Invoice, 'C')"),
}


def view_overlay(view: str, folder: Path) -> list[Path]:
    """The params overlays of one view: the example overlay, and for a cut view its own raw file
    and column mapping (written under ``folder``)."""
    if view == "lines":
        return [OVERLAY]
    select, where = VIEW_COLUMNS[view]
    raw = folder / "raw" / "transactions.parquet"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT {select} FROM read_parquet(?) WHERE {where}) TO '{raw}' (FORMAT parquet)",
                    [str(RETAIL_LOG)])
    columns = {"customer_id": "Customer ID", "timestamp": "InvoiceDate"}
    if view == "purchases":
        columns |= {"amount": "Amount", "quantity": "Quantity"}
    # The example's settings with its transactions source replaced whole: overlays merge key by
    # key, so the example's column mapping would otherwise name columns the view does not have.
    overlay = yaml.safe_load(OVERLAY.read_text(encoding="utf-8"))
    overlay["ingest"]["transactions"] = {"path": str(raw), "columns": columns, "source_timezone": "Europe/London",
                                         "id_format": "integer_like"}
    overlay["train"] |= {"experiment_name": f"segments-{view}", "registered_model_name": f"segments_{view}"}
    overlay["score"] = {"model_uri": f"models:/segments_{view}@champion"}
    path = folder / "view.yaml"
    path.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    return [path]


def truncate(source: Path, target: Path, as_of: str) -> None:
    """The canonical transactions strictly before the as-of date."""
    target.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT * FROM read_parquet('{source}') WHERE timestamp < TIMESTAMP '{as_of}') "
                    f"TO '{target / 'transactions.parquet'}' (FORMAT parquet)")


def run_view(view: str, as_of: str) -> dict:
    """The pipeline on one view cut at ``as_of``; returns its segment report (with construct validity)."""
    out = OUT / view
    out.mkdir(parents=True, exist_ok=True)
    params = view_overlay(view, out)  # after params.yaml, which run_command always passes first
    # Nine months before the default as-of date are too short to train a 90-day churn model on
    # nested label windows: the model trains on a 60-day horizon without backtest folds. It only
    # feeds the scores' probabilities, never the segments; scoring (and so the construct-validity
    # window) keeps the overlay's 90 days.
    short_history = out / "short_history.yaml"
    short_history.write_text("features:\n  horizon_days: 60\ntrain:\n  backtest_folds: 0\n", encoding="utf-8")
    model_params = [*params, short_history]
    full, truncated = out / "full" / "canonical", out / "as_of" / "canonical"
    run_command(out, "ingest", "--base", str(ROOT), "--canonical-dir", str(full), "--quarantine-dir",
                str(out / "full" / "quarantine"), "--report", str(out / "ingest_report.json"), overlays=params)
    truncate(full / "transactions.parquet", truncated, as_of)
    snapshots = out / "snapshots.parquet"
    run_command(out, "features", "--canonical-dir", str(truncated), "--output", str(snapshots), "--report",
                str(out / "features.json"), overlays=model_params)
    run_command(out, "train", "--snapshots", str(snapshots), "--features-report", str(out / "features.json"),
                "--model-dir", str(out / "model"), "--report", str(out / "train.json"), overlays=model_params)
    run_command(out, "evaluate", "--snapshots", str(snapshots), "--model-dir", str(out / "model"), "--train-report",
                str(out / "train.json"), "--metrics", str(out / "metrics.json"), "--plots-dir", str(out / "plots"),
                overlays=model_params)
    report_path = out / "segment_report.json"
    # The model folder, promoted or not: the segments do not depend on it.
    run_command(out, "score", "--canonical-dir", str(truncated), "--model", str(out / "model"), "--as-of", as_of,
                "--output", str(out / "scores.parquet"), "--report", str(report_path), "--outcomes", str(full),
                overlays=params)
    return json.loads(report_path.read_text(encoding="utf-8"))


def purchase_counts(truncated: Path) -> pd.Series:
    """Purchases (distinct instants with a non-return line) per customer by the as-of date."""
    with duckdb.connect() as con:
        counts = con.execute(
            "SELECT customer_id, count(DISTINCT timestamp) AS n FROM read_parquet(?) WHERE NOT is_return "
            "GROUP BY customer_id", [str(truncated / "transactions.parquet")]).df()
    return counts.set_index("customer_id")["n"]


def summary(view: str, report: dict, as_of: pd.Timestamp) -> list[str]:
    out = OUT / view
    outcome = report["construct_validity"]
    scores = pd.read_parquet(out / "scores.parquet", columns=["customer_id", "segment", "low_confidence",
                                                              "segment_evidence", "action"])
    purchases = scores["customer_id"].map(purchase_counts(out / "as_of" / "canonical")).fillna(0).to_numpy()
    placed = scores["segment"].isin(PERSONAS)
    repeat = purchases >= 2
    level = "/".join(sorted(set(scores["segment_evidence"])))
    mix = ", ".join(f"{s} {n} ({n / len(scores):.1%})" for s, n in scores["segment"].value_counts().sort_index().items())
    lines = [f"### {view} (segments read from {level}), as of {as_of.date()}", "",
             f"{len(scores)} scored; {placed.mean():.1%} get a segment, {placed[repeat].mean():.1%} of the "
             f"{repeat.sum()} with 2+ purchases; {scores.loc[placed, 'low_confidence'].mean():.1%} of the segmented "
             f"are low-confidence. Mix: {mix}.", "", outcome["markdown"], ""]
    lines += [f"- {name}: {'holds' if held else 'not measurable' if held is None else 'does NOT hold'}"
              for name, held in outcome["orderings_hold"].items()]
    replaced = report.get("unavailable", {}).get("actions", {})
    if replaced:
        lines += ["", "Actions replaced by their fallback: " + "; ".join(
            f"{cell} {v['action']} -> {v['given_instead']} ({v['customers']})" for cell, v in replaced.items())]
    if view == "dates" and (OUT / "purchases" / "full" / "canonical").exists():
        # The same segments judged against the purchases' amounts, which a dates-only user lacks.
        table = validity.construct_validity(
            scores, validity.line_flags(validity.joined_log(str(out / "as_of" / "canonical"),
                                                            str(OUT / "purchases" / "full" / "canonical"), as_of)),
            as_of, outcome["horizon_days"])
        held = validity.orderings(table, "dates")
        lines += ["", "Judged against the amounts of the same purchases (the purchases view's log):", "",
                  validity.markdown(table), ""]
        lines += [f"- {name}: {'holds' if ok else 'not measurable' if ok is None else 'does NOT hold'}"
                  for name, ok in held.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", default="2010-09-01")
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS))
    args = parser.parse_args()
    if not RETAIL_LOG.is_file():
        raise SystemExit(f"{RETAIL_LOG}: the shared retail log is absent; see ../shared/data/README.md")
    reports = {view: run_view(view, args.as_of) for view in args.views}
    text = []
    for view, report in reports.items():
        text += [*summary(view, report, pd.Timestamp(args.as_of)), ""]
    print("\n" + "\n".join(text))


if __name__ == "__main__":
    main()
