import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh GEOTUNE_HOME (datasets, weights, SQLite MLflow store) per test."""
    h = tmp_path / "geotune-home"
    monkeypatch.setenv("GEOTUNE_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GEOTUNE_WEIGHTS_DIR", raising=False)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{h / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{h / 'mlflow.db'}")
    return h


@pytest.fixture
def scene(tmp_path):
    from synth import make_labels, make_scene

    path, cmap = make_scene(tmp_path, size=128, seed=0)
    labels = make_labels(tmp_path, path, cmap)
    return {"image": path, "labels": labels, "cmap": cmap, "dir": tmp_path}


def env_with_home(home: Path) -> dict:
    env = dict(os.environ)
    env["GEOTUNE_HOME"] = str(home)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env
