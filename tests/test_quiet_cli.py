"""The command line as a user meets it: no third-party warnings, a version, fast model errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import churnlens


def _churnlens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "churnlens", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_a_duckdb_command_prints_no_third_party_warning(tmp_path: Path) -> None:
    # `features` imports every stage module (pandera, and through it pyspark when installed) and
    # then fails on the missing input: the import path of every DuckDB command.
    result = _churnlens("features", "--params", str(Path(churnlens.__file__).parents[2] / "params.yaml"),
                        "--canonical-dir", "nowhere", cwd=tmp_path)
    assert result.returncode == 1 and "no canonical transactions" in result.stderr
    assert "Warning" not in result.stderr, result.stderr


def test_version_is_the_installed_package_version(tmp_path: Path) -> None:
    import importlib.metadata

    result = _churnlens("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"churnlens {importlib.metadata.version('churnlens')}"
