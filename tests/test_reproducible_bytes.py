"""Same data + params + seed = the same bytes on every machine: the model folder DVC hashes, and
the BG/NBD fit and predictions on CPUs whose vector units round differently.

numpy picks its exp/log kernels by the CPU (AVX-512 machines run others); ``NPY_DISABLE_CPU_FEATURES``
makes this machine run the kernels a machine without AVX-512 runs. Where this machine has none,
both runs take the same kernels and the cross-CPU test compares like with like.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from churnlens import model_folder, tracking
from conftest import OTHER_VECTOR_UNIT


SAVE_A_MODEL = r"""
import sys
from pathlib import Path
import numpy as np, pandas as pd
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier
from churnlens import tracking

rng = np.random.default_rng(3)
frame = pd.DataFrame({"recency": rng.normal(size=300), "frequency": rng.normal(size=300)})
labels = (frame["recency"] + rng.normal(scale=0.5, size=300) > 0).astype(int)
pipeline = make_pipeline(StandardScaler(), XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1)).fit(frame, labels)
tracking.save_model_dir(pipeline, frame.head(5), {"numeric_features": ["recency", "frequency"]}, Path(sys.argv[1]))
"""


def folder_bytes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_two_processes_save_the_same_model_as_the_same_bytes(tmp_path: Path) -> None:
    # Separate processes: other object ids, other random UUIDs, another clock.
    for name in ("first", "second"):
        subprocess.run([sys.executable, "-c", SAVE_A_MODEL, str(tmp_path / name)], check=True)
    first, second = folder_bytes(tmp_path / "first"), folder_bytes(tmp_path / "second")
    assert first == second and "model.skops" in first
    mlmodel = (tmp_path / "first" / "MLmodel").read_text()
    assert "utc_time_created" not in mlmodel and "model_uuid" not in mlmodel


def test_canonical_archive_loads_into_the_same_predictions(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", SAVE_A_MODEL, str(tmp_path / "model")], check=True)
    loaded = tracking.load_model(str(tmp_path / "model"))
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"recency": rng.normal(size=50), "frequency": rng.normal(size=50)})
    # The same pipeline, fitted again here and serialized by skops as it is (ids, UUIDs, clock).
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBClassifier
    fit_rng = np.random.default_rng(3)
    train = pd.DataFrame({"recency": fit_rng.normal(size=300), "frequency": fit_rng.normal(size=300)})
    labels = (train["recency"] + fit_rng.normal(scale=0.5, size=300) > 0).astype(int)
    fresh = make_pipeline(StandardScaler(), XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1)).fit(train, labels)
    np.testing.assert_array_equal(loaded.pipeline.predict_proba(frame), fresh.predict_proba(frame))
    import skops.io

    raw = skops.io.dumps(fresh)
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        raw_names = set(archive.namelist())
    canonical = model_folder.canonical_skops(raw)
    with zipfile.ZipFile(io.BytesIO(canonical)) as archive:
        names = archive.namelist()
        assert {info.date_time for info in archive.infolist()} == {model_folder.ZIP_EPOCH}
        assert json.loads(archive.read("schema.json"))["__class__"] == "Pipeline"
    assert len(names) == len(raw_names) and names[-1] == "schema.json"
    assert all(name.split(".")[0].isdigit() for name in names[:-1])
    assert (tmp_path / "model" / "model.skops").read_bytes() == canonical  # the folder holds exactly this


def test_an_archive_with_a_member_its_schema_never_names_is_refused() -> None:
    import skops.io

    buffer = io.BytesIO(skops.io.dumps({"a": np.arange(3)}))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("stray.bin", b"?")
    with pytest.raises(ValueError, match="never names"):
        model_folder.canonical_skops(buffer.getvalue())


def test_the_registry_records_the_digest_of_the_logged_and_the_local_copy_alike(tracking_store: str,
                                                                                 tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"recency": rng.normal(size=80), "frequency": rng.normal(size=80)})
    pipeline = LogisticRegression().fit(frame, (frame["recency"] > 0).astype(int))
    (tmp_path / "features.json").write_text("{}")
    registered = tracking.log_training_run(
        experiment="bytes", model_name="churnlens", params={}, metrics={}, tags={}, pipeline=pipeline,
        example=frame.head(5), metadata={"numeric_features": ["recency", "frequency"]},
        artifacts={"features": tmp_path / "features.json"}, model_dir=tmp_path / "models/churn_model")
    import mlflow.artifacts

    logged = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/churnlens/{registered.version}"))
    recorded = MlflowClient().get_model_version("churnlens", registered.version).tags[tracking.MODEL_DIGEST_TAG]
    assert tracking.model_digest(logged) == tracking.model_digest(tmp_path / "models/churn_model") == recorded
    # The folder names no run (each store has its own ids); the registry links it to its run.
    assert "run_id" not in (tmp_path / "models/churn_model" / "MLmodel").read_text()
    assert tracking.load_model(str(tmp_path / "models/churn_model")).contract.run_id == registered.run_id


FIT_AND_PREDICT = r"""
import json, sys
import numpy as np
from churnlens.bgnbd import fit_bgnbd
from test_bgnbd import simulate_bgnbd

x, t_x, t = simulate_bgnbd(4000, r=0.8, alpha=6.0, a=0.6, b=2.5, weeks=60.0, seed=5)[:3]
model = fit_bgnbd(x, t_x, t)
print(json.dumps({"params": [model.r, model.alpha, model.a, model.b],
                  "alive": model.probability_alive(x, t_x, t).tolist(),
                  "no_purchase": model.probability_no_purchase(13.0, x, t_x, t).tolist(),
                  "expected": model.expected_purchases(13.0, x, t_x, t).tolist()}))
"""


def test_bgnbd_fit_and_predictions_are_the_same_bytes_with_another_cpus_kernels() -> None:
    def run(extra: dict[str, str]) -> dict:
        environment = {**os.environ, **extra, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                              os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", FIT_AND_PREDICT], env=environment, check=True,
                              capture_output=True, text=True)
        return json.loads(done.stdout)

    here, other = run({}), run(OTHER_VECTOR_UNIT)
    assert here == other
    assert all(float(f"{value:.5e}") == value for value in here["params"])  # 6 significant digits
