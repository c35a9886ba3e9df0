"""Several exports of one log (`ingest.<table>.sources`): each mapped with its own settings, the
lines a later export shares with an earlier one removed exactly, as multisets of canonical rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml

from churnlens.config import ConfigError, IngestConfig, TableSources, load_params, parse_params
from churnlens.ingest import IngestError, run_ingest
from conftest import PROJECT_ROOT, project_params_dict

TODAY = dt.date(2025, 1, 1)
FIRST = PROJECT_ROOT.parent / "shared/data/online_retail_ii/online_retail_II_2009_2010.parquet"
SECOND = PROJECT_ROOT.parent / "shared/data/online_retail/online_retail_2010_2011.parquet"

# The first export: text times in London (summer time, UTC+1), integer customer ids.
FIRST_CSV = """Invoice,StockCode,Quantity,InvoiceDate,Price,Customer ID
1001,P1,2,2024-06-01 10:00:00,1.5,17
1002,P2,1,2024-06-02 11:00:00,4.0,18
1002,P3,3,2024-06-02 11:00:00,2.0,18
1002,P3,3,2024-06-02 11:00:00,2.0,18
1003,P4,1,2024-06-03 09:30:00,1.5,19
1003,P5,5,2024-06-03 09:30:00,0.2,19
1004,P1,1,2024-06-02 12:00:00,1.5,
"""


def second_export() -> pd.DataFrame:
    """The next export: other column names, UTC timestamps, float customer ids; it repeats the
    first one's 2024-06-02..03 lines, one of them at another price."""
    rows = [
        ("1002", "P2", 1, "2024-06-02 10:00", 4.0, 18.0),   # the first export's line: overlap
        ("1002", "P3", 3, "2024-06-02 10:00", 2.0, 18.0),   # a line twice in both exports: overlap twice
        ("1002", "P3", 3, "2024-06-02 10:00", 2.0, 18.0),
        ("1003", "P4", 1, "2024-06-03 08:30", 1.5, 19.0),   # once in the first, twice here: one is new
        ("1003", "P4", 1, "2024-06-03 08:30", 1.5, 19.0),
        ("1003", "P5", 5, "2024-06-03 08:30", 0.25, 19.0),  # the first export says 0.2: another line
        ("1005", "P1", 2, "2024-06-04 09:00", 1.5, 20.0),
        ("1006", "P2", 1, "2024-06-04 10:00", 4.0, None),   # no customer id: quarantined
    ]
    frame = pd.DataFrame(rows, columns=["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice",
                                        "CustomerID"])
    return frame.assign(InvoiceDate=pd.to_datetime(frame["InvoiceDate"]))


FIRST_SOURCE = {"path": "first.csv", "source_timezone": "Europe/London", "id_format": "integer_like",
                "deduplicate": "none",
                "columns": {"customer_id": "Customer ID", "timestamp": "InvoiceDate", "order_id": "Invoice",
                            "quantity": "Quantity", "unit_price": "Price", "product_id": "StockCode"}}
SECOND_SOURCE = {"path": "second.parquet", "id_format": "integer_like", "deduplicate": "none",
                 "columns": {"customer_id": "CustomerID", "timestamp": "InvoiceDate", "order_id": "InvoiceNo",
                             "quantity": "Quantity", "unit_price": "UnitPrice", "product_id": "StockCode"}}


def write_exports(folder: Path) -> None:
    (folder / "first.csv").write_text(FIRST_CSV, encoding="utf-8")
    second_export().to_parquet(folder / "second.parquet")


def ingest(folder: Path, sources: list[dict], out: str = "out") -> dict:
    config = IngestConfig(transactions={"sources": sources}, interactions=None, customers=None)
    return run_ingest(config, folder, folder / out / "canonical", folder / out / "quarantine",
                      folder / out / "report.json", today=TODAY)


def lines(frame: pd.DataFrame) -> list[tuple]:
    return sorted(zip(frame["order_id"], frame["product_id"], frame["unit_price"], frame["timestamp"].astype(str),
                      strict=True))


