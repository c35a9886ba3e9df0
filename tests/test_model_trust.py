"""Models from outside: nothing a model file carries runs at load time, and a model folder's claim
to be a registered version is checked against the registry. Real MLflow sqlite store throughout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from churnlens import tracking
from churnlens.redaction import redact
from churnlens.tracking import UntrustedModelError, load_model


def small_pipeline(seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"recency": rng.normal(size=80), "frequency": rng.normal(size=80)})
    labels = (frame["recency"] + rng.normal(scale=0.5, size=80) > 0).astype(int)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, labels), frame


def train_version(root: Path, seed: int = 0) -> tracking.RegisteredModel:
    pipeline, frame = small_pipeline(seed)
    (root / "features.json").write_text("{}")
    return tracking.log_training_run(
        experiment="trust", model_name="churnlens", params={"seed": seed}, metrics={"m": 1.0}, tags={},
        pipeline=pipeline, example=frame.head(5), metadata={"numeric_features": ["recency", "frequency"]},
        artifacts={"features": root / "features.json"}, model_dir=root / "models/churn_model")


class Payload:
    """What an attacker pickles: unpickling calls the function __reduce__ names."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran at load time"))


def as_cloudpickle_folder(source: Path, target: Path, marker: Path) -> Path:
    """A copy of a genuine model folder whose model file is a cloudpickle carrying a payload."""
    import cloudpickle

    shutil.copytree(source, target)
    (target / "model.pkl").write_bytes(cloudpickle.dumps(Payload(marker)))
    mlmodel = yaml.safe_load((target / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"].update({"serialization_format": "cloudpickle", "pickled_model": "model.pkl"})
    mlmodel.pop("metadata", None)  # no claim to a registered version: only the format stands in the way
    (target / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return target


def test_genuine_folder_and_registry_version_load(tracking_store: str, tmp_path: Path) -> None:
    registered = train_version(tmp_path)
    local = load_model(str(tmp_path / "models/churn_model"))
    remote = load_model("models:/churnlens@challenger")
    assert (local.name, local.version) == (remote.name, remote.version) == ("churnlens", registered.version)
    version = MlflowClient().get_model_version("churnlens", registered.version)
    assert version.tags[tracking.MODEL_DIGEST_TAG] == tracking.model_digest(tmp_path / "models/churn_model")
    frame = small_pipeline()[1]
    assert np.allclose(local.pipeline.predict_proba(frame), remote.pipeline.predict_proba(frame))
    assert oct((tmp_path / "models/churn_model/MLmodel").stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cloudpickle_folder_is_refused_before_anything_runs(tracking_store: str, tmp_path: Path) -> None:
    train_version(tmp_path)
    marker = tmp_path / "pwned.txt"
    evil = as_cloudpickle_folder(tmp_path / "models/churn_model", tmp_path / "elsewhere/model", marker)
    with pytest.raises(UntrustedModelError, match=r"serialized with cloudpickle, which runs any code.*only skops"):
        load_model(str(evil))
    assert not marker.exists()
    claimed = tmp_path / "elsewhere/claimed"
    shutil.copytree(evil, claimed)
    genuine = yaml.safe_load((tmp_path / "models/churn_model/MLmodel").read_text())
    mlmodel = yaml.safe_load((claimed / "MLmodel").read_text())
    (claimed / "MLmodel").write_text(yaml.safe_dump({**mlmodel, "metadata": genuine["metadata"]}))
    with pytest.raises(UntrustedModelError, match=r"claims to be churnlens v1, but the registry records"):
        load_model(str(claimed))
    assert not marker.exists()


def test_cloudpickle_registry_version_is_refused(tracking_store: str, tmp_path: Path) -> None:
    import mlflow

    marker = tmp_path / "pwned.txt"
    tracking.configure()
    mlflow.set_experiment("hostile")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(Payload(marker), name="model", serialization_format="cloudpickle")
    version = mlflow.register_model(info.model_uri, "churnlens")
    MlflowClient().set_registered_model_alias("churnlens", "champion", version.version)
    marker.unlink(missing_ok=True)  # MLflow itself loads the model once while logging it
    with pytest.raises(UntrustedModelError, match=r"models:/churnlens/1.*serialized with cloudpickle"):
        load_model("models:/churnlens@champion")
    assert not marker.exists()


def test_skops_model_with_a_dangerous_type_is_refused(tracking_store: str, tmp_path: Path) -> None:
    import mlflow.sklearn
    from sklearn.preprocessing import FunctionTransformer

    # The model declares its own trust in os.system; MLflow would honour that declaration.
    mlflow.sklearn.save_model(FunctionTransformer(os.system), tmp_path / "evil", serialization_format="skops",
                              skops_trusted_types=["posix.system"])
    with pytest.raises(UntrustedModelError, match=r"holds types churnlens does not trust: \['posix\.system'\]"):
        load_model(str(tmp_path / "evil"))


def test_folder_claiming_a_version_it_is_not_is_refused(tracking_store: str, tmp_path: Path) -> None:
    genuine = train_version(tmp_path)
    other, frame = small_pipeline(seed=1)
    claim = {"registered_model_name": "churnlens", "registered_version": genuine.version}
    tracking.save_model_dir(other, frame.head(5), claim, tmp_path / "outside/impostor")
    with pytest.raises(UntrustedModelError, match=r"claims to be churnlens v1, but the registry records "
                                                  r"digest [0-9a-f]{64} for it and the folder holds digest"):
        load_model(str(tmp_path / "outside/impostor"))
    tracking.save_model_dir(other, frame.head(5), {**claim, "registered_version": "4"}, tmp_path / "outside/v4")
    with pytest.raises(UntrustedModelError, match=r"claims to be churnlens v4, which the registry .* does not know"):
        load_model(str(tmp_path / "outside/v4"))


def test_unregistered_folder_is_not_given_a_registered_name(tracking_store: str, tmp_path: Path) -> None:
    pipeline, frame = small_pipeline()
    tracking.save_model_dir(pipeline, frame.head(5), {}, tmp_path / "plain")
    loaded = load_model(str(tmp_path / "plain"))
    assert (loaded.name, loaded.version) == ("plain", "unregistered")


def test_killed_model_save_leaves_nothing_the_next_one_keeps(tracking_store: str, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "models" / f".churn_model.{dead.pid}.abc123"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "model.skops").write_bytes(b"half")
    train_version(tmp_path)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["churn_model"]


@pytest.mark.parametrize(("text", "secret"), [
    ("postgresql://bob:s3cr3t@db.example.com:5432/mlflow", "s3cr3t"),
    ("https://token123@mlflow.example.com", "token123"),
    ("http://mlflow.example.com/?token=abc987&x=1", "abc987"),
])
def test_credentials_are_redacted(text: str, secret: str) -> None:
    shown = redact(f"store {text} failed")
    assert secret not in shown and "***" in shown and "example.com" in shown
