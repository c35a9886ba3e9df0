"""Construct validity of the loyalty segments where no personas exist (real logs).

A segment is an inference from behaviour up to the as-of date; it is worth something only if it
predicts behaviour after it. DOMAIN.md's hypotheses give three orderings to check in the
``horizon_days`` after the as-of date:

* brand advocates churn least (no purchase in the window);
* brand users keep their cadence most regularly (the lowest coefficient of variation of the days
  between their purchases in the window) and, where products exist, buy
  the highest share of lines on products they had bought before;
* brand comparers' spend is the most volatile (the highest coefficient of variation of their
  purchase values) and, where prices exist, they buy the highest share of lines below the
  product's usual price.

Which of them a log can test depends on what it holds (:data:`ORDERINGS_BY_LEVEL`); one that the
outcomes cannot measure (no amounts, no products) is reported as not measurable, never as held.

The per-line measures are the feature engine's own (:func:`churnlens.sql.event_steps`), so
"below the usual price" and "bought before" mean the same thing here as in the features. The
rhythm and purchase-value measures are computed here, from the window's purchases alone.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from churnlens.config import PERSONAS
from churnlens.engines.duckdb import register_sources
from churnlens.features import BELOW_USUAL
from churnlens.sql import event_steps

ORDERINGS = {
    "comparers_buy_most_below_usual_price": ("below_usual_price_share", "brand_comparer", "max"),
    "users_repeat_most": ("repeat_line_share", "brand_user", "max"),
    "advocates_churn_least": ("churn_rate", "brand_advocate", "min"),
    "users_keep_cadence_most_regularly": ("gap_cv_after", "brand_user", "min"),
    "comparers_spend_most_volatile": ("spend_cv_after", "brand_comparer", "max"),
    "comparers_time_most_irregularly": ("gap_cv_after", "brand_comparer", "max"),
}
# The hypotheses a segment read at each evidence level (churnlens.segments) is judged by: the
# lines level by what its rules read (prices, repeat baskets), the coarser levels by rhythm and
# spend, which are all they read.
ORDERINGS_BY_LEVEL = {
    "lines": ("comparers_buy_most_below_usual_price", "users_repeat_most", "advocates_churn_least"),
    "purchases": ("advocates_churn_least", "users_keep_cadence_most_regularly", "comparers_spend_most_volatile"),
    # A log of dates only cannot show spend, so its comparers are read from timing: their timing is
    # the hypothesis it can test on its own; the spend one needs outcomes with amounts.
    "dates": ("advocates_churn_least", "users_keep_cadence_most_regularly", "comparers_time_most_irregularly",
              "comparers_spend_most_volatile"),
}
COLUMNS = ["segment", "customers", "below_usual_price_share", "repeat_line_share", "churn_rate", "spend_change",
           "gap_cv_after", "spend_cv_after"]


def line_flags(transactions: pd.DataFrame | str) -> pd.DataFrame:
    """Every line of a canonical transactions table (DataFrame or Parquet path) with the
    engine's per-line measures: customer_id, ts, amount, is_return, below_usual (NaN where the
    product has no usual price yet) and repeat_line."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        available = register_sources(con, {"transactions": transactions})
        steps = event_steps(available)
        relations = ", ".join(f"{name} AS ({body})" for name, body in steps)
        # A log of dates only has no amount: its spend measures are unknown, not 0.
        amount = "amount" if "amount" in available["transactions"] else "CAST(NULL AS DOUBLE) AS amount"
        return con.execute(f"""
            WITH {relations}
            SELECT customer_id, ts, {amount}, is_return,
                   CASE WHEN usual_price_ratio IS NULL THEN NULL
                        ELSE CAST(usual_price_ratio < {BELOW_USUAL} AS DOUBLE) END AS below_usual,
                   CAST(repeat_line AS DOUBLE) AS repeat_line
            FROM lines ORDER BY customer_id, ts
        """).df()


