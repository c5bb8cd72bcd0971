"""Ownership: every dataset, job, model and prediction belongs to one owner.

- Datasets: the local user's are the CLI's (``$GEOTUNE_HOME/datasets``); a keyed owner's live
  in ``$GEOTUNE_HOME/serve/datasets/<owner>/``, so two owners may both have a dataset ``coast``.
- Registered models: MLflow names are global, so an owner's model ``coast`` is registered as
  ``<owner>.coast`` (``SEP`` is ``.``: MLflow refuses ``/`` and ``:`` in names, and
  ``models:/alice.coast@champion`` parses as name ``alice.coast``, alias ``champion``). The local
  user's models keep their plain names, so ``geotune serve --dev`` serves what
  ``geotune train ... register.name=coast`` registered. Every version carries an ``owner`` tag
  (from the dataset manifest) and the registered model gets one too; ownership is read from the
  tags, never from the name alone.
- Jobs and predictions: their records hold the owner.

Another owner's object is reported exactly like a missing one (404).
"""

from __future__ import annotations

import re
from pathlib import Path

from datamodules.paths import datasets_dir

from .keys import check_owner
from .settings import serve_dir

LOCAL = "local"
SEP = "."
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '-' or '_', starting with a letter or digit"


def datasets_root(owner: str) -> Path:
    check_owner(owner)
    return datasets_dir() if owner == LOCAL else serve_dir() / "datasets" / owner


def mlflow_name(owner: str, name: str) -> str:
    """The registered-model name in MLflow of ``owner``'s model ``name``."""
    return name if owner == LOCAL else f"{owner}{SEP}{name}"


def api_name(owner: str, registered: str) -> str:
    return registered if owner == LOCAL else registered.removeprefix(f"{owner}{SEP}")


def owner_of(client, registered_model) -> str:
    """The owner of an MLflow registered model: its ``owner`` tag, else its newest version's."""
    tag = (registered_model.tags or {}).get("owner")
    if tag:
        return tag
    versions = client.search_model_versions(f"name='{registered_model.name}'")
    if versions:
        newest = max(versions, key=lambda v: int(v.version))
        return (newest.tags or {}).get("owner", LOCAL)
    return LOCAL


def owns(client, owner: str, registered_model) -> bool:
    name = registered_model.name
    if owner != LOCAL and not name.startswith(f"{owner}{SEP}"):
        return False
    return owner_of(client, registered_model) == owner
