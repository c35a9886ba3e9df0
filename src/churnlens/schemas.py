"""Data contracts where stages meet: the canonical tables, declared once.

The declarations drive three things: the DuckDB casts in ``ingest``, the pandera schemas that
check each stage boundary, and the schema table in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd

if TYPE_CHECKING:
    import pandera.pandas as pa

Kind = Literal["id", "timestamp", "float", "int", "bool", "text"]

INTERACTION_TYPES = (
    "visit", "support_contact", "complaint", "praise", "referral", "survey", "campaign_response",
)


@dataclass(frozen=True)
class CanonicalColumn:
    name: str
    kind: Kind
    required: bool
    description: str


TRANSACTIONS = (
    CanonicalColumn("customer_id", "id", True, "customer key, compared as trimmed text"),
    CanonicalColumn("timestamp", "timestamp", True, "event time, normalised to UTC"),
    CanonicalColumn("amount", "float", False, "signed value; negative = return (or derived quantity x unit_price; "
                    "absent from a log of customer and time only)"),
    CanonicalColumn("order_id", "id", False, "order / invoice id grouping lines into one purchase"),
    CanonicalColumn("quantity", "float", False, "units; negative = return"),
    CanonicalColumn("unit_price", "float", False, "price paid per unit"),
    CanonicalColumn("list_price", "float", False, "undiscounted price per unit (discount = list - unit)"),
    CanonicalColumn("product_id", "id", False, "product / SKU"),
    CanonicalColumn("category", "text", False, "product category"),
    CanonicalColumn("channel", "text", False, "sales channel"),
    CanonicalColumn("store", "text", False, "store or site"),
)
INTERACTIONS = (
    CanonicalColumn("customer_id", "id", True, "customer key"),
    CanonicalColumn("timestamp", "timestamp", True, "event time, UTC"),
    CanonicalColumn("type", "text", True, f"one of {', '.join(INTERACTION_TYPES)}"),
    CanonicalColumn("value", "float", False, "e.g. the 0-10 answer of an NPS survey"),
)
CUSTOMERS = (
    CanonicalColumn("customer_id", "id", True, "customer key"),
    CanonicalColumn("signup_date", "timestamp", False, "start of the relationship"),
    CanonicalColumn("contract_type", "text", False, "e.g. annual, monthly, none"),
    CanonicalColumn("contract_term_months", "int", False, "renewal period; contract ends every term after signup"),
    CanonicalColumn("autopay", "bool", False, "pays by direct debit / autopay"),
    CanonicalColumn("products_held", "int", False, "number of products or services held"),
    CanonicalColumn("plan_price", "float", False, "recurring price of the plan"),
    CanonicalColumn("cancellation_date", "timestamp", False, "explicit cancellation (contractual churn)"),
)
TABLES: dict[str, tuple[CanonicalColumn, ...]] = {
    "transactions": TRANSACTIONS,
    "interactions": INTERACTIONS,
    "customers": CUSTOMERS,
}
CANONICAL_TABLES = tuple(TABLES)
# Columns ingest adds to the canonical transactions table.
DERIVED_TRANSACTION_COLUMNS = ("is_return",)

_PANDERA_DTYPES = {
    "id": pd.StringDtype(),
    "text": pd.StringDtype(),
    "timestamp": "datetime64[us]",
    "float": "float64",
    "int": "Int64",
    "bool": "boolean",
}


def pandera_schema(table: str, present: list[str] | None = None) -> pa.DataFrameSchema:
    """The contract of a canonical table; optional columns are checked when present."""
    # Imported here: pandera pulls in pyspark.pandas when pyspark is installed (seconds of start-up),
    # and only ingest checks tables with it; the declarations above are read by every stage.
    import pandera.pandas as pa

    columns: dict[str, pa.Column] = {}
    for column in TABLES[table]:
        checks = []
        if column.name == "type":
            checks.append(pa.Check.isin(INTERACTION_TYPES))
        if column.kind == "id":
            checks.append(pa.Check.str_length(min_value=1))
        # amount is optional, but where it exists every accepted row has one (missing_amount
        # quarantines the others): a null there is a broken rule, as for a required column.
        never_null = column.required or (table == "transactions" and column.name == "amount")
        columns[column.name] = pa.Column(
            _PANDERA_DTYPES[column.kind], checks=checks, nullable=not never_null,
            required=column.required or (present is not None and column.name in present), coerce=True,
        )
    if table == "transactions":
        columns["is_return"] = pa.Column("boolean", nullable=False, coerce=True)
    unique = ["customer_id"] if table == "customers" else None
    return pa.DataFrameSchema(columns, strict=True, unique=unique, name=table)


def schema_markdown() -> str:
    """The canonical schema as a Markdown table (for the README)."""
    lines = ["| table | column | type | required | meaning |", "|---|---|---|---|---|"]
    for table, columns in TABLES.items():
        for column in columns:
            lines.append(f"| {table} | `{column.name}` | {column.kind} | {'yes' if column.required else ''} "
                         f"| {column.description} |")
    return "\n".join(lines)
