"""``churnlens init``: a DVC project of its own for one data set, beside (never inside) this one.

The new folder gets this repository's pipeline without the simulator: a ``dvc.yaml`` derived from
this repository's (the same stages, commands, params and outputs, minus ``simulate``; the user's
raw files are the ingest stage's deps), a ``params.yaml`` of this repository's defaults with an
ingest section for the user's files (columns mapped where the headers make it unambiguous, a
commented template where they do not), the review notebooks, a ``.gitignore``, ``git init``,
``dvc init`` and a first commit. Its MLflow store is the default ``sqlite:///mlflow.db`` inside it.

The templates are files of the churnlens source checkout (``dvc.yaml``, ``params.yaml``,
``notebooks/``), read from there rather than copied into the package, so the demo pipeline and
every generated one cannot drift: an editable install (``pip install -e .``, what ``make install``
does) finds them two folders above this module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from churnlens.schemas import TABLES

TEMPLATE_FILES = ("dvc.yaml", "params.yaml")
DEMO_ONLY_STAGES = ("simulate",)
DEMO_ONLY_DEPS = ("data/raw", "data/truth")
DEMO_ONLY_OPTIONS = ("--truth",)  # score's known personas exist for simulated data only
TABLE_SECTION = re.compile(r"^  (transactions|interactions|customers):")

# Common export headers (compared without case, spaces, underscores or dashes) -> canonical name.
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "transactions": {
        "customer_id": ("customerid", "customer", "customerno", "customernumber", "clientid"),
        "timestamp": ("invoicedate", "date", "orderdate", "datetime", "transactiondate"),
        "order_id": ("invoice", "invoiceno", "invoiceid", "orderid", "orderno", "ordernumber"),
        "product_id": ("stockcode", "productid", "sku"),
        "quantity": ("quantity", "qty"),
        "unit_price": ("price", "unitprice"),
        "amount": ("amount", "total", "revenue"),
    },
    "interactions": {"customer_id": ("customerid", "customer"), "timestamp": ("date", "datetime")},
    "customers": {"customer_id": ("customerid", "customer")},
}


class InitError(ValueError):
    """A project cannot be created as asked; the message says what to change."""


@dataclass
class InferredSource:
    """One export: its path (relative to the project), the columns found and the mapping inferred."""

    path: str
    found: list[str]
    columns: dict[str, str] = field(default_factory=dict)
    unresolved: dict[str, list[str]] = field(default_factory=dict)  # canonical -> candidate columns
    settings: dict[str, str] = field(default_factory=dict)

    def missing_required(self, table: str) -> list[str]:
        return [c.name for c in TABLES[table] if c.required and c.name not in self.columns]


def template_root() -> Path:
    """The churnlens checkout whose dvc.yaml, params.yaml and notebooks/ a new project copies."""
    root = Path(__file__).resolve().parents[2]
    missing = [name for name in (*TEMPLATE_FILES, "notebooks") if not (root / name).exists()]
    if missing:
        raise InitError(f"{root}: no {', '.join(missing)} beside the churnlens package; `churnlens init` copies "
                        "them from the churnlens source checkout: install churnlens from one with "
                        "`pip install -e <checkout>` (what `make install` does)")
    return root


def _normal(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name).lower()


def _describe(path: Path) -> tuple[list[str], dict[str, str], object]:
    """Columns and DuckDB types of an export's first file, and the open connection with ``src``."""
    import duckdb

    from churnlens.sqltext import literal

    con = duckdb.connect()
    if path.suffix.lower() in (".parquet", ".pq"):
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet({literal(str(path))})")
    else:
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_csv({literal(str(path))}, header=true)")
    rows = con.execute("DESCRIBE src").fetchall()
    return [r[0] for r in rows], {r[0]: r[1] for r in rows}, con


