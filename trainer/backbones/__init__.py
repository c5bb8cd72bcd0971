"""Backbone registry: one plain dict, names → where the family lives and its official file.

``build_backbone(name, checkpoint=None, **overrides)`` returns an ``nn.Module`` with a ``.spec``
(:class:`BackboneSpec`) and ``forward(x, **metadata) -> list[Tensor]``.

``checkpoint``: a path to the official weights file, the explicit opt-in ``"random"``, or
``None`` (look for the official file name in the weights directory; error if absent).
Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from datamodules.paths import weights_dir

from .base import BackboneError, BackboneSpec, WeightsError, check_state_dict


@dataclass(frozen=True)
class BackboneEntry:
    family: str  # module in trainer.backbones
    default_size: str  # the official size
    weights_file: str  # the official file name looked for in the weights directory
    description: str


BACKBONES: dict[str, BackboneEntry] = {
    "clay_v1_base": BackboneEntry(
        "clay", "base", "clay-v1-base.ckpt", "Clay v1 ViT-B/8 (Apache-2.0)"
    ),
    "clay_v1_5": BackboneEntry("clay", "large", "clay-v1.5.ckpt", "Clay v1.5 ViT-L/8 (Apache-2.0)"),
    "prithvi_eo_v1_100": BackboneEntry(
        "prithvi", "100m", "Prithvi_EO_V1_100M.pt", "Prithvi-EO 1.0 100M ViT-B/16, 6 HLS bands"
    ),
    "prithvi_eo_v2_300": BackboneEntry(
        "prithvi", "300m", "Prithvi_EO_V2_300M.pt", "Prithvi-EO 2.0 300M ViT-L/16"
    ),
    "prithvi_eo_v2_300_tl": BackboneEntry(
        "prithvi",
        "300m",
        "Prithvi_EO_V2_300M_TL.pt",
        "Prithvi-EO 2.0 300M-TL (temporal + location)",
    ),
    "prithvi_eo_v2_600": BackboneEntry(
        "prithvi", "600m", "Prithvi_EO_V2_600M.pt", "Prithvi-EO 2.0 600M ViT-H/14"
    ),
    "prithvi_eo_v2_600_tl": BackboneEntry(
        "prithvi",
        "600m",
        "Prithvi_EO_V2_600M_TL.pt",
        "Prithvi-EO 2.0 600M-TL (temporal + location)",
    ),
    "resnet18": BackboneEntry(
        "resnet",
        "18",
        "resnet18_sentinel2_all_moco-59bfdff9.pth",
        "ResNet-18 (timm), TorchGeo SSL4EO-S12 weights",
    ),
    "resnet50": BackboneEntry(
        "resnet",
        "50",
        "resnet50_sentinel2_all_moco-df8b932e.pth",
        "ResNet-50 (timm), TorchGeo SSL4EO-S12 weights",
    ),
}


def get_entry(name: str) -> BackboneEntry:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(
            f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}"
        ) from None


def family_module(name: str):
    return importlib.import_module(f"trainer.backbones.{get_entry(name).family}")


def sizes(name: str) -> list[str]:
    return list(family_module(name).sizes(name))


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
    "check_state_dict",
    "resolve_weights",
    "sizes",
    "weights_status",
]
