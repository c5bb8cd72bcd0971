"""Where geotune keeps things: one home folder, overridable by environment variables.

``GEOTUNE_HOME`` (default ``~/.geotune``) holds ``datasets/``, ``weights/``, ``mlflow.db``,
``mlartifacts/``, ``runs/`` (Hydra run folders) and ``serve/`` (jobs, outputs, keys).
``GEOTUNE_WEIGHTS_DIR`` and ``MLFLOW_TRACKING_URI`` override their parts.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("GEOTUNE_HOME", "~/.geotune")).expanduser().resolve()


def datasets_dir() -> Path:
    return home() / "datasets"


def weights_dir() -> Path:
    env = os.environ.get("GEOTUNE_WEIGHTS_DIR")
    return Path(env).expanduser().resolve() if env else home() / "weights"


def tracking_uri() -> str:
    """MLflow tracking URI: ``MLFLOW_TRACKING_URI`` or a SQLite file in the geotune home."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{home() / 'mlflow.db'}"


def artifacts_dir() -> Path:
    return home() / "mlartifacts"
