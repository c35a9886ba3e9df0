"""Turn raw exports into canonical tables, quarantining bad rows with a reason.

Everything runs in DuckDB over the source files, so a large CSV is never loaded into pandas.
Every source row ends in exactly one place: the canonical table, the quarantine (with its
original values as text, file, row and reason), the count of exact duplicates removed, or (a table
of several exports) the count of rows another export already holds.
"""

from __future__ import annotations

import datetime as dt
import functools
import glob
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from churnlens.config import IngestConfig, TableSource, TableSources
from churnlens.io import atomic_path, remove_stale_temporaries, write_json
from churnlens.schemas import INTERACTION_TYPES, TABLES, pandera_schema
from churnlens.sqltext import literal
from churnlens.sqltext import quote_name as quote

log = logging.getLogger(__name__)

SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
RAW_LINE = "_raw_line"
REASON = "reason"


class IngestError(ValueError):
    """The input cannot be ingested as configured; the message says what to change."""


@dataclass
class TableReport:
    table: str
    files: list[str]
    rows_read: int = 0
    accepted: int = 0
    duplicates_removed: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    customer_ids_normalised: int = 0
    amount_absent: bool = False  # transactions: a log of customers and times, without an amount
    path: str = ""  # as configured
    overlap_removed: int = 0  # rows an earlier source of the same table already holds
    overlap_removed_with: dict[str, int] = field(default_factory=dict)  # earlier source's path -> rows
    sources: list[TableReport] | None = None  # a table of several sources: one report each

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def as_dict(self) -> dict:
        report = {
            "files": self.files,
            "rows_read": self.rows_read,
            "accepted": self.accepted,
            "duplicates_removed": self.duplicates_removed,
            "quarantined": self.quarantined_total,
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            "customer_ids_normalised": self.customer_ids_normalised,
        }
        if self.amount_absent:  # said only when true: the report of a log with amounts is as before
            report["amount"] = "absent"
        if self.sources is not None:  # only a table of several sources: a single source's report is as before
            report["overlap_removed"] = self.overlap_removed
            report["sources"] = [{"path": s.path, **s.as_dict(), "overlap_removed": s.overlap_removed,
                                  "overlap_removed_with": dict(sorted(s.overlap_removed_with.items()))}
                                 for s in self.sources]
        return report


def resolve_files(table: str, source: TableSource, base: Path, key: str = "") -> list[str]:
    """A file, a directory (every CSV/Parquet below it) or a glob, relative to ``base``. ``key``
    names the source in messages (default ``ingest.<table>``)."""
    pattern = Path(source.path) if Path(source.path).is_absolute() else base / source.path
    if pattern.is_dir():
        files = [p for p in sorted(pattern.rglob("*")) if p.is_file() and _format_of(p) is not None]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(pattern), recursive=True)) if Path(p).is_file()]
    if not files:
        raise IngestError(
            f"{key or 'ingest.' + table}.path: no CSV or Parquet file matches {str(pattern)!r}; "
            "give a file, a directory or a glob such as 'exports/*.csv'"
        )
    return [str(p) for p in files]


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if any(s in (".csv", ".tsv", ".txt") for s in suffixes):
        return "csv"
    return None


def _source_format(table: str, source: TableSource, files: list[str], key: str = "") -> str:
    if source.format != "auto":
        return source.format
    formats = {_format_of(Path(f)) for f in files}
    if len(formats) != 1 or None in formats:
        key = key or f"ingest.{table}"
        raise IngestError(
            f"{key}: cannot tell the format of {files[:3]} from their names; "
            f"set {key}.format to 'csv' or 'parquet'"
        )
    return formats.pop()


