"""The two worked mapping examples of docs/ingest.md, on tiny fixtures in each source layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from churnlens.config import load_params
from churnlens.ingest import run_ingest
from conftest import PROJECT_ROOT

SHARED_RETAIL = PROJECT_ROOT.parent / "shared/data/online_retail_ii/online_retail_II_2009_2010.parquet"


def _run(params, base: Path) -> dict:
    return run_ingest(params.ingest, base, base / "canonical", base / "quarantine", base / "report.json")


def retail_lines() -> pd.DataFrame:
    """Rows in the Online Retail II layout, with its quirks."""
    return pd.DataFrame({
        "Invoice": ["489434", "489434", "C489449", "489435", "489436", "489434"],
        "StockCode": ["85048", "POST", "22087", "22350", "21523", "85048"],
        "Description": ["LED CUSHION", "POSTAGE", "PAPER BUNTING", "CAT BOWL", "DOORMAT", "LED CUSHION"],
        "Quantity": [12, 1, -12, 12, 10, 12],
        "InvoiceDate": ["2009-12-01 07:45:00", "2009-12-01 07:45:00", "2009-12-01 10:33:00",
                        "2009-12-01 07:46:00", "2009-12-01 09:06:00", "2009-12-01 07:45:00"],
        "Price": [6.95, 18.0, 2.95, 2.55, 5.95, 6.95],
        "Customer ID": [13085.0, 13085.0, 16321.0, None, 13085.0, 13085.0],
        "Country": ["United Kingdom"] * 6,
    })


def test_online_retail_mapping(tmp_path: Path) -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", PROJECT_ROOT / "examples/online_retail_ii.yaml")
    retail_lines().to_parquet(tmp_path / "retail.parquet")
    source = params.ingest.transactions.model_copy(update={"path": "retail.parquet"})
    params = params.model_copy(update={"ingest": params.ingest.model_copy(
        update={"transactions": source, "max_quarantine_share": 0.5})})
    report = _run(params, tmp_path)
    frame = pd.read_parquet(tmp_path / "canonical/transactions.parquet")
    assert report["tables"]["transactions"]["quarantined_by_reason"] == {"missing_customer_id": 1}
    assert report["duplicates_removed"] == 1
    # id_format integer_like: the float column's 13085.0 is the integer id every other export writes.
    assert set(frame["customer_id"]) == {"13085", "16321"}
    assert report["tables"]["transactions"]["customer_ids_normalised"] == 4
    cancelled = frame[frame["order_id"] == "C489449"].iloc[0]
    assert cancelled["is_return"] and cancelled["amount"] == pytest.approx(-35.4)
    # UK winter time = UTC; the invoice at 07:45 stays 07:45 UTC.
    assert frame["timestamp"].min() == pd.Timestamp("2009-12-01 07:45:00")
    assert sorted(p.name for p in (tmp_path / "canonical").iterdir()) == ["transactions.parquet"]


def write_subscription_exports(folder: Path) -> None:
    exports = folder / "exports"
    exports.mkdir()
    (exports / "billing_2024-01.csv").write_text(
        "account_no;charged_at;amount_eur;invoice_no;plan_code;plan_family;list_price_eur;payment_channel\n"
        "K-001;01.01.2024 03:00;29,90;R1;M-L;mobile;29,90;sepa\n"
        "K-002;01.01.2024;19,90;R2;M-S;mobile;24,90;card\n"
        "K-002;15.01.2024;-19,90;R3;M-S;mobile;24,90;card\n", encoding="utf-8")
    (exports / "billing_2024-02.csv").write_text(
        "account_no;charged_at;amount_eur;invoice_no;plan_code;plan_family;list_price_eur;payment_channel\n"
        "K-001;01.02.2024 03:00;29,90;R4;M-L;mobile;29,90;sepa\n"
        "K-003;2024-02-01;9,90;R5;D-S;data;9,90;sepa\n", encoding="utf-8")
    (exports / "tickets.csv").write_text(
        "account_no;opened_at;ticket_kind;csat\nK-002;10.01.2024 12:00;Beschwerde;\nK-001;11.01.2024 09:30;Umfrage;9\n"
        "K-001;12.01.2024 09:30;Fax;\n", encoding="utf-8")
    (exports / "accounts.csv").write_text(
        "account_no;start_date;contract;term_months;direct_debit;lines;monthly_fee_eur;cancelled_on\n"
        "K-001;01.03.2022;24M;24;ja;3;29,90;\nK-002;01.06.2023;flex;1;nein;1;19,90;20.01.2024\n"
        "K-004;01.01.2024;flex;1;nein;1;9,90;\n", encoding="utf-8")


def test_subscription_mapping(tmp_path: Path) -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", PROJECT_ROOT / "examples/subscriptions.yaml")
    write_subscription_exports(tmp_path)
    params = params.model_copy(update={"ingest": params.ingest.model_copy(update={"max_quarantine_share": 0.5})})
    report = _run(params, tmp_path)
    billing = pd.read_parquet(tmp_path / "canonical/transactions.parquet")
    assert report["tables"]["transactions"]["accepted"] == 4
    assert report["tables"]["transactions"]["quarantined_by_reason"] == {"unparseable_timestamp": 1}  # ISO date
    assert billing["amount"].tolist() == [29.9, 29.9, 19.9, -19.9]
    assert billing["is_return"].tolist() == [False, False, False, True]
    # 03:00 Berlin winter time is 02:00 UTC.
    assert billing["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 02:00")
    tickets = pd.read_parquet(tmp_path / "canonical/interactions.parquet")
    assert tickets["type"].tolist() == ["survey", "complaint"] and tickets["value"].tolist()[0] == 9
    assert report["tables"]["interactions"]["quarantined_by_reason"] == {"unknown_interaction_type": 1}
    accounts = pd.read_parquet(tmp_path / "canonical/customers.parquet").set_index("customer_id")
    assert accounts["autopay"].to_dict() == {"K-001": True, "K-002": False, "K-004": False}
    assert accounts.loc["K-002", "cancellation_date"] == pd.Timestamp("2024-01-19 23:00")  # Berlin midnight
    assert accounts.loc["K-001", "plan_price"] == 29.9 and accounts.loc["K-001", "contract_term_months"] == 24
    assert report["cross_table"]["profiles_without_transactions"] == 1  # K-004 has no billing yet


@pytest.mark.skipif(not SHARED_RETAIL.is_file(), reason=f"real retail log not present at {SHARED_RETAIL}")
def test_real_online_retail_log_reconciles(tmp_path: Path) -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", PROJECT_ROOT / "examples/online_retail_ii.yaml")
    report = run_ingest(params.ingest, PROJECT_ROOT, tmp_path / "canonical", tmp_path / "quarantine",
                        tmp_path / "report.json")
    table = report["tables"]["transactions"]
    raw = pd.read_parquet(SHARED_RETAIL)
    unique = raw.drop_duplicates()
    assert table["rows_read"] == len(raw) == 525_461
    assert table["duplicates_removed"] == len(raw) - len(unique)
    assert table["quarantined_by_reason"]["missing_customer_id"] == unique["Customer ID"].isna().sum()
    assert table["rows_read"] == table["accepted"] + table["quarantined"] + table["duplicates_removed"]
    returns = pd.read_parquet(tmp_path / "canonical/transactions.parquet", columns=["is_return"])["is_return"]
    assert returns.sum() == (unique["Customer ID"].notna() & ((unique["Quantity"] < 0)
                             | unique["Invoice"].astype(str).str.startswith("C") | (unique["Price"] < 0))).sum()
