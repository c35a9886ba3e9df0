"""The review surfaces, live: the notebooks executed top to bottom, a real MLflow server queried
through its REST API, and its UI rendered by a headless Chromium."""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs() -> None:
    assert len(NOTEBOOKS) == 4
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        assert all(not c.get("outputs") and not c.get("execution_count") for c in cells if c["cell_type"] == "code"), \
            f"{path.name} holds outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_against_a_pipeline_run(path: Path, reviewed_project: dict,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CHURNLENS_PROJECT", str(reviewed_project["root"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reviewed_project["tracking_uri"])
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # raises on any failing cell
    assert time.perf_counter() - started < 60
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no plot"
    if path.stem == "02_model_review":
        _assert_review_shows_the_registrys_champion(notebook, reviewed_project)


def _assert_review_shows_the_registrys_champion(notebook, reviewed_project: dict) -> None:
    """The notebook names the champion the registry holds and shows that version's own numbers."""
    from mlflow import MlflowClient

    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in notebook.cells for o in c.get("outputs", []))
    client = MlflowClient(reviewed_project["tracking_uri"], registry_uri=reviewed_project["tracking_uri"])
    champion = client.get_model_version_by_alias("churnlens", "champion")
    assert f"model under review: churnlens v{champion.version} (champion" in text
    metrics = client.get_run(champion.run_id).data.metrics
    for key in ("holdout/roc_auc", "holdout_baseline/recency_rule/roc_auc", "holdout/brier"):
        assert f"{metrics[key]:.4f}" in text, f"{key} of v{champion.version} is not what the notebook shows"
    assert champion.description.splitlines()[0] in text  # the promotion decision, as the registry states it


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(reviewed_project: dict):
    """`churnlens ui` on a free loopback port, against the project's store."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": reviewed_project["tracking_uri"]}
    log = reviewed_project["root"] / "ui.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "churnlens", "ui", "--port", str(port)], cwd=reviewed_project["root"],
                                  env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, \
                f"the MLflow server did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_server_binds_to_loopback_only(mlflow_server: str) -> None:
    assert mlflow_server.startswith("http://127.0.0.1:")


def test_rest_api_shows_the_latest_run_its_plots_and_the_registered_model(mlflow_server: str,
                                                                         reviewed_project: dict) -> None:
    api = f"{mlflow_server}/api/2.0/mlflow"
    experiment = _get(f"{api}/experiments/get-by-name?experiment_name=churnlens")["experiment"]
    runs = _post(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1,
                                         "order_by": ["attributes.start_time DESC"]})["runs"]
    latest = runs[0]
    assert latest["info"]["run_id"] == reviewed_project["trained"]["run_id"]
    metrics = {m["key"] for m in latest["data"]["metrics"]}
    assert {"validation/logloss", "holdout/roc_auc", "holdout_baseline/recency_rule/roc_auc",
            "rolling_backtest/roc_auc_mean"} <= metrics
    artifacts = _get(f"{api}/artifacts/list?run_id={latest['info']['run_id']}&path=evaluation")["files"]
    pngs = {Path(a["path"]).name for a in artifacts if a["path"].endswith(".png")}
    assert {"roc.png", "calibration.png", "gains.png", "profit.png", "importance.png"} <= pngs
    model = _get(f"{api}/registered-models/get?name=churnlens")["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    assert aliases.get("champion") == reviewed_project["trained"]["model_version"]
    assert "challenger" in aliases


def _rendered(url: str, profile: Path) -> str:
    """The page's DOM after the single-page app has fetched and drawn it (the served HTML is an
    empty shell)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Chromium is missing: `make browser` (or .ci/run) installs Debian's chromium"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=2600,1400",
         f"--user-data-dir={profile}", "--virtual-time-budget=25000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_experiment_landing_page_is_the_runs_table(mlflow_server: str, reviewed_project: dict,
                                                   tmp_path: Path) -> None:
    # The address `churnlens ui` prints, built from the store: not one this test makes up.
    from churnlens.tracking import experiment_url

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", reviewed_project["tracking_uri"])
        url = experiment_url(mlflow_server, "churnlens")
    dom = _rendered(url, tmp_path / "profile")
    run = MlflowClient(reviewed_project["tracking_uri"]).get_run(reviewed_project["trained"]["run_id"])
    assert run.info.run_name in dom, "the experiment's landing page does not list the training run"
    assert "0 traces" not in dom, "the experiment opened on the GenAI traces view"
    assert "churnlens review" in dom, "the experiment's review view (an experiment tag) did not load"
    holdout_auc = run.data.metrics["holdout/roc_auc"]
    assert "holdout/roc_auc" in dom and f"{holdout_auc:.4f}" in dom, "the runs table shows no holdout metric column"


