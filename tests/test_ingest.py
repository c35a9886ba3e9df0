from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from churnlens.config import IngestConfig
from churnlens.ingest import IngestError, run_ingest
from churnlens.schemas import pandera_schema

TODAY = dt.date(2025, 1, 1)


def ingest(tmp_path: Path, transactions: dict, **config) -> tuple[dict, Path]:
    params = IngestConfig(transactions=transactions, **config)
    report = run_ingest(params, tmp_path, tmp_path / "canonical", tmp_path / "quarantine", tmp_path / "report.json",
                        today=TODAY)
    return report, tmp_path


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    (tmp_path / name).write_bytes(text.encode(encoding))
    return name


def quarantine(tmp_path: Path, table: str = "transactions") -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "quarantine" / f"{table}.parquet")


def canonical(tmp_path: Path, table: str = "transactions") -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "canonical" / f"{table}.parquet")


GOOD = "customer_id,timestamp,amount\nA,2024-01-01 10:00:00,10.5\nB,2024-01-02 11:00:00,3\n"


def test_clean_csv_is_accepted_typed_and_sorted(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "customer_id,timestamp,amount\nB,2024-01-02 11:00:00,3\nA,2024-01-01 10:00:00,10.5\n")
    report, _ = ingest(tmp_path, {"path": path})
    frame = canonical(tmp_path)
    assert list(frame["customer_id"]) == ["A", "B"]
    assert frame["amount"].tolist() == [10.5, 3.0]
    assert str(frame["timestamp"].dtype).startswith("datetime64")
    pandera_schema("transactions", present=list(frame.columns)).validate(frame)
    assert report["tables"]["transactions"] == {"files": [str(tmp_path / path)], "rows_read": 2, "accepted": 2,
                                                "duplicates_removed": 0, "quarantined": 0,
                                                "quarantined_by_reason": {}, "customer_ids_normalised": 0}
    assert json.loads((tmp_path / "report.json").read_text())["accepted"] == 2


def test_missing_required_column_lists_found_columns_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "client,when,value\nA,2024-01-01,1\n")
    with pytest.raises(IngestError, match=r"required column 'customer_id' is not mapped.*Columns found: "
                                          r"\['client', 'when', 'value'\].*ingest\.transactions\.columns"):
        ingest(tmp_path, {"path": path})


def test_mapping_to_absent_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", GOOD)
    with pytest.raises(IngestError, match=r"amount -> 'Amount' is not in the file"):
        ingest(tmp_path, {"path": path, "columns": {"amount": "Amount"}})


def test_no_file_matches(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"ingest\.transactions\.path: no CSV or Parquet file matches"):
        ingest(tmp_path, {"path": "exports/*.csv"})


@pytest.mark.parametrize(("row", "reason"), [
    (",2024-01-01 10:00:00,1", "missing_customer_id"),
    ("   ,2024-01-01 10:00:00,1", "missing_customer_id"),
    ("C,,1", "missing_timestamp"),
    ("C,not a date,1", "unparseable_timestamp"),
    ("C,2024-13-45 10:00:00,1", "unparseable_timestamp"),
    ("C,1970-01-01 00:00:00,1", "timestamp_before_plausible_start"),
    ("C,2031-01-01 00:00:00,1", "timestamp_in_future"),
    ("C,2024-01-01 10:00:00,abc", "non_numeric_amount"),
    ("C,2024-01-01 10:00:00,", "missing_amount"),
    ("C,2024-01-01 10:00:00,99999999999", "absurd_amount"),
    ("C,2024-01-01 10:00:00,inf", "absurd_amount"),
    ("C,2024-01-01 10:00:00,1,extra", "malformed_csv_line"),
])
def test_bad_rows_are_quarantined_with_reason(tmp_path: Path, row: str, reason: str) -> None:
    path = write(tmp_path, "t.csv", GOOD + row + "\n")
    report, _ = ingest(tmp_path, {"path": path}, max_quarantine_share=0.5)
    bad = quarantine(tmp_path)
    assert len(bad) == 1 and bad["reason"].iloc[0].split(":")[0] == reason
    assert bad["_source_file"].iloc[0].endswith("t.csv")
    assert report["tables"]["transactions"]["quarantined_by_reason"] == {reason: 1}
    assert report["rows_read"] == 3 and report["accepted"] == 2