def test_overlap_of_two_exports_is_removed_as_multisets(tmp_path: Path) -> None:
    write_exports(tmp_path)
    report = ingest(tmp_path, [FIRST_SOURCE, SECOND_SOURCE])
    canonical = pd.read_parquet(tmp_path / "out/canonical/transactions.parquet")
    # London 11:00 in June is 10:00 UTC: the two exports' lines are the same once both are canonical.
    assert lines(canonical) == [
        ("1001", "P1", 1.5, "2024-06-01 09:00:00"),
        ("1002", "P2", 4.0, "2024-06-02 10:00:00"),
        ("1002", "P3", 2.0, "2024-06-02 10:00:00"), ("1002", "P3", 2.0, "2024-06-02 10:00:00"),  # twice, twice
        ("1003", "P4", 1.5, "2024-06-03 08:30:00"), ("1003", "P4", 1.5, "2024-06-03 08:30:00"),  # once, twice
        ("1003", "P5", 0.2, "2024-06-03 08:30:00"), ("1003", "P5", 0.25, "2024-06-03 08:30:00"),  # two prices
        ("1005", "P1", 1.5, "2024-06-04 09:00:00"),
    ]
    assert set(canonical["customer_id"]) == {"17", "18", "19", "20"}  # 18.0 is the first export's 18
    table = report["tables"]["transactions"]
    first, second = table["sources"]
    assert first == {"path": "first.csv", "files": [str(tmp_path / "first.csv")], "rows_read": 7, "accepted": 6,
                     "duplicates_removed": 0, "quarantined": 1, "quarantined_by_reason": {"missing_customer_id": 1},
                     "customer_ids_normalised": 0, "overlap_removed": 0, "overlap_removed_with": {}}
    assert second == {"path": "second.parquet", "files": [str(tmp_path / "second.parquet")], "rows_read": 8,
                      "accepted": 3, "duplicates_removed": 0, "quarantined": 1,
                      "quarantined_by_reason": {"missing_customer_id": 1}, "customer_ids_normalised": 7,
                      "overlap_removed": 4, "overlap_removed_with": {"first.csv": 4}}
    assert {k: table[k] for k in ("rows_read", "accepted", "duplicates_removed", "quarantined", "overlap_removed")} \
        == {"rows_read": 15, "accepted": 9, "duplicates_removed": 0, "quarantined": 2, "overlap_removed": 4}
    assert table["files"] == [str(tmp_path / "first.csv"), str(tmp_path / "second.parquet")]
    assert report["overlap_removed"] == 4 and report["accepted"] == len(canonical)
    # Each rejected row names its own file and data row, with its own columns' values.
    quarantine = pd.read_parquet(tmp_path / "out/quarantine/transactions.parquet")
    named = [(Path(f).name, r, i) for f, r, i in zip(quarantine["_source_file"], quarantine["_source_row"],
                                                     quarantine["Invoice"].fillna(quarantine["InvoiceNo"]),
                                                     strict=True)]
    assert named == [("first.csv", 7, "1004"), ("second.parquet", 8, "1006")]


def test_order_of_sources_changes_only_which_export_a_shared_line_is_taken_from(tmp_path: Path) -> None:
    write_exports(tmp_path)
    forward = ingest(tmp_path, [FIRST_SOURCE, SECOND_SOURCE], "forward")
    backward = ingest(tmp_path, [SECOND_SOURCE, FIRST_SOURCE], "backward")
    # The same lines, sorted on every column: the same bytes.
    assert (tmp_path / "forward/canonical/transactions.parquet").read_bytes() == \
        (tmp_path / "backward/canonical/transactions.parquet").read_bytes()
    later = backward["tables"]["transactions"]["sources"][1]
    assert (later["path"], later["accepted"], later["overlap_removed"], later["overlap_removed_with"]) == \
        ("first.csv", 2, 4, {"second.parquet": 4})
    assert forward["accepted"] == backward["accepted"] == 9


def test_duplicates_inside_an_export_are_removed_there_before_the_overlap(tmp_path: Path) -> None:
    # With an order id, deduplicate: auto makes a repeated line one record inside its own export;
    # the other export's copy of it is then overlap.
    write_exports(tmp_path)
    sources = [{**FIRST_SOURCE, "deduplicate": "auto"}, {**SECOND_SOURCE, "deduplicate": "auto"}]
    table = ingest(tmp_path, sources)["tables"]["transactions"]
    first, second = table["sources"]
    assert (first["duplicates_removed"], first["accepted"]) == (1, 5)
    assert (second["duplicates_removed"], second["overlap_removed"], second["accepted"]) == (2, 3, 2)
    assert table["rows_read"] == table["accepted"] + table["quarantined"] + table["duplicates_removed"] \
        + table["overlap_removed"]


def test_a_single_source_report_has_no_overlap_fields(tmp_path: Path) -> None:
    write_exports(tmp_path)
    config = IngestConfig(transactions=FIRST_SOURCE, interactions=None, customers=None)
    report = run_ingest(config, tmp_path, tmp_path / "c", tmp_path / "q", tmp_path / "r.json", today=TODAY)
    assert "overlap_removed" not in report and "sources" not in report["tables"]["transactions"]


def test_sources_must_give_the_same_canonical_columns(tmp_path: Path) -> None:
    write_exports(tmp_path)
    without_product = {**SECOND_SOURCE, "columns": {k: v for k, v in SECOND_SOURCE["columns"].items()
                                                    if k != "product_id"}}
    with pytest.raises(IngestError, match=r"ingest\.transactions\.sources\.1 gives canonical columns .*"
                                          r"only in sources\.0: \['product_id'\]"):
        ingest(tmp_path, [FIRST_SOURCE, without_product])