def infer_source(table: str, given: str, project: Path) -> InferredSource:
    """The mapping of one export's columns onto ``table``'s canonical columns, where unambiguous."""
    from churnlens.config import TableSource
    from churnlens.ingest import IngestError, resolve_files
    from churnlens.sqltext import quote_name as quote

    absolute = Path(given).expanduser().resolve()
    shown = given if Path(given).is_absolute() else os.path.relpath(absolute, project.resolve())
    try:
        files = resolve_files(table, TableSource(path=str(absolute)), Path("."), f"--{table}")
    except IngestError as exc:
        raise InitError(str(exc).replace(str(absolute), given)) from None
    found, types, con = _describe(Path(files[0]))
    source = InferredSource(path=shown, found=found)
    with con:
        canonical = [c.name for c in TABLES[table]]
        for name in canonical:
            exact = [c for c in found if c == name]
            candidates = exact or [c for c in found if _normal(c) in (_normal(name), *ALIASES[table].get(name, ()))]
            if len(candidates) == 1:
                source.columns[name] = candidates[0]
            elif candidates:
                source.unresolved[name] = candidates
        taken = list(source.columns.values())
        for name, column in list(source.columns.items()):
            if taken.count(column) > 1:  # one column claimed by two canonical names: ask
                source.unresolved[name] = [column]
                del source.columns[name]
        order = source.columns.get("order_id")
        if table == "transactions" and order is not None:
            starts_c = con.execute(f"SELECT count(*) FROM src WHERE CAST({quote(order)} AS VARCHAR) LIKE 'C%'"
                                   ).fetchone()[0]
            if starts_c:
                source.settings["return_order_prefix"] = "C"
        customer = source.columns.get("customer_id")
        if customer is not None and types[customer] in ("DOUBLE", "FLOAT", "REAL"):
            source.settings["id_format"] = "integer_like"
    return source


def _quoted(text: str) -> str:
    """A YAML scalar as DVC's writer keeps it (plain where safe, else single-quoted)."""
    return yaml.safe_dump(text, default_style=None, width=10_000).removesuffix("\n...\n").strip()


def _source_lines(table: str, source: InferredSource, indent: str) -> list[str]:
    lines = [f"{indent}path: {_quoted(source.path)}"]
    lines.append(f"{indent}# columns found: {', '.join(source.found)}")
    if source.columns:
        lines.append(f"{indent}columns:")
        lines += [f"{indent}  {name}: {_quoted(column)}" for name, column in source.columns.items()]
    template = [c for c in TABLES[table] if c.name not in source.columns]
    if template:
        lines.append(f"{indent}# Not mapped (add under `columns:` as <canonical name>: <your column>; "
                     f"required: {', '.join(c.name for c in TABLES[table] if c.required)}):")
        for column in template:
            hint = f" (candidates: {', '.join(source.unresolved[column.name])})" if column.name in source.unresolved \
                else ""
            lines.append(f"{indent}#   {column.name}{' (required)' if column.required else ''}: "
                         f"{column.description}{hint}")
    lines += [f"{indent}{key}: {_quoted(value)}" for key, value in source.settings.items()]
    return lines


def ingest_tables_text(tables: dict[str, list[InferredSource]]) -> str:
    """The ``ingest.<table>`` entries: one source as a table, several as ``sources:``, none as null."""
    lines: list[str] = []
    for table in TABLES:
        sources = tables.get(table, [])
        if not sources:
            lines.append(f"  {table}:{' ' * (24 - len(table))}# null: no {table} export given")
        elif len(sources) == 1:
            lines += [f"  {table}:", *_source_lines(table, sources[0], "    ")]
        else:
            # DVC's writer (`dvc exp run -S`) drops comments inside list items, so each export's notes
            # stand above `sources:`, numbered like the list.
            blocks = [_source_lines(table, source, "      ") for source in sources]
            lines += [f"  {table}:", "    # several exports of one log, earliest first (docs/ingest.md)"]
            for number, block in enumerate(blocks):
                notes = [line.strip() for line in block if line.lstrip().startswith("#")]
                lines += [f"    # source {number}: {notes[0].removeprefix('# ')}",
                          *(f"    #   {note.removeprefix('# ')}" for note in notes[1:])]
            lines.append("    sources:")
            for block in blocks:
                kept = [line for line in block if not line.lstrip().startswith("#")]
                lines += ["    - " + kept[0].strip(), *kept[1:]]
    return "\n".join(lines) + "\n"


def project_params_text(template: str, tables: dict[str, list[InferredSource]]) -> str:
    """``template`` (this repository's params.yaml) without the simulate section, its ingest tables
    replaced by the user's: every other key, value and comment as in the template."""
    sections: list[list[str]] = []
    for line in template.splitlines(keepends=True):
        if re.match(r"^[A-Za-z_]\w*:", line) or not sections:
            sections.append([])
        sections[-1].append(line)
    kept = [s for s in sections if not any(s[0].startswith(f"{name}:") for name in DEMO_ONLY_STAGES)]
    out: list[str] = []
    for section in kept:
        if not section[0].startswith("ingest:"):
            out += section
            continue
        inserted, skipping = False, False
        for line in section:
            if TABLE_SECTION.match(line):
                skipping = True
                if not inserted:
                    out.append(ingest_tables_text(tables))
                    inserted = True
                continue
            if skipping and (line.startswith("    ") or not line.strip()):
                continue
            skipping = False
            out.append(line)
    return "".join(out)


