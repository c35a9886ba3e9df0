"""Messy and hostile input files: every value arrives unchanged or is quarantined with a reason.

Each test checks the reconciliation identity (rows_read = accepted + quarantined + duplicates)
and that the good rows come out exactly as written.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnlens.config import IngestConfig
from churnlens.ingest import run_ingest

TODAY = dt.date(2025, 1, 1)
HEADER = "customer_id,timestamp,amount\n"


def ingest_text(folder: Path, text: str, name: str = "t.csv", **source) -> dict:
    """Ingest one file; check the identity and return the table's report."""
    (folder / name).write_text(text, encoding="utf-8")
    options = {"max_quarantine_share": source.pop("max_quarantine_share", 1.0)}
    config = IngestConfig(transactions={"path": name, **source}, **options)
    report = run_ingest(config, folder, folder / "canonical", folder / "quarantine", folder / "report.json",
                        today=TODAY)
    table = report["tables"]["transactions"]
    assert table["rows_read"] == table["accepted"] + table["quarantined"] + table["duplicates_removed"]
    return table


def accepted(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "canonical/transactions.parquet")


def quarantined(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "quarantine/transactions.parquet")


# ------------------------------------------------------------------ numbers
def test_decimal_comma_file_quarantines_dot_notation_instead_of_reading_1250(tmp_path: Path) -> None:
    text = "customer_id;timestamp;amount\nA;2024-01-01 10:00:00;12,50\nB;2024-01-01 10:00:00;1.234,5\n" \
           "C;2024-01-01 10:00:00;12.50\nD;2024-01-01 10:00:00;-3\n"
    table = ingest_text(tmp_path, text, csv={"delim": ";"}, decimal=",")
    assert dict(zip(accepted(tmp_path)["customer_id"], accepted(tmp_path)["amount"], strict=True)) == {
        "A": 12.5, "B": 1234.5, "D": -3.0}
    assert table["quarantined_by_reason"] == {"non_numeric_amount": 1}
    assert quarantined(tmp_path)["amount"].tolist() == ["12.50"]


def test_decimal_point_file_quarantines_comma_notation(tmp_path: Path) -> None:
    table = ingest_text(tmp_path, HEADER + 'A,2024-01-01 10:00:00,12.5\nB,2024-01-01 10:00:00,"12,50"\n')
    assert accepted(tmp_path)["amount"].tolist() == [12.5]
    assert table["quarantined_by_reason"] == {"non_numeric_amount": 1}


@pytest.mark.parametrize(("quantity", "price", "reason"), [
    ("inf", "2.0", "non_finite_quantity"), ("-inf", "2.0", "non_finite_quantity"),
    ("1", "NaN", "non_finite_unit_price"), ("1", "nan", "non_finite_unit_price"),
])
def test_non_finite_quantity_and_price_are_quarantined(tmp_path: Path, quantity: str, price: str, reason: str) -> None:
    text = ("customer_id,timestamp,quantity,unit_price,amount\nA,2024-01-01 10:00:00,2,3.0,6.0\n"
            f"B,2024-01-01 10:00:00,{quantity},{price},5.0\n")
    table = ingest_text(tmp_path, text)
    assert table["quarantined_by_reason"] == {reason: 1}
    assert accepted(tmp_path)[["quantity", "unit_price", "amount"]].values.tolist() == [[2.0, 3.0, 6.0]]


# ------------------------------------------------------------------ timestamps
def test_named_zones_are_honoured_not_read_as_source_time(tmp_path: Path) -> None:
    text = HEADER + ("A,2024-01-15 12:00:00 America/New_York,1\nB,2024-07-01 12:00:00 Europe/London,1\n"
                     "C,2024-07-01 12:00:00+02,1\nD,2024-07-01 12:00:00 +0200,1\nE,2024-07-01 12:00:00,1\n"
                     "F,2024-07-01 12:00:00Z,1\n")
    table = ingest_text(tmp_path, text, source_timezone="Europe/Berlin")
    times = dict(zip(accepted(tmp_path)["customer_id"], accepted(tmp_path)["timestamp"], strict=True))
    assert times == {"A": pd.Timestamp("2024-01-15 17:00"), "B": pd.Timestamp("2024-07-01 11:00"),
                     "C": pd.Timestamp("2024-07-01 10:00"), "D": pd.Timestamp("2024-07-01 10:00"),
                     "E": pd.Timestamp("2024-07-01 10:00"), "F": pd.Timestamp("2024-07-01 12:00")}
    assert table["quarantined"] == 0


@pytest.mark.parametrize("value", ["2024-07-01 12:00:00 CEST", "2024-07-01 12:00:00 Mars/Olympus",
                                   "2024-07-01 12:00:00 PM"])