def test_a_file_read_by_two_sources_is_refused(tmp_path: Path) -> None:
    write_exports(tmp_path)
    with pytest.raises(IngestError, match=r"ingest\.transactions\.sources\.1\.path: '\*\.csv' matches .*first\.csv"
                                          r".*ingest\.transactions\.sources\.0\.path already reads"):
        ingest(tmp_path, [FIRST_SOURCE, {**FIRST_SOURCE, "path": "*.csv"}])


def test_a_source_error_names_its_source(tmp_path: Path) -> None:
    write_exports(tmp_path)
    with pytest.raises(IngestError, match=r"ingest\.transactions\.sources\.1: unit_price -> 'Price' is not in "
                                          r"the file.*ingest\.transactions\.sources\.1\.columns"):
        ingest(tmp_path, [FIRST_SOURCE, {**SECOND_SOURCE, "columns": {**SECOND_SOURCE["columns"],
                                                                       "unit_price": "Price"}}])


def params_with(transactions: object) -> dict:
    raw = project_params_dict()
    raw["ingest"]["transactions"] = transactions
    return raw


def test_empty_list_of_sources_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.transactions\.sources: .*an empty list of sources has no file "
                                          r"to read; give at least one source"):
        parse_params(params_with({"sources": []}))


def test_unknown_key_inside_a_source_is_named() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.transactions\.sources\.1\.colums: unknown key"):
        parse_params(params_with({"sources": [{"path": "a.csv"}, {"path": "b.csv", "colums": {}}]}))


def test_settings_beside_sources_and_a_path_listed_twice_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.transactions: .*\['id_format'\] given beside `sources`"):
        parse_params(params_with({"sources": [{"path": "a.csv"}], "id_format": "integer_like"}))
    with pytest.raises(ConfigError, match=r"sources 0 and 1 have the same path 'a\.csv'; list each export once"):
        parse_params(params_with({"sources": [{"path": "a.csv"}, {"path": "a.csv"}]}))


def test_an_overlay_of_sources_replaces_the_single_source_of_params_yaml(tmp_path: Path) -> None:
    # params.yaml gives transactions.path; the overlay's sources are the whole table, not mixed with it.
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"ingest": {"transactions": {"sources": [FIRST_SOURCE, SECOND_SOURCE]}}}))
    params = load_params(PROJECT_ROOT / "params.yaml", overlay)
    assert isinstance(params.ingest.transactions, TableSources)
    assert [s.path for s in params.ingest.transactions.sources] == ["first.csv", "second.parquet"]
    back = tmp_path / "back.yaml"
    back.write_text(yaml.safe_dump({"ingest": {"transactions": {"path": "one.csv"}}}))
    assert load_params(PROJECT_ROOT / "params.yaml", overlay, back).ingest.transactions.path == "one.csv"


# Measured on the two files (docs/ingest.md): the second export's 22,523 lines of 2010-12-01..09 are
# 14,483 distinct lines with a customer id, all identical to the first export's (removed as overlap),
# 320 repeats of those inside the file (duplicates), 7,720 lines without a customer id (7,719 quarantined,
# one repeat of them a duplicate).
REAL_OVERLAP = 14_483


@pytest.mark.skipif(not (FIRST.is_file() and SECOND.is_file()),
                    reason=f"the two real retail exports are not at {FIRST} and {SECOND} (see ../shared/data/README.md)")
def test_the_two_real_retail_exports_are_one_log(tmp_path: Path) -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", PROJECT_ROOT / "examples/online_retail.yaml")
    report = run_ingest(params.ingest, PROJECT_ROOT, tmp_path / "canonical", tmp_path / "quarantine",
                        tmp_path / "report.json")
    first, second = report["tables"]["transactions"]["sources"]
    assert second["overlap_removed_with"] == {first["path"]: REAL_OVERLAP} and first["overlap_removed"] == 0
    canonical = pd.read_parquet(tmp_path / "canonical/transactions.parquet", columns=["customer_id", "timestamp"])
    start, end = pd.Timestamp("2010-12-01"), pd.Timestamp("2010-12-10")  # UK winter time = UTC
    # Independently of the rule: the lines each file has, one copy of each repeated line, without a customer id.
    with_id = {name: pd.read_parquet(path).dropna(subset=[column]).drop_duplicates()
               for name, path, column in (("first", FIRST, "Customer ID"), ("second", SECOND, "CustomerID"))}
    first_dates = pd.to_datetime(with_id["first"]["InvoiceDate"])
    second_dates = with_id["second"]["InvoiceDate"]
    assert ((second_dates >= start) & (second_dates < end)).sum() == REAL_OVERLAP
    # Nothing outside the overlap days is removed: before them the first file's lines, after them the
    # second's, and in them each shared line once.
    assert (canonical["timestamp"] < start).sum() == (first_dates < start).sum()
    assert (canonical["timestamp"] >= end).sum() == (second_dates >= end).sum()
    assert ((canonical["timestamp"] >= start) & (canonical["timestamp"] < end)).sum() == REAL_OVERLAP
    assert 5_800 < canonical["customer_id"].nunique() < 6_000
