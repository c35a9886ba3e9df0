"""File I/O at the edges: atomic writes (temp file in the same folder + rename) and fingerprints."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only on success.

    A crash or kill mid-write leaves the previous ``target`` (or none) and at most a hidden
    ``.tmp`` file, never a partial output under the real name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f"{suffix}.tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_parquet(frame: pd.DataFrame, target: str | Path) -> Path:
    with atomic_path(target) as temporary:
        frame.to_parquet(temporary, index=False)
    return Path(target)


def write_csv(frame: pd.DataFrame, target: str | Path) -> Path:
    with atomic_path(target) as temporary:
        frame.to_csv(temporary, index=False)
    return Path(target)


def write_json(payload: object, target: str | Path) -> Path:
    with atomic_path(target) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return Path(target)


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_fingerprint(*paths: str | Path) -> str:
    """sha256 over the bytes of the given files (directories: every file below, in sorted order)."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.name).encode())
            with file.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