def test_unknown_zone_name_is_quarantined_not_read_in_source_zone(tmp_path: Path, value: str) -> None:
    table = ingest_text(tmp_path, HEADER + f"A,2024-01-01 10:00:00,1\nB,{value},1\n", source_timezone="Europe/Berlin")
    assert table["quarantined_by_reason"] == {"unparseable_timestamp": 1}
    assert quarantined(tmp_path)["timestamp"].tolist() == [value]


def test_declared_format_with_dashes_is_not_mistaken_for_an_offset(tmp_path: Path) -> None:
    table = ingest_text(tmp_path, HEADER + "A,01-02-2024,1\nB,31-12-2023,2\nC,2024-02-01,3\n",
                        timestamp_formats=["%d-%m-%Y"], source_timezone="Europe/Berlin")
    times = dict(zip(accepted(tmp_path)["customer_id"], accepted(tmp_path)["timestamp"], strict=True))
    assert times == {"A": pd.Timestamp("2024-01-31 23:00"), "B": pd.Timestamp("2023-12-30 23:00")}
    assert table["quarantined_by_reason"] == {"unparseable_timestamp": 1}


def test_declared_format_with_offset_reads_the_offset(tmp_path: Path) -> None:
    ingest_text(tmp_path, HEADER + "A,01.02.2024 10:00 +0300,1\nB,01.02.2024 10:00,1\n",
                timestamp_formats=["%d.%m.%Y %H:%M %z", "%d.%m.%Y %H:%M"], source_timezone="Europe/Berlin")
    times = dict(zip(accepted(tmp_path)["customer_id"], accepted(tmp_path)["timestamp"], strict=True))
    assert times == {"A": pd.Timestamp("2024-02-01 07:00"), "B": pd.Timestamp("2024-02-01 09:00")}


# ------------------------------------------------------------------ ids
def test_integer_like_ids_from_two_exports_join(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports/a.csv").write_text(HEADER + "13000.0,2024-01-01 10:00:00,1\n13001.00,2024-01-02 10:00:00,2\n")
    (tmp_path / "exports/b.csv").write_text(HEADER + "13000,2024-01-03 10:00:00,3\n13000.5,2024-01-03 10:00:00,4\n"
                                            "A17,2024-01-03 10:00:00,5\n")
    config = IngestConfig(transactions={"path": "exports/*.csv", "id_format": "integer_like"}, max_quarantine_share=1)
    report = run_ingest(config, tmp_path, tmp_path / "canonical", tmp_path / "quarantine", tmp_path / "r.json",
                        today=TODAY)["tables"]["transactions"]
    frame = accepted(tmp_path)
    assert frame.groupby("customer_id")["amount"].sum().to_dict() == {"13000": 4.0, "13001": 2.0}
    assert report["customer_ids_normalised"] == 2
    assert report["quarantined_by_reason"] == {"non_integer_customer_id": 2}
    assert sorted(quarantined(tmp_path)["customer_id"]) == ["13000.5", "A17"]


def test_text_ids_are_kept_as_written_by_default(tmp_path: Path) -> None:
    ingest_text(tmp_path, HEADER + "13000.0,2024-01-01 10:00:00,1\n007,2024-01-01 10:00:00,1\n")
    assert sorted(accepted(tmp_path)["customer_id"]) == ["007", "13000.0"]


@pytest.mark.parametrize("value", ["nan", "NaN", "NULL", "null", "None", "N/A", "<NA>"])
def test_null_like_ids_are_quarantined_not_customers(tmp_path: Path, value: str) -> None:
    table = ingest_text(tmp_path, HEADER + f"A,2024-01-01 10:00:00,1\n{value},2024-01-01 10:00:00,1\n")
    assert table["quarantined_by_reason"] == {"missing_customer_id": 1}
    assert accepted(tmp_path)["customer_id"].tolist() == ["A"]


def test_float_id_column_of_a_parquet_export(tmp_path: Path) -> None:
    pd.DataFrame({"customer_id": [13085.0, None, 16321.0], "timestamp": ["2024-01-01 10:00:00"] * 3,
                  "amount": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "t.parquet")
    config = IngestConfig(transactions={"path": "t.parquet", "id_format": "integer_like"}, max_quarantine_share=1)
    run_ingest(config, tmp_path, tmp_path / "canonical", tmp_path / "quarantine", tmp_path / "r.json", today=TODAY)
    assert sorted(accepted(tmp_path)["customer_id"]) == ["13085", "16321"]


# ------------------------------------------------------------------ duplicates
def test_identical_lines_without_an_order_id_are_separate_purchases(tmp_path: Path) -> None:
    table = ingest_text(tmp_path, HEADER + "A,2024-01-01 10:00:00,2.5\n" * 3)
    assert table["duplicates_removed"] == 0 and accepted(tmp_path)["amount"].tolist() == [2.5, 2.5, 2.5]


def test_identical_lines_of_one_order_are_duplicates_also_when_padded(tmp_path: Path) -> None:
    text = ("customer_id,timestamp,amount,order_id\nA,2024-01-01 10:00:00,2.5,O1\n  A ,2024-01-01 10:00:00,2.5,O1\n"
            "A,2024-01-01 10:00:00,2.5, O1\nA,2024-01-01 10:00:00,2.5,O2\n")
    table = ingest_text(tmp_path, text)
    assert table["duplicates_removed"] == 2
    assert accepted(tmp_path)["order_id"].tolist() == ["O1", "O2"]


def test_deduplication_on_request_and_never(tmp_path: Path) -> None:
    text = "customer_id,timestamp,amount,order_id\nA,2024-01-01 10:00:00,2.5,O1\nA,2024-01-01 10:00:00,2.5,O1\n"
    assert ingest_text(tmp_path, text, deduplicate="none")["accepted"] == 2
    assert ingest_text(tmp_path, HEADER + "A,2024-01-01 10:00:00,2.5\n" * 2, deduplicate="rows")["accepted"] == 1


# ------------------------------------------------------------------ malformed lines
def test_one_quarantine_row_per_malformed_line(tmp_path: Path) -> None:
    good = "".join(f"C{i},2024-01-01 10:00:00,{i}\n" for i in range(5))
    text = "customer_id,timestamp,amount,order_id\n" + good.replace("\n", ",O\n") + \
        "B,2024-01-01 10:00:00,1,O,extra\nC\n" + good.replace("\n", ",P\n")
    table = ingest_text(tmp_path, text)
    lines = text.count("\n") - 1
    assert table["rows_read"] == lines == 12
    assert table["quarantined_by_reason"] == {"malformed_csv_line": 2}
    bad = quarantined(tmp_path)
    assert len(bad) == 2 and bad["_raw_line"].tolist() == ["B,2024-01-01 10:00:00,1,O,extra", "C"]
    assert table["accepted"] == 10


# ------------------------------------------------------------------ property: values round-trip exactly
finite = st.decimals(min_value=-999_999, max_value=999_999, places=2, allow_nan=False, allow_infinity=False)


def comma_notation(value, thousands: bool) -> str:
    text = f"{value:,.2f}" if thousands else f"{value:.2f}"
    return text.replace(",", "_").replace(".", ",").replace("_", ".")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(finite, st.booleans()), min_size=1, max_size=20), decimal=st.sampled_from([".", ","]))