def test_quarantine_keeps_original_values_and_row(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", GOOD + "C,yesterday,12\n")
    ingest(tmp_path, {"path": path}, max_quarantine_share=0.5)
    bad = quarantine(tmp_path).iloc[0]
    assert (bad["customer_id"], bad["timestamp"], bad["amount"], bad["_source_row"]) == ("C", "yesterday", "12", 3)


def test_exact_duplicates_removed_and_counted_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", GOOD + "A,2024-01-01 10:00:00,10.5\nA,2024-01-01 10:00:00,10.5\n")
    report, _ = ingest(tmp_path, {"path": path, "deduplicate": "rows"})
    assert report["duplicates_removed"] == 2 and report["accepted"] == 2 and report["rows_read"] == 4


def test_returns_are_kept_and_flagged(tmp_path: Path) -> None:
    text = ("Invoice,CustomerID,InvoiceDate,Quantity,UnitPrice\n"
            "536365,17850,2010-12-01 08:26:00,6,2.55\n"
            "C536379,17850,2010-12-01 09:41:00,-1,27.50\n"
            "C536380,17850,2010-12-01 09:45:00,1,5.00\n")
    path = write(tmp_path, "retail.csv", text)
    ingest(tmp_path, {"path": path, "return_order_prefix": "C",
                      "columns": {"customer_id": "CustomerID", "timestamp": "InvoiceDate", "order_id": "Invoice",
                                  "quantity": "Quantity", "unit_price": "UnitPrice"}})
    frame = canonical(tmp_path)
    assert frame["amount"].tolist() == [15.3, -27.5, 5.0]  # derived quantity x unit price
    assert frame["is_return"].tolist() == [False, True, True]


def test_a_log_of_customers_and_times_only_is_accepted_without_an_amount(tmp_path: Path) -> None:
    """Visits, logins, deliveries: no amount is made up, nothing is quarantined for lacking one."""
    path = write(tmp_path, "visits.csv", "customer_id,timestamp\nB,2024-01-02 11:00:00\nA,2024-01-01 10:00:00\n"
                                         "A,2024-01-05 09:30:00\n")
    report, _ = ingest(tmp_path, {"path": path})
    frame = canonical(tmp_path)
    assert list(frame.columns) == ["customer_id", "timestamp", "is_return"]
    assert frame["customer_id"].tolist() == ["A", "A", "B"] and not frame["is_return"].any()
    pandera_schema("transactions", present=list(frame.columns)).validate(frame)
    table = report["tables"]["transactions"]
    assert table["amount"] == "absent" and table["accepted"] == 3 and table["quarantined"] == 0
    assert quarantine(tmp_path).empty


def test_a_log_with_quantities_but_no_price_marks_returns_by_sign_and_prefix(tmp_path: Path) -> None:
    text = ("Invoice,CustomerID,InvoiceDate,Quantity\n"
            "536365,17850,2010-12-01 08:26:00,6\n"
            "536366,17850,2010-12-01 08:30:00,-2\n"
            "C536379,17850,2010-12-01 09:41:00,1\n"
            "536380,17850,2010-12-01 09:45:00,\n")  # a blank quantity marks nothing: a purchase
    path = write(tmp_path, "lines.csv", text)
    report, _ = ingest(tmp_path, {"path": path, "return_order_prefix": "C",
                                  "columns": {"customer_id": "CustomerID", "timestamp": "InvoiceDate",
                                              "order_id": "Invoice", "quantity": "Quantity"}})
    frame = canonical(tmp_path)
    assert "amount" not in frame and report["tables"]["transactions"]["amount"] == "absent"
    assert frame["is_return"].tolist() == [False, True, True, False]
    assert frame["quantity"].tolist()[:3] == [6.0, -2.0, 1.0] and pd.isna(frame["quantity"].iloc[3])
    assert report["quarantined"] == 0


def test_a_blank_quantity_or_order_id_beside_an_amount_is_no_return_not_a_broken_contract(tmp_path: Path) -> None:
    text = "customer_id,timestamp,amount,quantity,order_id\nA,2024-01-01 10:00:00,10.5,,O1\nB,2024-01-02 11:00:00,3,1,\n"
    report, _ = ingest(tmp_path, {"path": write(tmp_path, "t.csv", text), "return_order_prefix": "C"})
    assert canonical(tmp_path)["is_return"].tolist() == [False, False]
    assert report["accepted"] == 2 and "amount" not in report["tables"]["transactions"]


def test_time_zones_are_normalised_to_utc(tmp_path: Path) -> None:
    text = ("customer_id,timestamp,amount\n"
            "A,2024-06-01T12:00:00+02:00,1\n"
            "B,2024-06-01T12:00:00Z,1\n"
            "C,2024-06-01 12:00:00,1\n")
    ingest(tmp_path, {"path": write(tmp_path, "t.csv", text), "source_timezone": "America/New_York"})
    frame = canonical(tmp_path).set_index("customer_id")["timestamp"]
    assert frame["A"] == pd.Timestamp("2024-06-01 10:00:00")
    assert frame["B"] == pd.Timestamp("2024-06-01 12:00:00")
    assert frame["C"] == pd.Timestamp("2024-06-01 16:00:00")  # naive = source time zone (EDT, UTC-4)


def test_mixed_date_formats_with_explicit_formats(tmp_path: Path) -> None:
    text = "customer_id,timestamp,amount\nA,01/02/2024 10:00,1\nB,2024-02-03 11:00:00,2\nC,02.03.2024,3\n"
    report, _ = ingest(tmp_path, {"path": write(tmp_path, "t.csv", text),
                                  "timestamp_formats": ["%d/%m/%Y %H:%M", "%Y-%m-%d %H:%M:%S"]},
                       max_quarantine_share=0.5)
    frame = canonical(tmp_path).set_index("customer_id")["timestamp"]
    assert frame["A"] == pd.Timestamp("2024-02-01 10:00") and frame["B"] == pd.Timestamp("2024-02-03 11:00")
    assert report["tables"]["transactions"]["quarantined_by_reason"] == {"unparseable_timestamp": 1}


def test_bom_whitespace_quoted_newlines_and_semicolons(tmp_path: Path) -> None:
    text = 'customer_id;timestamp;amount;product\n  A  ;2024-01-01 10:00:00;1,5;"mug\nred"\n'
    path = write(tmp_path, "t.csv", "\ufeff" + text)
    ingest(tmp_path, {"path": path, "decimal": ",", "csv": {"delim": ";"},
                      "columns": {"product_id": "product"}})
    frame = canonical(tmp_path)
    assert frame["customer_id"].tolist() == ["A"] and frame["amount"].tolist() == [1.5]
    assert frame["product_id"].tolist() == ["mug\nred"]


def test_latin1_encoding_option(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "customer_id,timestamp,amount,category\nA,2024-01-01,1,Caf\u00e9\n", "latin-1")
    ingest(tmp_path, {"path": path, "csv": {"encoding": "latin-1"}})
    assert canonical(tmp_path)["category"].tolist() == ["Caf\u00e9"]


def test_gzip_and_directory_of_files(tmp_path: Path) -> None:
    import gzip

    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "jan.csv.gz").write_bytes(gzip.compress(GOOD.encode()))
    (folder / "feb.csv").write_text("customer_id,timestamp,amount\nC,2024-02-01 10:00:00,4\n")
    report, _ = ingest(tmp_path, {"path": "exports"})
    assert report["accepted"] == 3 and len(report["tables"]["transactions"]["files"]) == 2


