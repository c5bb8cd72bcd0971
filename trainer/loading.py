"""Loading a registered model for prediction: straight from geotune's local store where it can.

A registered version's folder holds ``artifacts/model.json`` (the record) and
``artifacts/weights.pt`` (:mod:`trainer.registry`). When the tracking store is geotune's local
SQLite file, ``NAME@ALIAS`` and ``NAME`` + version are resolved by reading the registry's own
rows (read-only, at every load: an alias that moved resolves to its new version) and the
folder is loaded directly, without importing MLflow (about a second of start-up, more with
its pyfunc loader). Everything else goes through MLflow: ``runs:/`` and ``models:/m-<id>``
URIs, a tracking server, MLflow workspaces, a version whose files are not in a local folder,
and a store whose tables are not in the layout read here. Either way the same files are
loaded into the same network.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .record import ModelRecord, ModelRefError

LIST_HINT = "List models with `geotune models list`."


@dataclass
class LoadedModel:
    """A registered model ready to predict: its record, its network (eval mode), the URI it
    was asked by and the version that URI resolved to (``models:/NAME/VERSION``)."""

    record: ModelRecord
    net: object
    uri: str | None = None
    resolved: str | None = None


def model_uri(ref: str, version: int | str | None = None, alias: str | None = None) -> str:
    """``NAME@ALIAS``, ``NAME`` + version/alias, ``models:/...`` or ``runs:/...`` → a model URI."""
    if ref.startswith(("models:/", "runs:/")):
        return ref
    if "@" in ref:
        if version is not None:
            raise ModelRefError("give either NAME@ALIAS or --version, not both")
        return f"models:/{ref}"
    if version is not None:
        return f"models:/{ref}/{version}"
    if alias:
        return f"models:/{ref}@{alias}"
    raise ModelRefError(which_version(ref))


def which_version(name: str) -> str:
    """What to say when a model is named without a version or alias: its versions and aliases
    as the local store has them (each hint one that resolves), else the general forms."""
    db = _local_db()
    found = None
    if db is not None:
        try:
            with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
                found = _versions_and_aliases(con, name)
        except sqlite3.Error:
            found = None
    if isinstance(found, str):
        return found  # no such model: what there is
    if not found or not found[0]:
        return f"say which version of {name!r}: {name}@ALIAS or --version N. {LIST_HINT}"
    versions, aliases = found
    last = versions[-1]
    said = f"say which version of {name!r} (versions: {', '.join(map(str, versions))}): "
    if aliases:
        shown = ", ".join(f"{name}@{a} (version {v})" for a, v in aliases)
        return said + f"{shown}, or --version {last}"
    return (
        said + f"--version {last}; or name one with an alias, `geotune models alias {name} "
        f"champion {last}`, and predict with {name}@champion"
    )


_LIVE = "name = ? AND current_stage != 'Deleted_Internal' AND workspace = 'default'"


def _versions_and_aliases(con, name: str):
    """(versions, [(alias, version)]) of a registered model; for a name not registered, the
    message that says so and lists the names there are."""
    ws = "AND workspace = 'default'"
    if not con.execute(f"SELECT 1 FROM registered_models WHERE name = ? {ws}", (name,)).fetchone():
        from .models import not_found_message

        known = [r[0] for r in con.execute(f"SELECT name FROM registered_models WHERE 1 {ws}")]
        return not_found_message(name, sorted(known), LIST_HINT)
    versions = sorted(
        int(r[0]) for r in con.execute(f"SELECT version FROM model_versions WHERE {_LIVE}", (name,))
    )
    aliases = sorted(
        con.execute(
            f"SELECT alias, version FROM registered_model_aliases WHERE name = ? {ws}", (name,)
        ).fetchall()
    )
    return versions, aliases


def load_parts(record_path: Path, weights_path: Path) -> tuple[ModelRecord, object]:
    """The record and the network (weights loaded, eval mode) from a version's two files."""
    import torch

    record = ModelRecord.from_dict(json.loads(Path(record_path).read_text()))
    net = net_from_record(record)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return record, net.eval()