def test_numbers_in_the_declared_notation_round_trip(tmp_path_factory, values, decimal) -> None:
    folder = tmp_path_factory.mktemp("numbers")
    written = [comma_notation(v, t) if decimal == "," else f"{v:.2f}" for v, t in values]
    text = "customer_id;timestamp;amount\n" + "".join(f"C{i};2024-01-01 10:00:00;{w}\n" for i, w in enumerate(written))
    table = ingest_text(folder, text, csv={"delim": ";"}, decimal=decimal)
    assert table["accepted"] == len(values)
    frame = accepted(folder).assign(i=lambda f: f["customer_id"].str[1:].astype(int)).sort_values("i")
    assert frame["amount"].tolist() == [float(v) for v, _ in values]


instants = st.datetimes(min_value=dt.datetime(1995, 1, 1), max_value=dt.datetime(2024, 12, 1)).map(
    lambda t: t.replace(microsecond=0))
FORMATS = ["%d/%m/%Y %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%d-%m-%Y %H:%M:%S", "%m.%d.%Y %H:%M:%S %z"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(instants, min_size=1, max_size=15), fmt=st.sampled_from(FORMATS),
       offset_minutes=st.sampled_from([-300, 0, 60, 330]))
def test_timestamps_in_a_declared_format_round_trip(tmp_path_factory, times, fmt, offset_minutes) -> None:
    folder = tmp_path_factory.mktemp("times")
    zone = dt.timezone(dt.timedelta(minutes=offset_minutes))
    # Naive formats are read in UTC here (so every wall time exists); %z carries its own offset.
    stamped = [t.replace(tzinfo=zone if "%z" in fmt else dt.UTC) for t in times]
    text = HEADER + "".join(f"C{i},{t.strftime(fmt)},1\n" for i, t in enumerate(stamped))
    table = ingest_text(folder, text, timestamp_formats=[fmt])
    assert table["accepted"] == len(times)
    frame = accepted(folder).assign(i=lambda f: f["customer_id"].str[1:].astype(int)).sort_values("i")
    expected = [pd.Timestamp(t.astimezone(dt.UTC).replace(tzinfo=None)) for t in stamped]
    assert frame["timestamp"].tolist() == expected