def test_parquet_source(tmp_path: Path) -> None:
    pd.DataFrame({"cust": [1, 2], "ts": pd.to_datetime(["2024-01-01", "2024-01-02"]), "amt": [1.0, 2.0]}).to_parquet(
        tmp_path / "t.parquet")
    ingest(tmp_path, {"path": "t.parquet", "columns": {"customer_id": "cust", "timestamp": "ts", "amount": "amt"}})
    frame = canonical(tmp_path)
    assert frame["customer_id"].tolist() == ["1", "2"]  # ids are text, whatever their source type


def test_quarantine_share_threshold_fails_with_reasons(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "customer_id,timestamp,amount\n,2024-01-01,1\n,2024-01-01,2\nA,x,1\nB,2024-01-01,1\n")
    with pytest.raises(IngestError, match=r"3 of 4 rows \(75\.0%\) were quarantined, above "
                                          r"ingest\.max_quarantine_share=0\.2.*missing_customer_id"):
        ingest(tmp_path, {"path": path})


def test_unknown_interaction_types_and_type_map(tmp_path: Path) -> None:
    write(tmp_path, "t.csv", GOOD)
    write(tmp_path, "i.csv", "customer_id,timestamp,kind,score\nA,2024-01-01,LOGIN,\nA,2024-01-02,NPS,9\n"
                              "B,2024-01-03,carrier pigeon,\nA,2024-01-04,complaint,\n")
    report, _ = ingest(tmp_path, {"path": "t.csv"}, max_quarantine_share=0.5,
                       interactions={"path": "i.csv", "columns": {"type": "kind", "value": "score"},
                                     "type_map": {"LOGIN": "visit", "NPS": "survey"}})
    frame = canonical(tmp_path, "interactions")
    assert frame["type"].tolist() == ["visit", "survey", "complaint"] and frame["value"].tolist()[1] == 9
    assert report["tables"]["interactions"]["quarantined_by_reason"] == {"unknown_interaction_type": 1}


