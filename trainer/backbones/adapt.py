"""Fit a backbone to a dataset's bands: build arguments, band selection, opt-in new channels.

- Random weights learn the dataset's own bands with the dataset's statistics (unless
  ``normalization=pretrained``).
- Pretrained weights keep their bands and statistics. Clay takes any band subset through
  wavelengths: the dataset's bands that Clay publishes statistics for are used (others are
  dropped with a warning, or kept with the dataset's statistics by ``normalization=dataset``).
  Prithvi and ResNet need their bands by name (the data module maps them); extra dataset bands
  are dropped with a warning, or with ``new_bands=add`` appended as new input channels whose
  weights start at zero, so the pretrained channels and the pretrained behaviour are kept.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
from torch import nn

from . import build_backbone, family_module, get_entry
from .base import BackboneError

CONFIG_ONLY = ("name", "weights", "normalization", "finetune", "last_n", "new_bands")


def backbone_arguments(b: dict, ds, patch_size: int) -> dict:
    """Keyword arguments for ``build_backbone`` from the backbone config and the dataset."""
    family = get_entry(b["name"]).family
    kwargs = {k: v for k, v in b.items() if k not in CONFIG_ONLY and v is not None}
    random = str(b.get("weights")) == "random"
    norm = b.get("normalization") or "auto"
    if norm not in ("auto", "pretrained", "dataset"):
        raise BackboneError(
            f"backbone.normalization must be auto, pretrained or dataset, not {norm!r}"
        )
    sensor = ds.manifest.get("sensor")
    if sensor:
        kwargs["sensor"] = sensor
    stats = ds.manifest["stats"]
    if (random and norm != "pretrained") or norm == "dataset":
        kwargs["bands"] = ds.bands
        kwargs["mean"] = stats["mean"]
        kwargs["std"] = [max(s, 1e-6) for s in stats["std"]]
    elif family == "clay":
        published = family_module(b["name"]).published_bands(sensor)
        kept = [band for band in ds.bands if band in published]
        dropped = [band for band in ds.bands if band not in published]
        if not kept:
            raise BackboneError(
                f"Clay publishes statistics for none of the dataset's bands ({', '.join(ds.bands)}) "
                f"for sensor {sensor!r}; use backbone.normalization=dataset"
            )
        if dropped:
            warnings.warn(
                f"Clay has no published statistics for {', '.join(dropped)} ({sensor}); those bands are "
                "not used. backbone.normalization=dataset uses them with the dataset's statistics.",
                stacklevel=2,
            )
        kwargs["bands"] = kept
    elif random:
        kwargs["bands"] = ds.bands
    if family != "resnet":
        kwargs.setdefault("img_size", patch_size)
    if family == "prithvi" and len(ds.images) > 1:
        kwargs.setdefault("num_frames", len(ds.images))
    return kwargs


def add_input_bands(
    model: nn.Module, names: list[str], mean: list[float], std: list[float]
) -> nn.Module:
    """Append input channels for ``names`` to a pretrained backbone; new weights start at zero."""
    if not names:
        return model
    spec = model.spec
    if spec.any_bands:
        raise BackboneError(
            f"{spec.name} takes any bands through wavelengths; it needs no new input channels"
        )
    parent, attr = family_module(spec.name).input_conv(model)
    old = getattr(parent, attr)
    new = type(old)(
        old.in_channels + len(names),
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    setattr(parent, attr, new)
    from datamodules.sensors import wavelengths

    try:
        waves = wavelengths(names, None)
    except ValueError:
        waves = [0.0] * len(names)
    model.spec = replace(
        spec,
        bands=spec.bands + tuple(names),
        wavelengths=spec.wavelengths + tuple(waves),
        mean=spec.mean + tuple(float(v) for v in mean),
        std=spec.std + tuple(float(v) for v in std),
        extra={**spec.extra, "added_bands": list(names)},
    )
    return model


def backbone_for_dataset(b: dict, ds, patch_size: int) -> tuple[nn.Module, dict]:
    """The backbone for a dataset, and the arguments that rebuild its architecture later
    (``build_backbone(name, "random", **rebuild)`` + the trained state dict)."""
    kwargs = backbone_arguments(b, ds, patch_size)
    model = build_backbone(b["name"], b.get("weights"), **kwargs)
    mode = b.get("new_bands") or "drop"
    if mode not in ("drop", "add"):
        raise BackboneError(f"backbone.new_bands must be drop or add, not {mode!r}")
    extra = [band for band in ds.bands if band not in model.spec.bands]
    if extra and not model.spec.any_bands and mode == "add":
        idx = [ds.bands.index(band) for band in extra]
        stats = ds.manifest["stats"]
        add_input_bands(
            model, extra, [stats["mean"][i] for i in idx], [max(stats["std"][i], 1e-6) for i in idx]
        )
        kwargs |= {
            "bands": list(model.spec.bands),
            "mean": list(model.spec.mean),
            "std": list(model.spec.std),
        }
    return model, kwargs