def project_pipeline(template: dict, raw_paths: list[str]) -> dict:
    """This repository's dvc.yaml minus the simulator: same stages, commands, params and outputs;
    the user's raw files replace data/raw as ingest's deps. Code deps (src/...) are files of the
    churnlens checkout, not of the new project, and are left out."""
    stages = {}
    for name, stage in template["stages"].items():
        if name in DEMO_ONLY_STAGES:
            continue
        stage = dict(stage)
        words = stage["cmd"].split()
        for option in DEMO_ONLY_OPTIONS:
            while option in words:
                at = words.index(option)
                del words[at:at + 2]
        stage["cmd"] = " ".join(words)
        deps = [d for d in stage.get("deps", []) if not d.startswith("src/") and d not in DEMO_ONLY_DEPS]
        if name == "ingest":
            deps = [*raw_paths, *deps]
        stage["deps"] = deps
        stages[name] = stage
    return {"stages": stages, **{k: v for k, v in template.items() if k != "stages"}}


def dependency_path(path: str) -> str:
    """What DVC can track for an ingest path: the path itself, or a glob's fixed leading folder."""
    parts = Path(path).parts
    fixed = [p for p in parts[:next((i for i, p in enumerate(parts) if any(ch in p for ch in "*?[")), len(parts))]]
    return str(Path(*fixed)) if fixed else "."


GITIGNORE = """\
# MLflow's local tracking store and artifacts: runtime state, never committed.
mlflow.db
mlruns/
mlartifacts/
# Stage reports and data outputs are DVC's (dvc.lock, experiments, its cache).
/reports/
/data/
/models/
.ipynb_checkpoints/
"""

DVC_HEADER = """\
# ingest -> features -> train -> evaluate -> score on your own data; generated by `churnlens init`
# from the churnlens pipeline (the same stages, commands, params and outputs, minus its simulator).
# Paths live here, knobs in params.yaml: `dvc repro` reruns exactly the stages a change affects.
"""


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise InitError(f"{cwd}: `{' '.join(command[-3:] if command[0] == sys.executable else command)}` failed: "
                        f"{(result.stderr or result.stdout).strip()[-800:]}")


def _git_identity(cwd: Path) -> list[str]:
    """The user's git identity, or a neutral one for the first commit when none is configured."""
    configured = subprocess.run(["git", "config", "user.email"], cwd=cwd, capture_output=True, text=True)
    return [] if configured.stdout.strip() else ["-c", "user.name=churnlens init", "-c", "user.email=init@churnlens"]


def init_project(folder: Path, transactions: list[str], interactions: list[str] | None = None,
                 customers: list[str] | None = None) -> dict:
    """Create the project in ``folder`` (new or empty) and return what was inferred."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InitError(f"{folder}: already exists and is not an empty folder; churnlens init creates a new "
                        "project: give a new folder (or an empty one)")
    if not transactions:
        raise InitError("--transactions: give the transaction export (a file, a folder or a glob)")
    root = template_root()
    given = {"transactions": transactions, "interactions": interactions or [], "customers": customers or []}
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        tables = {table: [infer_source(table, path, folder) for path in paths] for table, paths in given.items()}
        params = project_params_text((root / "params.yaml").read_text(encoding="utf-8"), tables)
        raw_paths = [dependency_path(s.path) for sources in tables.values() for s in sources]
        pipeline = project_pipeline(yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")),
                                    list(dict.fromkeys(raw_paths)))
        (folder / "params.yaml").write_text(params, encoding="utf-8")
        (folder / "dvc.yaml").write_text(DVC_HEADER + yaml.safe_dump(pipeline, sort_keys=False, width=120),
                                         encoding="utf-8")
        (folder / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
        shutil.copytree(root / "notebooks", folder / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        _run(["git", "init", "-q"], folder)
        _run([sys.executable, "-m", "dvc", "init", "-q"], folder)
        _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], folder)
        _run(["git", "add", "-A"], folder)
        _run(["git", *_git_identity(folder), "commit", "-q", "-m", "churnlens init: pipeline for this data set"],
             folder)
    except BaseException:
        # Nothing half-made is left behind: the folder as it was (absent, or empty).
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise
    return {"folder": str(folder), "tables": tables}


def summary(result: dict) -> list[str]:
    """One line per export: what was mapped and what is left to fill in params.yaml."""
    lines = []
    for table, sources in result["tables"].items():
        for source in sources:
            mapped = ", ".join(f"{k} <- {v}" for k, v in source.columns.items()) or "nothing"
            lines.append(f"{table} {source.path}: mapped {mapped}")
            missing = source.missing_required(table)
            if missing:
                lines.append(f"  fill ingest.{table}{'.sources.<n>' if len(sources) > 1 else ''}.columns."
                             f"{'/'.join(missing)} in params.yaml (the columns found are listed there)")
    return lines
