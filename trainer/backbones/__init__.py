"""Backbones by name: the table (:mod:`.variants`), weights files, building.

``build_backbone(name, checkpoint=None, **overrides)`` returns an ``nn.Module`` with a ``.spec``
(:class:`BackboneSpec`) and ``forward(x, **metadata) -> list[Tensor]``.

``checkpoint``: a path to the official weights file, the explicit opt-in ``"random"``, or
``None`` (look for the official file name in the weights directory; error if absent).
Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from datamodules.paths import weights_dir

from .base import BackboneError, BackboneSpec, WeightsError, check_state_dict
from .variants import BACKBONES, BackboneEntry, get_entry


def family_module(name: str):
    return importlib.import_module(f"trainer.backbones.{get_entry(name).family}")


def sizes(name: str) -> list[str]:
    return list(get_entry(name).sizes)


def resolve_weights(name: str, checkpoint: str | Path | None) -> Path | None:
    """``None`` means random weights (explicit opt-in); a path means an existing official file."""
    if checkpoint is not None and str(checkpoint) == "random":
        return None
    entry = get_entry(name)
    if checkpoint is None or str(checkpoint) in ("", "pretrained"):
        path = weights_dir() / entry.weights_file
        if not path.is_file():
            raise WeightsError(
                f"backbone {name!r} needs its pretrained weights file {entry.weights_file!r}, "
                f"which is not in the weights directory {weights_dir()}. Put the official file "
                f"there (or set GEOTUNE_WEIGHTS_DIR), pass backbone.weights=/path/to/{entry.weights_file}, "
                "or opt in to random initialisation with backbone.weights=random."
            )
        return path
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist (backbone {name!r} expects {entry.weights_file!r})."
        )
    return path


def build_backbone(name: str, checkpoint: str | Path | None = None, **overrides):
    """Build backbone ``name``; ``overrides`` may set ``size`` and family-specific options."""
    weights = resolve_weights(name, checkpoint)
    return family_module(name).build(name, weights=weights, **overrides)


def weights_status() -> list[dict]:
    """One row per backbone: sizes and whether its official file is in the weights directory."""
    rows = []
    for name, entry in BACKBONES.items():
        path = weights_dir() / entry.weights_file
        rows.append(
            {
                "name": name,
                "family": entry.family,
                "default_size": entry.default_size,
                "sizes": sizes(name),
                "weights_file": entry.weights_file,
                "present": path.is_file(),
                "description": entry.description,
            }
        )
    return rows


__all__ = [
    "BACKBONES",
    "BackboneEntry",
    "BackboneError",
    "BackboneSpec",
    "WeightsError",
    "build_backbone",
    "get_entry",
    "check_state_dict",
    "resolve_weights",
    "sizes",
    "weights_status",
]