def _csv_option(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return literal(value)


def raw_source(con: duckdb.DuckDBPyConnection, table: str, source: TableSource, files: list[str],
               key: str = "") -> tuple[str, list[str]]:
    """A query over the source files (every value as text, plus file and row) and its columns.

    The query must be read exactly once: for CSV, reading it fills DuckDB's reject tables.
    """
    file_list = "[" + ", ".join(literal(f) for f in files) + "]"
    fmt = _source_format(table, source, files, key)
    if fmt == "parquet":
        reader = f"read_parquet({file_list}, union_by_name=true, filename=true, file_row_number=true)"
        columns = [c for c in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchdf()["column_name"]
                   if c not in ("filename", "file_row_number")]
        as_text = ", ".join(f"CAST({quote(c)} AS VARCHAR) AS {quote(c)}" for c in columns)
        return (f"SELECT {as_text}, filename AS {SOURCE_FILE}, file_row_number + 1 AS {SOURCE_ROW} "
                f"FROM {reader}"), columns
    options = {"all_varchar": True, "store_rejects": True, "filename": True, **source.csv}
    reader = f"read_csv({file_list}, {', '.join(f'{k}={_csv_option(v)}' for k, v in options.items())})"
    columns = [c for c in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchdf()["column_name"] if c != "filename"]
    # Data rows are numbered per file in read order (1 = first row after the header).
    return (f"SELECT * EXCLUDE (filename), filename AS {SOURCE_FILE}, "
            f"row_number() OVER (PARTITION BY filename) AS {SOURCE_ROW} FROM {reader}"), columns


def _parse_error(table: str, files: list[str], source: TableSource, exc: Exception, key: str = "") -> IngestError:
    key = key or f"ingest.{table}"
    shown = files if len(files) < 4 else [*files[:3], "..."]
    message = str(exc).splitlines()[0]
    if "Could not write" in message or "No space left" in message or "File too large" in message:
        # Not the input's fault: the disk (or quota) under the output folder is full.
        return IngestError(f"{key}: cannot write DuckDB's working files beside the canonical output: "
                           f"{message}. Free disk space there, or give --canonical-dir on a disk with room")
    return IngestError(
        f"{key}: cannot parse {shown} as {source.format}: {str(exc).splitlines()[0]}. "
        f"Check {key}.format and {key}.csv (delim, quote, encoding, header)"
    )


def check_mapping(table: str, source: TableSource, found: list[str], key: str = "") -> dict[str, str]:
    """canonical -> source column, defaulting to same-named columns; raise on a missing required one."""
    key = key or f"ingest.{table}"
    known = {c.name for c in TABLES[table]}
    unknown = sorted(set(source.columns) - known)
    if unknown:
        raise IngestError(
            f"{key}.columns: unknown canonical column(s) {unknown}; expected some of {sorted(known)}"
        )
    mapping = {c.name: c.name for c in TABLES[table] if c.name in found}
    mapping.update(source.columns)
    absent = {canonical: column for canonical, column in mapping.items() if column not in found}
    derivable = {"type"} if table == "interactions" and source.type_constant else set()
    missing_required = [
        c.name for c in TABLES[table] if c.required and (c.name not in mapping or c.name in absent)
        and c.name not in derivable
    ]
    problems = [f"{canonical} -> {column!r} is not in the file" for canonical, column in absent.items()]
    problems += [f"required column {name!r} is not mapped" for name in missing_required]
    if absent or missing_required:
        raise IngestError(
            f"{key}: {'; '.join(problems)}. Columns found: {found}. "
            f"Fix it with {key}.columns.<canonical name>: <column in your file>"
        )
    return mapping


def has_amount(mapping: dict[str, str]) -> bool:
    """Whether a transactions table has an amount: mapped, or derived from quantity x unit_price.
    Without one the log is customers and times only, and no amount is made up for it."""
    return "amount" in mapping or {"quantity", "unit_price"} <= set(mapping)


def _number(expr: str, decimal: str) -> str:
    """A number in the declared notation, else NULL (quarantined): never a guess between the two.

    With a decimal comma, "12.50" is not read as 1250: a dot is only a thousands separator in
    groups of three ("1.234,5"); anything else in the other notation is rejected.
    """
    text = f"trim(CAST({expr} AS VARCHAR))"
    if decimal == ",":
        comma = r"[+-]?(\d+|\d{1,3}(\.\d{3})+)(,\d+)?"
        return (f"CASE WHEN regexp_full_match({text}, '{comma}') "
                f"THEN TRY_CAST(replace(replace({text}, '.', ''), ',', '.') AS DOUBLE) END")
    return f"TRY_CAST({text} AS DOUBLE)"


# A time followed by an offset or a zone name ("+02", "+0200", "Z", "UTC", "CEST",
# "America/New_York"): the text says which zone it is in, so source_timezone must not apply.
_ZONED = r"\d\d:\d\d(:\d\d(\.\d*)?)?\s*([+-]\d\d(:?\d\d)?|[A-Za-z][A-Za-z0-9_+/-]*)$"


def _timestamp(expr: str, source: TableSource) -> str:
    """UTC time of a timestamp text; NULL (quarantined) when it cannot be read unambiguously.

    Declared formats are applied as written: a format with %z / %Z reads the zone from the text,
    one without reads it in ``source_timezone`` and rejects a text that carries a zone. Without
    formats, ISO 8601 text with an offset or a zone name is converted from that zone (an unknown
    name such as "CEST" is rejected, not read as local time); naive text is read in ``source_timezone``.
    """
    text = f"nullif(trim(CAST({expr} AS VARCHAR)), '')"
    source_zone = literal(source.source_timezone)
    if source.timestamp_formats:
        parsed = [
            f"timezone('UTC', try_strptime({text}, {literal(f)}))" if "%z" in f or "%Z" in f
            else f"timezone('UTC', timezone({source_zone}, try_strptime({text}, {literal(f)})))"
            for f in source.timestamp_formats
        ]
        return parsed[0] if len(parsed) == 1 else f"coalesce({', '.join(parsed)})"
    # DuckDB reads "+0200" only when it follows the time directly.
    zoned = rf"regexp_replace({text}, '\s+([+-]\d\d(:?\d\d)?)$', '\1')"
    naive_utc = f"timezone('UTC', timezone({source_zone}, TRY_CAST({text} AS TIMESTAMP)))"
    return (f"CASE WHEN regexp_matches({text}, '{_ZONED}') "
            f"THEN timezone('UTC', TRY_CAST({zoned} AS TIMESTAMPTZ)) ELSE {naive_utc} END")


def _customer_id(expr: str, source: TableSource) -> str:
    """The trimmed id; NULL for empty and null-like texts ("nan", "NULL"); with ``id_format:
    integer_like``, "13000.0" becomes "13000" so two exports of one id join."""
    text = f"nullif(trim(CAST({expr} AS VARCHAR)), '')"
    nulls = ", ".join(literal(v.lower()) for v in source.null_ids) or "NULL"
    if source.id_format == "integer_like":
        text = rf"CASE WHEN regexp_full_match({text}, '[+-]?\d+\.0*') THEN split_part({text}, '.', 1) ELSE {text} END"
    return f"CASE WHEN lower({text}) IN ({nulls}) THEN NULL ELSE {text} END"


def _bool(expr: str, source: TableSource) -> str:
    text = f"lower(trim(CAST({expr} AS VARCHAR)))"
    true = ", ".join(literal(v.lower()) for v in source.true_values)
    false = ", ".join(literal(v.lower()) for v in source.false_values)
    return f"CASE WHEN {text} IN ({true}) THEN true WHEN {text} IN ({false}) THEN false END"


def canonical_expressions(table: str, source: TableSource, mapping: dict[str, str]) -> dict[str, str]:
    """SQL expression per canonical column, reading the raw text columns."""
    expressions: dict[str, str] = {}
    for column in TABLES[table]:
        if column.name not in mapping:
            continue
        raw = quote(mapping[column.name])
        if column.name == "customer_id":
            expressions[column.name] = _customer_id(raw, source)
            continue
        expressions[column.name] = {
            "id": f"nullif(trim(CAST({raw} AS VARCHAR)), '')",
            "text": f"nullif(trim(CAST({raw} AS VARCHAR)), '')",
            "timestamp": _timestamp(raw, source),
            "float": _number(raw, source.decimal),
            "int": f"TRY_CAST(round({_number(raw, source.decimal)}) AS BIGINT)",
            "bool": _bool(raw, source),
        }[column.kind]
    if table == "transactions" and "amount" not in expressions and has_amount(mapping):
        expressions["amount"] = f"round({expressions['quantity']} * {expressions['unit_price']}, 6)"
    if table == "interactions":
        if source.type_constant:
            expressions["type"] = literal(source.type_constant)
        elif source.type_map:
            cases = " ".join(f"WHEN {literal(k)} THEN {literal(v)}" for k, v in source.type_map.items())
            expressions["type"] = f"CASE {expressions['type']} {cases} ELSE lower({expressions['type']}) END"
        else:
            expressions["type"] = f"lower({expressions['type']})"
    return expressions


def _duplicate_flag(table: str, source: TableSource, mapping: dict[str, str], found: list[str]) -> str:
    """SQL flag of a row that repeats an earlier one (compared as trimmed text, ids normalised).

    Identical lines of a log without order ids can be separate purchases (two coffees), so
    ``auto`` removes them only where a key makes them one record: an order id, or a customer profile.
    """
    keyed = (table == "transactions" and "order_id" in mapping) or table == "customers"
    if source.deduplicate == "none" or (source.deduplicate == "auto" and not keyed):
        return "false"
    # Ids compare as their canonical (trimmed, normalised) text; other columns as written.
    ids = {source_column: f"c_{canonical}" for canonical, source_column in mapping.items()
           if any(c.name == canonical and c.kind == "id" for c in TABLES[table])}
    columns = ", ".join(ids.get(c, quote(c)) for c in found)
    return f"row_number() OVER (PARTITION BY {columns} ORDER BY {SOURCE_FILE}, {SOURCE_ROW}) > 1"


def _quarantine_rules(table: str, source: TableSource, mapping: dict[str, str], config: IngestConfig,
                      today: dt.date) -> list[tuple[str, str]]:
    """(reason, condition on canonical c_* columns and raw text) in priority order."""
    earliest = literal(config.earliest_plausible_date.isoformat())
    latest = literal(((config.latest_plausible_date or today) + dt.timedelta(days=1)).isoformat())
    rules = [("missing_customer_id", "c_customer_id IS NULL")]
    if source.id_format == "integer_like":
        rules.append(("non_integer_customer_id", r"NOT regexp_full_match(c_customer_id, '[+-]?\d+')"))
    for column in TABLES[table]:
        if column.name not in mapping or column.name == "customer_id":
            continue
        raw = f"nullif(trim({quote(mapping[column.name])}), '')"
        name = f"c_{column.name}"
        if column.kind == "timestamp":
            if column.required:
                rules.append((f"missing_{column.name}", f"{raw} IS NULL"))
            rules.append((f"unparseable_{column.name}", f"{raw} IS NOT NULL AND {name} IS NULL"))
            rules.append((f"{column.name}_before_plausible_start",
                          f"{name} < CAST({earliest} AS TIMESTAMP)"))
            rules.append((f"{column.name}_in_future", f"{name} >= CAST({latest} AS TIMESTAMP)"))
        elif column.kind in ("float", "int", "bool"):
            rules.append((f"non_numeric_{column.name}" if column.kind != "bool" else f"invalid_{column.name}",
                          f"{raw} IS NOT NULL AND {name} IS NULL"))
            if column.kind == "float" and column.name != "amount":  # amount: absurd_amount below
                rules.append((f"non_finite_{column.name}", f"isinf({name}) OR isnan({name})"))
    if table == "transactions" and has_amount(mapping):
        rules.append(("missing_amount", "c_amount IS NULL"))
        rules.append(("absurd_amount", f"abs(c_amount) > {config.max_abs_amount} OR isinf(c_amount) OR isnan(c_amount)"))
    if table == "interactions":
        allowed = ", ".join(literal(t) for t in INTERACTION_TYPES)
        rules.append(("unknown_interaction_type", f"c_type IS NULL OR c_type NOT IN ({allowed})"))
    if table == "customers":
        rules.append(("duplicate_customer_id", "_customer_rank > 1"))
    return rules


@dataclass
class JudgedSource:
    """One source read and judged. View ``judged_<name>``: its rows past de-duplication with their
    canonical ``c_*`` columns and a reason (NULL = accepted); ``quarantine_<name>``: its rejected rows."""

    report: TableReport
    judged: str
    output: list[str]  # canonical columns it gives, in contract order (transactions: and is_return)
    select: str  # those columns over the judged view


def judge_source(con: duckdb.DuckDBPyConnection, table: str, source: TableSource, files: list[str],
                 config: IngestConfig, today: dt.date | None, key: str, name: str) -> JudgedSource:
    """Parse, validate and judge one source's ``files``; ``key`` names it in messages, ``name`` its views.

    The source is read once into ``parsed_<name>`` (the only materialised copy, spillable to
    disk); everything after it is a view.
    """
    parsed, judged, rejects = f"parsed_{name}", f"judged_{name}", f"rejects_{name}"
    report = TableReport(table=table, files=files, path=source.path)
    con.execute(f"CREATE OR REPLACE TABLE {rejects} ({SOURCE_FILE} VARCHAR, {SOURCE_ROW} BIGINT, "
                f"{RAW_LINE} VARCHAR, {REASON} VARCHAR)")
    try:
        raw, found = raw_source(con, table, source, files, key)
    except duckdb.Error as exc:
        raise _parse_error(table, files, source, exc, key) from None
    mapping = check_mapping(table, source, found, key)
    if table == "transactions" and not has_amount(mapping):
        report.amount_absent = True
        # Accepted, but said: a file whose amount column has another name reads the same way.
        log.warning("%s: no amount (neither amount nor both quantity and unit_price are mapped; "
                    "columns found: %s): read as a log of customers and times, so spend features are left out. "
                    "If the file has an amount, map it with %s.columns.amount: <column in your file>", key, found, key)
    expressions = canonical_expressions(table, source, mapping)

    canonical = ", ".join(f"{expr} AS {quote('c_' + name)}" for name, expr in expressions.items())
    duplicate = _duplicate_flag(table, source, mapping, found)
    customer_rank = (", row_number() OVER (PARTITION BY c_customer_id ORDER BY _source_file, _source_row) "
                     "AS _customer_rank") if table == "customers" else ""
    try:
        con.execute(f"""
            CREATE OR REPLACE TABLE {parsed} AS
            SELECT *{customer_rank} FROM (
                SELECT *, {duplicate} AS _duplicate FROM (SELECT *, {canonical} FROM ({raw})))
        """)
        if _source_format(table, source, files, key) == "csv":
            # DuckDB logs one error per missing column; a line is one row, quarantined once.
            con.execute(f"INSERT INTO {rejects} SELECT s.file_path, e.line, any_value(e.csv_line), "
                        "'malformed_csv_line: ' || string_agg(DISTINCT e.error_message, '; ' "
                        "ORDER BY e.error_message) FROM reject_errors e "
                        "JOIN reject_scans s USING (scan_id, file_id) GROUP BY s.file_path, e.line")
    except duckdb.Error as exc:
        raise _parse_error(table, files, source, exc, key) from None
    if table == "customers":
        # An exact duplicate of a customer row is a duplicate, not a conflicting record.
        con.execute(f"UPDATE {parsed} SET _customer_rank = 1 WHERE _duplicate")
    rules = _quarantine_rules(table, source, mapping, config, today or dt.datetime.now(dt.UTC).date())
    reason_sql = "CASE " + " ".join(f"WHEN {cond} THEN {literal(reason)}" for reason, cond in rules) + " END"
    con.execute(f"CREATE OR REPLACE VIEW {judged} AS SELECT *, {reason_sql} AS {REASON} "
                f"FROM {parsed} WHERE NOT _duplicate")

    output = [c.name for c in TABLES[table] if c.name in expressions]
    select = ", ".join(f"{quote('c_' + name)} AS {quote(name)}" for name in output)
    if table == "transactions":
        prefix = source.return_order_prefix
        signs = [f"{quote('c_' + c)} < 0" for c in ("amount", "quantity") if c in output]
        flagged = [f"starts_with(c_order_id, {literal(prefix)})"] if prefix and "order_id" in output else []
        # A return is what the log marks as one; a blank quantity or order id marks nothing, and a
        # log with none of these columns has no returns (the contract: is_return is never null).
        select += f", coalesce({' OR '.join(signs + flagged) or 'false'}, false) AS is_return"
        output.append("is_return")
    originals = ", ".join(f"CAST({quote(c)} AS VARCHAR) AS {quote(c)}" for c in found)
    con.execute(f"""
        CREATE OR REPLACE VIEW quarantine_{name} AS
        SELECT {SOURCE_FILE}, {SOURCE_ROW}, NULL::VARCHAR AS {RAW_LINE}, {REASON}, {originals}
        FROM {judged} WHERE {REASON} IS NOT NULL
        UNION ALL BY NAME
        SELECT {SOURCE_FILE}, {SOURCE_ROW}, {RAW_LINE}, {REASON} FROM {rejects}
        ORDER BY {SOURCE_FILE}, {SOURCE_ROW}
    """)

    report.rows_read, report.duplicates_removed = con.execute(
        f"SELECT count(*) + (SELECT count(*) FROM {rejects}), count(*) FILTER (_duplicate) FROM {parsed}").fetchone()
    counts = con.execute(f"SELECT coalesce(split_part({REASON}, ':', 1), '') AS r, count(*) FROM "
                         f"(SELECT {REASON} FROM {judged} UNION ALL SELECT {REASON} FROM {rejects}) GROUP BY r"
                         ).fetchall()
    report.quarantined = {reason: count for reason, count in counts if reason}
    if source.id_format == "integer_like":
        raw_id = f"trim(CAST({quote(mapping['customer_id'])} AS VARCHAR))"
        report.customer_ids_normalised = con.execute(
            f"SELECT count(*) FROM {judged} WHERE {REASON} IS NULL AND c_customer_id <> {raw_id}").fetchone()[0]
    report.accepted = sum(count for reason, count in counts if not reason)

    if report.rows_read != report.accepted + report.quarantined_total + report.duplicates_removed:
        raise RuntimeError(f"{key}: rows read != accepted + quarantined + duplicates ({report.as_dict()}); "
                           "this is a bug in churnlens, please report it with this message")
    share = report.quarantined_total / report.rows_read if report.rows_read else 0.0
    if share > config.max_quarantine_share:
        top = sorted(report.quarantined.items(), key=lambda kv: -kv[1])[:3]
        raise IngestError(
            f"{key}: {report.quarantined_total} of {report.rows_read} rows ({share:.1%}) were "
            f"quarantined, above ingest.max_quarantine_share={config.max_quarantine_share}; most common "
            f"reasons {top}. Fix the mapping in params.yaml, or raise the threshold if this is expected"
        )
    return JudgedSource(report, judged, output, select)


def ingest_table(con: duckdb.DuckDBPyConnection, table: str, source: TableSource | TableSources,
                 config: IngestConfig, base: Path, today: dt.date | None = None) -> TableReport:
    """Parse, validate and split one table into DuckDB views ``accepted_<table>`` and ``quarantine_<table>``,
    written straight to Parquet by the caller."""
    if isinstance(source, TableSources):
        report = ingest_sources(con, table, source, config, base, today)
    else:
        judged = judge_source(con, table, source, resolve_files(table, source, base), config, today,
                              f"ingest.{table}", table)
        order = "customer_id, timestamp" if "timestamp" in judged.output else "customer_id"
        con.execute(f"CREATE OR REPLACE VIEW accepted_{table} AS SELECT {judged.select} FROM {judged.judged} "
                    f"WHERE {REASON} IS NULL ORDER BY {order}, {SOURCE_FILE}, {SOURCE_ROW}")
        report = judged.report
    log.info("ingest %s: %s", table, report.as_dict())
    return report


def _distinct_files(table: str, sources: TableSources, base: Path) -> list[list[str]]:
    """Each source's files; a file matched by two sources would be read twice and is refused."""
    owner: dict[str, int] = {}
    listed = []
    for index, source in enumerate(sources.sources):
        files = resolve_files(table, source, base, f"ingest.{table}.sources.{index}")
        for file in files:
            if file in owner:
                raise IngestError(
                    f"ingest.{table}.sources.{index}.path: {source.path!r} matches {file!r}, which "
                    f"ingest.{table}.sources.{owner[file]}.path already reads; a file belongs to one source: "
                    "narrow the paths or globs so that each export is listed once")
            owner[file] = index
        listed.append(files)
    return listed


def _same_columns(table: str, judged: list[JudgedSource]) -> list[str]:
    """The canonical columns every source gives: rows are compared across sources in all of them."""
    first = judged[0].output
    for index, source in enumerate(judged[1:], start=1):
        if source.output != first:
            only_first = [c for c in first if c not in source.output]
            only_here = [c for c in source.output if c not in first]
            raise IngestError(
                f"ingest.{table}.sources.{index} gives canonical columns {source.output} but sources.0 gives "
                f"{first} (only in sources.0: {only_first}; only in sources.{index}: {only_here}). Rows of "
                f"several exports are compared in every canonical column, so each source must give the same "
                f"ones: map them in ingest.{table}.sources.<n>.columns, or leave them out of every source")
    return first


def ingest_sources(con: duckdb.DuckDBPyConnection, table: str, sources: TableSources, config: IngestConfig,
                   base: Path, today: dt.date | None) -> TableReport:
    """Several exports of one table: each judged with its own settings, then the rows a later source
    shares with earlier ones removed, as multisets of canonical rows.

    Per identical canonical row, the k-th copy in a source is removed when an earlier source also
    has a k-th copy: the table keeps as many copies as the export holding the most, taken from the
    earliest sources. So a repeat inside one export is kept, and the content (not which source
    supplied a row) is the same whatever the order of the sources.
    """
    files = _distinct_files(table, sources, base)
    judged = [judge_source(con, table, source, files[index], config, today,
                           f"ingest.{table}.sources.{index}", f"{table}_{index}")
              for index, source in enumerate(sources.sources)]
    output = _same_columns(table, judged)
    columns = ", ".join(quote(c) for c in output)
    candidates = " UNION ALL ".join(
        f"SELECT {index} AS _source_index, {SOURCE_FILE}, {SOURCE_ROW}, {source.select} "
        f"FROM {source.judged} WHERE {REASON} IS NULL" for index, source in enumerate(judged))
    overlap = f"overlap_{table}"
    con.execute(f"""
        CREATE OR REPLACE TABLE {overlap} AS
        SELECT *, min(_source_index) OVER (PARTITION BY {columns}, _occurrence) AS _kept_source FROM (
            SELECT *, row_number() OVER (PARTITION BY _source_index, {columns}
                                         ORDER BY {SOURCE_FILE}, {SOURCE_ROW}) AS _occurrence
            FROM ({candidates}))
    """)
    reports = [source.report for source in judged]
    for index, kept_by, rows in con.execute(
            f"SELECT _source_index, _kept_source, count(*) FROM {overlap} WHERE _kept_source < _source_index "
            "GROUP BY ALL ORDER BY ALL").fetchall():
        reports[index].overlap_removed += rows
        reports[index].accepted -= rows
        reports[index].overlap_removed_with[sources.sources[kept_by].path] = rows
    if table == "customers":
        _refuse_conflicting_profiles(con, overlap, sources)

    # Sorted on every column, so the file is the same bytes whichever source supplied a row.
    leading = ["customer_id", "timestamp"] if "timestamp" in output else ["customer_id"]
    order = ", ".join(quote(c) for c in [*leading, *(c for c in output if c not in leading)])
    con.execute(f"CREATE OR REPLACE VIEW accepted_{table} AS SELECT {columns} FROM {overlap} "
                f"WHERE _kept_source = _source_index ORDER BY {order}, _source_index, {SOURCE_FILE}, {SOURCE_ROW}")
    quarantined = " UNION ALL BY NAME ".join(f"SELECT * FROM quarantine_{table}_{i}" for i in range(len(judged)))
    con.execute(f"CREATE OR REPLACE VIEW quarantine_{table} AS {quarantined} ORDER BY {SOURCE_FILE}, {SOURCE_ROW}")
    # What cross_table_checks reads: every judged row but the overlap.
    rejected = " UNION ALL ".join(f"SELECT c_customer_id, {REASON} FROM {source.judged} WHERE {REASON} IS NOT NULL"
                                  for source in judged)
    con.execute(f"CREATE OR REPLACE VIEW judged_{table} AS {rejected} UNION ALL SELECT customer_id AS c_customer_id, "
                f"NULL::VARCHAR AS {REASON} FROM {overlap} WHERE _kept_source = _source_index")
    return _table_total(table, reports)


def _refuse_conflicting_profiles(con: duckdb.DuckDBPyConnection, overlap: str, sources: TableSources) -> None:
    conflicts = con.execute(
        f"SELECT customer_id, list(DISTINCT _source_index ORDER BY _source_index) FROM {overlap} "
        "WHERE _kept_source = _source_index GROUP BY customer_id HAVING count(*) > 1 ORDER BY customer_id LIMIT 3"
    ).fetchall()
    if conflicts:
        shown = [f"{customer!r} in sources {indices}" for customer, indices in conflicts]
        raise IngestError(
            f"ingest.customers: customers with different profiles in several sources, e.g. {shown}; "
            "which one is right cannot be told from the files. Correct the profiles so that the exports agree, "
            "or keep the customer table of one export only")


def _table_total(table: str, reports: list[TableReport]) -> TableReport:
    total = TableReport(table=table, files=[f for r in reports for f in r.files], sources=reports,
                        amount_absent=reports[0].amount_absent)
    for report in reports:
        total.rows_read += report.rows_read
        total.accepted += report.accepted
        total.duplicates_removed += report.duplicates_removed
        total.overlap_removed += report.overlap_removed
        total.customer_ids_normalised += report.customer_ids_normalised
        for reason, count in report.quarantined.items():
            total.quarantined[reason] = total.quarantined.get(reason, 0) + count
    if total.rows_read != total.accepted + total.quarantined_total + total.duplicates_removed + total.overlap_removed:
        raise RuntimeError(f"ingest.{table}: rows read != accepted + quarantined + duplicates + overlap "
                           f"({total.as_dict()}); this is a bug in churnlens, please report it with this message")
    return total


def cross_table_checks(con: duckdb.DuckDBPyConnection, tables: list[str]) -> dict[str, int]:
    """Customers present in one table and missing in another: kept, and counted here. Counted on
    the judged rows (the accepted ones are those without a reason), not the accepted views, whose
    sort serves only the written files (on the default data 1.1 s with it, 0.55 s without)."""
    accepted = {t: f"(SELECT c_customer_id AS customer_id FROM judged_{t} WHERE {REASON} IS NULL)" for t in tables}
    checks: dict[str, int] = {}
    if "customers" in accepted:
        checks["transaction_customers_without_profile"] = con.execute(
            f"SELECT count(DISTINCT customer_id) FROM {accepted['transactions']} t "
            f"WHERE NOT EXISTS (SELECT 1 FROM {accepted['customers']} c WHERE c.customer_id = t.customer_id)"
        ).fetchone()[0]
        checks["profiles_without_transactions"] = con.execute(
            f"SELECT count(*) FROM {accepted['customers']} c "
            f"WHERE NOT EXISTS (SELECT 1 FROM {accepted['transactions']} t WHERE c.customer_id = t.customer_id)"
        ).fetchone()[0]
    if "interactions" in accepted:
        checks["interaction_customers_without_transactions"] = con.execute(
            f"SELECT count(DISTINCT customer_id) FROM {accepted['interactions']} i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {accepted['transactions']} t WHERE i.customer_id = t.customer_id)"
        ).fetchone()[0]
    return checks


def validate_accepted(table: str, path: Path, batch_rows: int = 1_000_000) -> None:
    """Check the written canonical file against the declared contract, one bounded batch at a time.

    The quarantine rules should already guarantee this; the check makes a broken rule fail here,
    at the stage boundary, instead of as a wrong feature later.
    """
    import pandera.errors
    import pyarrow.parquet as pq

    schema = None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        schema = schema or pandera_schema(table, present=list(frame.columns))
        try:
            schema.validate(frame, lazy=True)
        except pandera.errors.SchemaErrors as exc:
            cases = exc.failure_cases[["column", "check", "failure_case"]].head(5).to_dict("records")
            raise IngestError(f"ingest.{table}: accepted rows break the canonical contract: {cases}") from None


def _copy_parquet(con: duckdb.DuckDBPyConnection, relation: str, target: Path,
                  check: Callable[[Path], None] | None = None) -> None:
    """Write a relation to Parquet; ``check`` sees the file before it takes the real name."""
    with atomic_path(target) as temporary:
        con.execute(f"COPY {relation} TO {literal(str(temporary))} (FORMAT parquet, COMPRESSION zstd)")
        if check is not None:
            check(temporary)


def run_ingest(config: IngestConfig, base: Path, canonical_dir: Path, quarantine_dir: Path,
               report_path: Path, today: dt.date | None = None) -> dict:
    """Ingest every configured table; write canonical and quarantine Parquet and the report."""
    sources = {name: getattr(config, name) for name in TABLES if getattr(config, name) is not None}
    report: dict = {"tables": {}}
    canonical_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(canonical_dir, ".ingest.")  # the database of a killed run
    # A database file (not memory) so DuckDB can spill: a 10M-row export stays within memory_limit.
    with tempfile.TemporaryDirectory(prefix=f".ingest.{os.getpid()}.", dir=canonical_dir) as work, \
            duckdb.connect(str(Path(work) / "ingest.duckdb")) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = {literal(config.memory_limit)}")
        con.execute(f"SET temp_directory = {literal(str(Path(work) / 'spill'))}")
        for table, source in sources.items():
            table_report = ingest_table(con, table, source, config, base, today)
            report["tables"][table] = table_report.as_dict()
            _copy_parquet(con, f"accepted_{table}", canonical_dir / f"{table}.parquet",
                          check=functools.partial(validate_accepted, table))
            _copy_parquet(con, f"quarantine_{table}", quarantine_dir / f"{table}.parquet")
        report["cross_table"] = cross_table_checks(con, list(sources))
    # Stale outputs of a table that is no longer configured must not leak into features.
    for table in set(TABLES) - set(sources):
        (canonical_dir / f"{table}.parquet").unlink(missing_ok=True)
        (quarantine_dir / f"{table}.parquet").unlink(missing_ok=True)
    totals = report["tables"].values()
    report["rows_read"] = sum(t["rows_read"] for t in totals)
    report["accepted"] = sum(t["accepted"] for t in totals)
    report["quarantined"] = sum(t["quarantined"] for t in totals)
    report["duplicates_removed"] = sum(t["duplicates_removed"] for t in totals)
    if any("overlap_removed" in t for t in totals):  # only with several sources: the report is as before otherwise
        report["overlap_removed"] = sum(t.get("overlap_removed", 0) for t in totals)
    write_json(report, report_path)
    return report
