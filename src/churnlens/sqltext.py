"""SQL identifiers and literals, quoted safely: the one way a name, a value or a file path enters SQL."""

from __future__ import annotations


def quote_name(name: str) -> str:
    """An SQL identifier, quoted (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """An SQL string literal (embedded quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"
