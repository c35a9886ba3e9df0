"""`churnlens init`: a project of its own for one data set (real git, real DVC, the real CLI)."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from churnlens.config import load_params, parse_params
from churnlens.project import project_pipeline
from conftest import PROJECT_ROOT, small_params_dict

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def _run(command: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _export(n_customers: int = 150, seed: int = 0, first_day: int = 0) -> pd.DataFrame:
    """An invoice-line export with the UCI Online Retail II headers (float customer ids, C returns)."""
    rng = np.random.default_rng(seed)
    start, rows = pd.Timestamp("2022-01-01"), []
    for customer in range(n_customers):
        days = np.sort(rng.integers(first_day, 700, rng.integers(2, 20)))
        for i, day in enumerate(days):
            invoice = f"{'C' if i and rng.random() < 0.05 else ''}{500000 + customer * 100 + i}"
            for _ in range(rng.integers(1, 3)):
                quantity = int(rng.integers(1, 6)) * (-1 if invoice.startswith("C") else 1)
                rows.append((invoice, f"SKU{rng.integers(0, 30)}", "item", quantity,
                             (start + pd.Timedelta(days=int(day), hours=int(rng.integers(8, 20)))).isoformat(" "),
                             round(float(rng.uniform(1, 30)), 2), float(12000 + customer), "UK"))
    return pd.DataFrame(rows, columns=["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price",
                                       "Customer ID", "Country"])


def _init(tmp_path: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return _run([str(BIN / "churnlens"), "init", *args], tmp_path, ok=ok)


EXPECTED = {"customer_id": "Customer ID", "timestamp": "InvoiceDate", "order_id": "Invoice",
            "quantity": "Quantity", "unit_price": "Price", "product_id": "StockCode"}


def test_init_maps_an_export_and_its_pipeline_runs_there(tmp_path: Path) -> None:
    _export().to_csv(tmp_path / "export.csv", index=False)
    demo = {p: p.read_bytes() for p in (PROJECT_ROOT / "params.yaml", PROJECT_ROOT / "dvc.yaml")}
    _init(tmp_path, "shop", "--transactions", "export.csv")
    project = tmp_path / "shop"
    raw = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    source = raw["ingest"]["transactions"]
    assert source["path"] == "../export.csv"
    assert source["columns"] == EXPECTED
    assert source["return_order_prefix"] == "C" and source["id_format"] == "integer_like"
    assert raw["ingest"]["interactions"] is None and raw["ingest"]["customers"] is None
    assert "simulate" not in raw
    # Every other section is the demo's, value for value.
    defaults = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert {k: v for k, v in raw.items() if k != "ingest"} == {k: v for k, v in defaults.items()
                                                               if k not in ("ingest", "simulate")}
    load_params(project / "params.yaml")
    assert _run(["git", "status", "--porcelain"], project).stdout == ""
    assert (project / "notebooks").is_dir() and any((project / "notebooks").glob("*.ipynb"))

    _run(["dvc", "repro", "features"], project)
    canonical = pd.read_parquet(project / "data/canonical/transactions.parquet")
    assert canonical["customer_id"].iloc[0] == "12000" and canonical["is_return"].any()
    assert (project / "data/features/snapshots.parquet").is_file()
    # The export is the ingest stage's dep: changing it makes ingest stale.
    _export(seed=1).to_csv(tmp_path / "export.csv", index=False)
    assert "ingest" in _run(["dvc", "status", "ingest"], project).stdout
    assert {p: p.read_bytes() for p in demo} == demo, "init changed a file of the demo project"


def test_init_writes_several_exports_as_sources(tmp_path: Path) -> None:
    first, second = _export(seed=2), _export(seed=3, first_day=350)
    first.to_parquet(tmp_path / "year1.parquet", index=False)
    second.rename(columns={"Customer ID": "CustomerID", "Invoice": "InvoiceNo", "Price": "UnitPrice"}).to_csv(
        tmp_path / "year2.csv", index=False)
    _init(tmp_path, "shop", "--transactions", "year1.parquet", "--transactions", "year2.csv")
    project = tmp_path / "shop"
    sources = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))["ingest"]["transactions"]["sources"]
    assert [s["path"] for s in sources] == ["../year1.parquet", "../year2.csv"]
    assert sources[0]["columns"] == EXPECTED
    assert sources[1]["columns"] == {**EXPECTED, "customer_id": "CustomerID", "order_id": "InvoiceNo",
                                     "unit_price": "UnitPrice"}
    load_params(project / "params.yaml")
    _run([str(BIN / "churnlens"), "ingest"], project)
    assert pd.read_parquet(project / "data/canonical/transactions.parquet")["customer_id"].nunique() > 100


def test_an_ambiguous_export_gets_a_template_and_ingest_names_the_key(tmp_path: Path) -> None:
    pd.DataFrame({"who": ["a", "b"], "when_it_happened": ["2024-01-01", "2024-01-02"], "what": [1.0, 2.0]}).to_csv(
        tmp_path / "odd.csv", index=False)
    _init(tmp_path, "odd", "--transactions", "odd.csv")
    text = (tmp_path / "odd/params.yaml").read_text(encoding="utf-8")
    assert "# columns found: who, when_it_happened, what" in text
    assert "#   customer_id (required): customer key" in text and "#   timestamp (required): event time" in text
    failed = _run([str(BIN / "churnlens"), "ingest"], tmp_path / "odd", ok=False)
    assert failed.returncode != 0
    message = " ".join(failed.stderr.split())
    assert "required column 'customer_id' is not mapped" in message and "ingest.transactions.columns" in message


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    _export(n_customers=5).to_csv(tmp_path / "export.csv", index=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/notes.txt").write_text("mine", encoding="utf-8")
    failed = _init(tmp_path, "taken", "--transactions", "export.csv", ok=False)
    assert failed.returncode == 1
    assert "already exists and is not an empty folder" in " ".join(failed.stderr.split())
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_the_generated_pipeline_is_this_one_minus_the_simulator() -> None:
    """Derived, not copied: the same stages, commands, params and outputs; only the demo's own
    inputs (data/raw, data/truth, --truth, the simulate stage) and the checkout's code deps go."""
    demo = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    generated = project_pipeline(demo, ["../export.csv"])
    assert list(generated["stages"]) == [s for s in demo["stages"] if s != "simulate"]
    assert generated["plots"] == demo["plots"]
    for name, stage in generated["stages"].items():
        original = demo["stages"][name]
        expected_cmd = original["cmd"].replace(" --truth data/truth/ground_truth.parquet", "")
        assert " ".join(stage["cmd"].split()) == " ".join(expected_cmd.split())
        for key in ("params", "outs", "metrics"):
            assert stage.get(key) == original.get(key), f"{name}.{key}"
        kept = [d for d in original["deps"] if not d.startswith("src/") and d not in ("data/raw", "data/truth")]
        assert stage["deps"] == (["../export.csv", *kept] if name == "ingest" else kept)
    assert "--truth" not in generated["stages"]["score"]["cmd"]