def net_from_record(record: ModelRecord):
    """The network a model record describes, with random weights (load the state next):
    ``segmentation`` → logits ``[B, K, H, W]``, ``change`` → input ``[B, C, 2, H, W]``, logits
    ``[B, K, H, W]``, ``classification`` → logits ``[B, K]`` (:func:`trainer.heads.build_net`)."""
    from .backbones import build_backbone
    from .heads import build_net

    backbone = build_backbone(record.backbone["name"], "random", **record.backbone["kwargs"])
    return build_net(record.task, backbone, record.num_classes, record.resolution[0], record.net)


def load_model(ref: str, version=None, alias=None) -> LoadedModel:
    """Load a registered model (``NAME@ALIAS``, ``NAME`` + ``version``/``alias``, or a
    ``models:/``/``runs:/`` URI): from the local store's folder, else through MLflow."""
    uri = model_uri(ref, version, alias)
    found = resolve_local(uri)
    if found is None:
        from .registry import load_with_mlflow

        return load_with_mlflow(uri)
    folder, resolved = found
    record, net = load_parts(folder / "model.json", folder / "weights.pt")
    return LoadedModel(record, net, uri, resolved)


def resolve_local(uri: str) -> tuple[Path, str] | None:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → (the version's local artifacts
    folder, ``models:/NAME/VERSION``), read from the local SQLite store; None where MLflow must
    resolve it (see the module's docstring). Unknown names, aliases and versions raise
    :class:`ModelRefError` saying what exists."""
    db = _local_db()
    if db is None or not uri.startswith("models:/") or uri.startswith("models:/m-"):
        return None
    name, sep, alias = uri[len("models:/") :].partition("@")
    version = None
    if not sep:
        name, _, version = name.rpartition("/")
        if not name or not version.isdigit():
            return None
    try:
        with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
            return _resolve(con, name, alias if sep else None, version)
    except sqlite3.Error:  # a store in another layout (or none yet): MLflow knows
        return None


def _resolve(con, name: str, alias: str | None, version: str | None):
    found = _versions_and_aliases(con, name)
    if isinstance(found, str):
        raise ModelRefError(found)
    versions, aliases = found
    if alias is not None:
        hit = dict(aliases).get(alias)
        if hit is None:
            shown = ", ".join(f"{a} → {v}" for a, v in aliases) or "none"
            last = versions[-1] if versions else "N"
            raise ModelRefError(
                f"model {name!r} has no alias {alias!r} (its aliases: {shown}; versions: "
                f"{', '.join(map(str, versions)) or 'none'}). Point it at a version with "
                f"`geotune models alias {name} {alias} {last}`, or predict with --version N."
            )
        version = str(hit)
    if int(version) not in versions:
        raise ModelRefError(
            f"model {name!r} has no version {version}; its versions: "
            f"{', '.join(map(str, versions)) or 'none'}. {LIST_HINT}"
        )
    row = con.execute(
        f"SELECT storage_location, status FROM model_versions WHERE {_LIVE} AND version = ?",
        (name, int(version)),
    ).fetchone()
    folder = _local_folder(row[0]) if row and row[1] == "READY" else None
    if folder is None:
        return None
    return folder, f"models:/{name}/{version}"


def _local_folder(location: str | None) -> Path | None:
    """The ``artifacts`` folder of a version stored on this machine, or None."""
    if not location:
        return None
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    folder = Path(unquote(parsed.path)) / "artifacts"
    have = all((folder / f).is_file() for f in ("model.json", "weights.pt"))
    return folder if have else None


def _local_db() -> Path | None:
    """geotune's SQLite store file, when it is the tracking store and exists; else None."""
    from datamodules.paths import tracking_uri

    uri = tracking_uri()
    if not uri.startswith("sqlite:///") or os.environ.get(
        "MLFLOW_ENABLE_WORKSPACES", ""
    ).lower() in (
        "1",
        "true",
    ):
        return None
    path = Path(uri[len("sqlite:///") :])
    return path if path.is_file() else None


__all__ = [
    "LoadedModel",
    "load_model",
    "load_parts",
    "model_uri",
    "net_from_record",
    "resolve_local",
]
