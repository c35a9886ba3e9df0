"""The command line as a user meets it: no third-party warnings, a version, fast model errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path



def _churnlens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "churnlens", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_duckdb_commands_print_no_third_party_warning(tmp_path: Path) -> None:
    import yaml

    from conftest import small_params_dict

    raw = small_params_dict()
    raw["simulate"].update({"n_customers": 200, "n_days": 200})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    for command in ("simulate", "ingest"):  # ingest validates with pandera, which retries pyspark imports
        result = _churnlens(command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr, f"{command}: {result.stderr}"
    # A failing command too (features without its input): every stage module imported.
    result = _churnlens("features", "--canonical-dir", "nowhere", cwd=tmp_path)
    assert result.returncode == 1 and "no canonical transactions" in result.stderr
    assert "Warning" not in result.stderr, result.stderr


def test_version_is_the_installed_package_version(tmp_path: Path) -> None:
    import importlib.metadata

    result = _churnlens("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"churnlens {importlib.metadata.version('churnlens')}"