def test_conflicting_customer_records_and_cross_table_counts(tmp_path: Path) -> None:
    write(tmp_path, "t.csv", GOOD + "Z,2024-01-05 10:00:00,1\n")
    write(tmp_path, "c.csv", "customer_id,signup_date,autopay\nA,2023-01-01,yes\nA,2023-02-01,no\nB,2023-01-01,maybe\n"
                              "Q,2023-01-01,no\n")
    report, _ = ingest(tmp_path, {"path": "t.csv"}, customers={"path": "c.csv"}, max_quarantine_share=0.6)
    assert report["tables"]["customers"]["quarantined_by_reason"] == {"duplicate_customer_id": 1,
                                                                      "invalid_autopay": 1}
    assert report["cross_table"] == {"transaction_customers_without_profile": 2, "profiles_without_transactions": 1}
    assert canonical(tmp_path, "customers")["autopay"].tolist() == [True, False]


def test_type_constant_for_single_type_sources(tmp_path: Path) -> None:
    write(tmp_path, "t.csv", GOOD)
    write(tmp_path, "tickets.csv", "customer_id,timestamp\nA,2024-01-01\n")
    ingest(tmp_path, {"path": "t.csv"}, interactions={"path": "tickets.csv", "type_constant": "support_contact"})
    assert canonical(tmp_path, "interactions")["type"].tolist() == ["support_contact"]


# ---------------------------------------------------------------- reconciliation, property-based
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BAD_ROWS = {
    "missing_customer_id": lambda i: f",2024-03-01 10:00:00,{i}",
    "unparseable_timestamp": lambda i: f"Q{i},31/31/2024,{i}",
    "non_numeric_amount": lambda i: f"Q{i},2024-03-01 10:00:00,ten",
    "absurd_amount": lambda i: f"Q{i},2024-03-01 10:00:00,1e12",
    "timestamp_in_future": lambda i: f"Q{i},2099-03-01 10:00:00,{i}",
}
good_rows = st.tuples(st.sampled_from(["A", "B", "C", "D"]), st.integers(0, 10_000),
                      st.decimals(min_value=-500, max_value=5000, places=2, allow_nan=False, allow_infinity=False))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(good=st.lists(good_rows, max_size=30), bad=st.lists(st.sampled_from(sorted(BAD_ROWS)), max_size=15),
       order=st.randoms(use_true_random=False))
def test_reconciliation_identity_and_no_good_row_lost(tmp_path_factory, good, bad, order) -> None:
    folder = tmp_path_factory.mktemp("prop")
    lines = [f"{c},{(pd.Timestamp('2024-01-01') + pd.Timedelta(minutes=m)):%Y-%m-%d %H:%M:%S},{a}" for c, m, a in good]
    lines += [BAD_ROWS[reason](i) for i, reason in enumerate(bad)]
    order.shuffle(lines)
    (folder / "t.csv").write_text("customer_id,timestamp,amount\n" + "\n".join(lines) + "\n")
    report, _ = ingest(folder, {"path": "t.csv"}, max_quarantine_share=1.0)
    table = report["tables"]["transactions"]
    assert table["rows_read"] == len(lines) == table["accepted"] + table["quarantined"] + table["duplicates_removed"]
    assert table["quarantined_by_reason"] == {r: bad.count(r) for r in set(bad)}
    # No order id: identical lines are separate purchases, every one of them kept.
    expected = sorted((c, pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=m), float(a)) for c, m, a in good)
    if (folder / "canonical" / "transactions.parquet").exists():
        frame = canonical(folder)
        accepted = list(zip(frame["customer_id"], frame["timestamp"], frame["amount"], strict=True))
    else:
        accepted = []
    assert sorted(accepted) == expected


def test_readme_schema_table_is_the_declared_schema() -> None:
    from churnlens.schemas import schema_markdown
    from conftest import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert schema_markdown() in readme, "paste churnlens.schemas.schema_markdown() into the README's schema table"
