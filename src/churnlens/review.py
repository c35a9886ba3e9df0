"""What the review notebooks know about the project folder they run in: its parameter files
(params.yaml and the overlays its pipeline passes), the paths its pipeline writes, and a clear stop
when one of those outputs is missing. No mlflow here: notebook 02 talks to the registry itself.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from churnlens.config import Params, load_params

# Where each output lives when the project's dvc.yaml does not say otherwise (this repository's
# dvc.yaml): output name -> (stage, option of the stage's command, default path).
OUTPUTS = {
    "ingest_report": ("ingest", "--report", "reports/ingest_report.json"),
    "canonical": ("ingest", "--canonical-dir", "data/canonical"),
    "snapshots": ("features", "--output", "data/features/snapshots.parquet"),
    "features_report": ("features", "--report", "reports/features.json"),
    "train_report": ("train", "--report", "reports/train.json"),
    "metrics": ("evaluate", "--metrics", "reports/metrics.json"),
    "plots": ("evaluate", "--plots-dir", "reports/plots"),
    "deployed": ("evaluate", "--deployed", "reports/deployed.json"),
    "scores": ("score", "--output", "data/scores/scores.parquet"),
    "segment_report": ("score", "--report", "reports/segment_report.json"),
    "score_manifest": ("score", "--manifest", "reports/score_manifest.json"),
    "monitor_report": ("monitor", "--report", "reports/monitor.json"),
}


class ReviewStop(RuntimeError):
    """An output the review reads is missing or unusable. In a notebook it shows as its message
    alone (IPython's ``_render_traceback_``), not as a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[1;31mReview stopped:\x1b[0m {self}"]


@dataclass(frozen=True)
class Project:
    root: Path
    params_files: list[Path]
    params: Params
    stages: dict = field(repr=False)

    def path(self, output: str) -> Path:
        """Where this project's pipeline writes ``output`` (a key of :data:`OUTPUTS`), relative to the root."""
        stage, option, default = OUTPUTS[output]
        return Path(_option(self.stages.get(stage, {}).get("cmd", ""), option) or default)

    def stage_of(self, output: str) -> str:
        return OUTPUTS[output][0]

    def require(self, output: str, path: Path | None = None) -> Path:
        """The output's path, or a stop naming it and the command that makes it."""
        path = path if path is not None else self.path(output)
        if not (self.root / path).exists():
            raise ReviewStop(f"{path} is missing: run `dvc repro {self.stage_of(output)}` in this folder "
                             f"({self.root}), then rerun this notebook")
        return path

    def read_json(self, output: str) -> dict:
        path = self.require(output)
        try:
            return json.loads((self.root / path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReviewStop(f"{path} is not valid JSON ({exc}): rerun `dvc repro {self.stage_of(output)}` "
                             "in this folder") from None

    def optional_json(self, output: str) -> dict | None:
        path = self.root / self.path(output)
        return self.read_json(output) if path.is_file() else None


def find_root(start: Path | None = None) -> Path:
    """The project folder: ``CHURNLENS_PROJECT`` when set, else the nearest folder at or above
    ``start`` (the working folder) holding a params.yaml."""
    if os.environ.get("CHURNLENS_PROJECT"):
        root = Path(os.environ["CHURNLENS_PROJECT"]).expanduser().resolve()
        if not (root / "params.yaml").is_file():
            raise ReviewStop(f"CHURNLENS_PROJECT={root} holds no params.yaml: point it at a churnlens project folder "
                             "(one `churnlens init` made, or this repository)")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise ReviewStop(f"no params.yaml in {here} or any folder above it: open the notebook inside a churnlens project "
                     "(`churnlens init <folder>` makes one) or set CHURNLENS_PROJECT to the project folder")


def open_project(start: Path | None = None) -> Project:
    """The project this notebook reviews, with its parameters as its pipeline reads them."""
    root = find_root(start)
    stages = _stages(root)
    files = params_files(root, stages)
    missing = [str(f) for f in files if not (root / f).is_file()]
    if missing:
        raise ReviewStop(f"parameter file(s) {', '.join(missing)} named by {_source_of_files()} are missing in {root}")
    return Project(root, files, load_params(*[root / f for f in files]), stages)


def params_files(root: Path, stages: dict | None = None) -> list[Path]:
    """params.yaml and the overlays: ``CHURNLENS_PARAMS`` (files separated by the path separator)
    when set, else the ``--params`` files the pipeline's stages pass, else params.yaml alone."""
    if os.environ.get("CHURNLENS_PARAMS"):
        return [Path(p) for p in os.environ["CHURNLENS_PARAMS"].split(os.pathsep) if p]
    stages = _stages(root) if stages is None else stages
    named: list[Path] = []
    for stage in stages.values():
        for value in _options(stage.get("cmd", "") if isinstance(stage, dict) else "", "--params"):
            if Path(value) not in named:
                named.append(Path(value))
    if Path("params.yaml") in named:
        named.remove(Path("params.yaml"))
    return [Path("params.yaml"), *named]


def _source_of_files() -> str:
    return "CHURNLENS_PARAMS" if os.environ.get("CHURNLENS_PARAMS") else "dvc.yaml"


def _stages(root: Path) -> dict:
    pipeline = root / "dvc.yaml"
    if not pipeline.is_file():
        return {}
    try:
        stages = (yaml.safe_load(pipeline.read_text(encoding="utf-8")) or {}).get("stages", {})
    except yaml.YAMLError as exc:
        raise ReviewStop(f"{pipeline} is not valid YAML ({str(exc).splitlines()[0]}); fix it, then rerun") from None
    return {name: stage for name, stage in stages.items() if isinstance(stage, dict)}


def _options(command: str | list, option: str) -> list[str]:
    """Every value of ``option`` in a stage command (``--opt value`` or ``--opt=value``)."""
    text = " ".join(command) if isinstance(command, list) else str(command)
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    values = []
    for i, word in enumerate(words):
        if word == option and i + 1 < len(words):
            values.append(words[i + 1])
        elif word.startswith(f"{option}="):
            values.append(word.split("=", 1)[1])
    return values


def _option(command: str | list, option: str) -> str | None:
    values = _options(command, option)
    return values[-1] if values else None


def deployed_version(deployed: dict | None) -> tuple[str | None, str | None]:
    """(model name, version) that reports/deployed.json names, or (None, None)."""
    if not deployed:
        return None, None
    model = deployed.get("model") if isinstance(deployed.get("model"), dict) else deployed
    name = model.get("model_name") or model.get("name")
    version = model.get("model_version") or model.get("version")
    return (str(name) if name else None), (str(version) if version is not None else None)