def test_dvc_set_param_rewrites_one_line_of_params_yaml(tmp_path: Path) -> None:
    """`dvc exp run -S` writes params.yaml back through DVC's YAML writer: in this file's style a
    change is one line (flow style, `null`, double quotes were all rewritten before)."""
    from dvc.utils.hydra import apply_overrides

    before = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    target = tmp_path / "params.yaml"
    target.write_text(before, encoding="utf-8")
    apply_overrides(target, ["train.xgboost.max_depth=3"])
    changed = [line for line in difflib.unified_diff(before.splitlines(), target.read_text().splitlines(), n=0)
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["-    max_depth: 5", "+    max_depth: 3"]


def test_features_are_the_same_bytes_in_folders_of_different_path_lengths(tmp_path: Path) -> None:
    """The fresh-clone check: the same data and params give the same snapshot bytes wherever the
    project lives (paths and temp folders must not reach the file)."""
    from churnlens.stages import run_features, run_ingest_stage, run_simulate

    params = parse_params(small_params_dict())
    outputs = []
    for folder in (tmp_path / "a", tmp_path / ("a_much_longer_folder_name_" * 4) / "clone"):
        folder.mkdir(parents=True)
        run_simulate(params, folder / "data/raw", folder / "data/truth/ground_truth.parquet")
        run_ingest_stage(params, folder, folder / "data/canonical", folder / "data/quarantine",
                         folder / "reports/ingest_report.json")
        run_features(params, folder / "data/canonical", folder / "data/features/snapshots.parquet",
                     folder / "reports/features.json")
        outputs.append((folder / "data/features/snapshots.parquet").read_bytes())
        shutil.rmtree(folder / "data/raw")
    assert outputs[0] == outputs[1]