def joined_log(history: str, outcomes: str, as_of: pd.Timestamp) -> pd.DataFrame:
    """The canonical transactions the scores were computed from (lines up to ``as_of``) and the
    later log's lines after ``as_of``: history for the usual prices and earlier purchases, the
    outcome window after. Both are Parquet files, folders or globs of the canonical schema."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        limit = pd.Timestamp(as_of).isoformat()
        return con.execute(f"""
            SELECT * FROM read_parquet(?) WHERE timestamp <= TIMESTAMP '{limit}'
            UNION ALL BY NAME
            SELECT * FROM read_parquet(?) WHERE timestamp > TIMESTAMP '{limit}'
        """, [_parquet_glob(history), _parquet_glob(outcomes)]).df()


def _parquet_glob(path: str) -> str:
    from pathlib import Path

    if Path(path).is_dir():
        return str(Path(path) / "transactions.parquet")
    return path


def construct_validity(assigned: pd.DataFrame, lines: pd.DataFrame, as_of: pd.Timestamp,
                       horizon_days: int) -> pd.DataFrame:
    """Per segment, behaviour in ``(as_of, as_of + horizon_days]`` of the customers assigned at
    ``as_of`` (``assigned``: customer_id, segment; ``lines``: :func:`line_flags` rows):
    customers, the share of purchased lines below the usual price (among lines whose product has
    one) and on products bought before, the churn rate (no purchase in the window), the spend
    change (segment spend in the window / in the ``horizon_days`` before, minus 1), and the mean
    per-customer coefficients of variation of the days between purchases in the window (customers
    with three or more purchases in it) and of purchase values (two or more). A purchase here is a
    customer's lines at one instant, the CVs are population ones (the window is all there is)."""
    as_of = pd.Timestamp(as_of)
    end = as_of + pd.Timedelta(days=horizon_days)
    begin = as_of - pd.Timedelta(days=horizon_days)
    bought = lines[~lines["is_return"].astype(bool) & lines["customer_id"].isin(assigned["customer_id"])]
    after = bought[(bought["ts"] > as_of) & (bought["ts"] <= end)]
    before = bought[(bought["ts"] > begin) & (bought["ts"] <= as_of)]
    rhythm = _rhythm_after(bought, as_of, end)
    rows = []
    for segment, members in assigned.groupby("segment", sort=True)["customer_id"]:
        mine_after = after[after["customer_id"].isin(members)]
        spend_before = before.loc[before["customer_id"].isin(members), "amount"].sum()
        mine_rhythm = rhythm[rhythm.index.isin(members)]
        rows.append({
            "segment": segment,
            "customers": len(members),
            "below_usual_price_share": _mean(mine_after["below_usual"]),
            "repeat_line_share": _mean(mine_after["repeat_line"]),
            "churn_rate": float(1.0 - members.isin(mine_after["customer_id"]).mean()),
            "spend_change": float(mine_after["amount"].sum() / spend_before - 1.0) if spend_before > 0 else np.nan,
            "gap_cv_after": _mean(mine_rhythm["gap_cv"]),
            "spend_cv_after": _mean(mine_rhythm["spend_cv"]),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _rhythm_after(bought: pd.DataFrame, as_of: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Per customer, from their purchases in ``(as_of, end]`` only (so nothing the segments read
    before ``as_of``, such as a lapse, is measured again): the CV (population standard deviation /
    mean) of the days between consecutive purchases (three or more purchases: two gaps at least)
    and of the purchase values (two or more; NaN without amounts)."""
    inside = (bought[(bought["ts"] > as_of) & (bought["ts"] <= end)].groupby(["customer_id", "ts"], sort=True)
              ["amount"].sum(min_count=1).reset_index())
    gaps = inside.groupby("customer_id")["ts"].diff().dt.total_seconds() / 86400.0
    gap_cv = gaps.groupby(inside["customer_id"]).agg(_cv)
    spend_cv = inside.groupby("customer_id")["amount"].agg(_cv)
    return pd.DataFrame({"gap_cv": gap_cv, "spend_cv": spend_cv})


def _cv(values: pd.Series) -> float:
    known = values.dropna().to_numpy(dtype=float)
    mean = known.mean() if len(known) >= 2 else np.nan
    return float(known.std() / mean) if len(known) >= 2 and mean > 0 else np.nan


def _mean(values: pd.Series) -> float:
    known = values.dropna()
    return float(known.mean()) if len(known) else np.nan


def orderings(table: pd.DataFrame, level: str = "lines") -> dict[str, bool | None]:
    """Whether each hypothesised ordering of ``level`` (:data:`ORDERINGS_BY_LEVEL`) holds among the
    three loyalty segments: True / False, or None where the outcomes cannot measure it (a measure
    unknown for every segment, e.g. spend in a log of dates only)."""
    three = table[table["segment"].isin(PERSONAS)].set_index("segment")
    result: dict[str, bool | None] = {}
    for name in ORDERINGS_BY_LEVEL[level]:
        column, segment, direction = ORDERINGS[name]
        values = three[column].dropna() if column in three else pd.Series(dtype=float)
        if values.empty:
            result[name] = None
            continue
        best = values.idxmax() if direction == "max" else values.idxmin()
        result[name] = bool(len(values) == len(PERSONAS) and best == segment
                            and (values == values[best]).sum() == 1)
    return result


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, shares and rates as percentages."""
    lines = ["| segment | customers | lines below usual price | repeat-basket lines | churn rate | spend change "
             "| gap CV after | purchase-value CV after |", "|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples(index=False):
        cells = [_percent(row.below_usual_price_share), _percent(row.repeat_line_share), _percent(row.churn_rate),
                 _percent(row.spend_change, signed=True), _ratio(row.gap_cv_after), _ratio(row.spend_cv_after)]
        lines.append(f"| {row.segment} | {row.customers} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(value: float) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.2f}"


def _percent(value: float, signed: bool = False) -> str:
    if value is None or np.isnan(value):
        return "n/a"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"