def test_run_page_opens_on_the_holdout_figures(mlflow_server: str, reviewed_project: dict, tmp_path: Path) -> None:
    """The training run's chart sections as the UI draws them: the holdout leads, then the
    baselines on it; each backtest metric is one chart over the folds, not one chart per fold."""
    import re

    run = MlflowClient(reviewed_project["tracking_uri"]).get_run(reviewed_project["trained"]["run_id"])
    dom = _rendered(f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics",
                    tmp_path / "profile")
    sections = re.findall(r'data-testid="experiment-view-compare-runs-section-header".*?white-space: pre;">([^<]+)<',
                          dom)
    groups = list(dict.fromkeys(section.split("/")[0] for section in sections))
    assert sections[0] == "holdout" and groups[:3] == ["holdout", "holdout_baseline", "rolling_backtest"], sections
    assert not any("fold1" in key for key in run.data.metrics), "one metric key per fold is back"


def test_model_version_page_states_the_promotion(mlflow_server: str, reviewed_project: dict,
                                                 tmp_path: Path) -> None:
    version = reviewed_project["trained"]["model_version"]
    dom = _rendered(f"{mlflow_server}/#/models/churnlens/versions/{version}", tmp_path / "profile")
    assert "Promoted to champion: no champion yet" in dom, "the model version page does not state the decision"


def _execute_in(folder: Path, notebook_path: Path) -> tuple[object, str]:
    """Run a notebook copied into ``folder``/notebooks (as `churnlens init` lays a project out),
    with no CHURNLENS_PROJECT: it must find its project from where it runs. Returns the
    notebook and the error text of the cell that stopped it ('' when none did)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    (folder / "notebooks").mkdir(exist_ok=True)
    copy = folder / "notebooks" / notebook_path.name
    shutil.copyfile(notebook_path, copy)
    notebook = nbformat.read(copy, as_version=4)
    try:
        NotebookClient(notebook, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(copy.parent)}}).execute()
    except CellExecutionError as exc:
        return notebook, str(exc)
    return notebook, ""


@pytest.mark.parametrize(("stem", "missing", "stage"), [("01_data_exploration", "reports/ingest_report.json", "ingest"),
                                                        ("03_segments", "data/scores/scores.parquet", "score")])
def test_notebook_names_the_missing_output_and_the_command(stem: str, missing: str, stage: str, tmp_path: Path,
                                                           reviewed_project: dict,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHURNLENS_PROJECT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    shutil.copyfile(reviewed_project["root"] / "params.yaml", tmp_path / "params.yaml")
    _, error = _execute_in(tmp_path, PROJECT_ROOT / "notebooks" / f"{stem}.ipynb")
    assert f"{missing} is missing: run `dvc repro {stage}` in this folder" in error, error[-2000:]
    assert "KeyError" not in error and "FileNotFoundError" not in error


def test_model_review_without_a_registered_model_says_what_to_run(tmp_path: Path, reviewed_project: dict,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHURNLENS_PROJECT", raising=False)
    monkeypatch.delenv("CHURNLENS_MODEL_VERSION", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    shutil.copyfile(reviewed_project["root"] / "params.yaml", tmp_path / "params.yaml")
    _, error = _execute_in(tmp_path, PROJECT_ROOT / "notebooks" / "02_model_review.ipynb")
    assert "has no churnlens@champion" in error and "run `dvc repro evaluate` in this folder" in error, error[-2000:]


def test_scores_are_labelled_with_their_own_date_and_model(tmp_path: Path, reviewed_project: dict,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores of another date and model than the pipeline's segment report are labelled as what they are."""
    import pandas as pd

    root = reviewed_project["root"]
    scores = pd.read_parquet(root / "data/scores/scores.parquet")
    other = tmp_path / "retail.parquet"
    scores.assign(as_of=pd.Timestamp("2011-12-09", tz="UTC"), model_version="7").to_parquet(other)
    monkeypatch.setenv("CHURNLENS_PROJECT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reviewed_project["tracking_uri"])
    monkeypatch.setenv("CHURNLENS_SCORES", str(other))
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(PROJECT_ROOT / "notebooks/03_segments.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}}).execute()
    text = "\n".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "scored as of 2011-12-09 with churnlens v7" in text
    assert "macro-F1" not in text  # the pipeline's ground-truth agreement is of other scores
    reasons = "\n".join(o.get("data", {}).get("text/html", "") for c in notebook.cells for o in c.get("outputs", []))
    shown = scores.sort_values("priority", ascending=False).groupby("segment").head(3)  # the notebook's examples
    longest = max(shown["top_reasons"].dropna(), key=len)
    assert longest in html.unescape(reasons), "a reason is truncated"


def test_params_overlays_come_from_the_projects_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from churnlens.review import open_project

    monkeypatch.delenv("CHURNLENS_PROJECT", raising=False)
    monkeypatch.delenv("CHURNLENS_PARAMS", raising=False)
    shutil.copyfile(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "shop.yaml").write_text("train:\n  registered_model_name: shop_churn\n", encoding="utf-8")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  score:\n    cmd: churnlens score --params params.yaml --params shop.yaml --output out/s.parquet\n",
        encoding="utf-8")
    (tmp_path / "notebooks").mkdir()
    project = open_project(tmp_path / "notebooks")
    assert project.root == tmp_path.resolve()
    assert [str(p) for p in project.params_files] == ["params.yaml", "shop.yaml"]
    assert project.params.train.registered_model_name == "shop_churn"
    assert str(project.path("scores")) == "out/s.parquet" and str(project.path("metrics")) == "reports/metrics.json"
