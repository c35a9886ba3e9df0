"""A model folder whose bytes depend on the model alone, so that DVC (which hashes the folder)
sees the same output wherever and whenever the same data and params train the same model.

MLflow and skops write three things that do not: skops names each array after the ``id()`` of
the object in the saving process and each bytes blob after a random UUID, records those ids in
its schema, and stamps every zip member with the clock; MLflow's ``MLmodel`` carries a random
``model_uuid`` and the creation time. The run that logged a model, its time and its id are the
registry's to record (the version's run), not the folder's.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import PurePosixPath

SCHEMA = "schema.json"
# zip's epoch: what reproducible archives use as every member's time.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MEMBER_MODE = 0o644 << 16
# MLmodel fields that describe the saving process, not the model.
VOLATILE_MLMODEL_FIELDS = ("model_uuid", "utc_time_created", "run_id", "model_id", "artifact_path")


def canonical_skops(archive: bytes) -> bytes:
    """The same skops archive, renamed and renumbered in the order its schema meets them: ids as
    1, 2, ... and member files as 0.npy, 1.bin, ..., every member stored uncompressed at the zip
    epoch. skops only uses ids to tell one object from another and file names to find members, so
    a one-to-one renaming loads into the same pipeline."""
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        members = set(source.namelist()) - {SCHEMA}
        ids: dict[int, int] = {}
        files: dict[str, str] = {}

        def renamed(node: object) -> object:
            if isinstance(node, list):
                return [renamed(item) for item in node]
            if not isinstance(node, dict):
                return node
            out = {}
            for key, value in node.items():
                if key == "__id__" and isinstance(value, int):
                    out[key] = ids.setdefault(value, len(ids) + 1)
                elif key == "file" and isinstance(value, str) and value in members:
                    out[key] = files.setdefault(value, f"{len(files)}{PurePosixPath(value).suffix}")
                else:
                    out[key] = renamed(value)
            return out

        schema = renamed(json.loads(source.read(SCHEMA)))
        unreferenced = members - files.keys()
        if unreferenced:
            raise ValueError(f"skops archive holds members its schema never names: {sorted(unreferenced)[:3]}")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as target:
            for old, new in files.items():
                target.writestr(_member(new), source.read(old))
            target.writestr(_member(SCHEMA), json.dumps(schema, indent=2))
    return buffer.getvalue()


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.external_attr = MEMBER_MODE
    return info


def settled_mlmodel(fields: dict, content_bytes: int) -> dict:
    """``MLmodel`` fields without the saving process's traces; ``content_bytes`` is the size of
    the folder's other files, which canonical renaming changes."""
    settled = {key: value for key, value in fields.items() if key not in VOLATILE_MLMODEL_FIELDS}
    if "model_size_bytes" in settled:
        settled["model_size_bytes"] = content_bytes
    return settled
