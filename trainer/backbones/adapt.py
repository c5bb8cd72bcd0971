"""Fit a backbone to a dataset: build arguments, band selection, units, opt-in new channels.

- Random weights learn the dataset's own bands with the dataset's statistics (unless
  ``normalization=pretrained``).
- Pretrained weights keep their bands and statistics, and the statistics' unit: the dataset's
  stored values are converted (stored → physical by the sensor table's or the file's
  scale/offset → the statistics' unit) and that conversion is folded exactly into one z-score
  per band on the stored values (:func:`fit_statistics`). A dataset whose values cannot be
  converted (no sensor named, or another quantity: 8-bit RGB into Prithvi) is refused, unless
  ``normalization=dataset`` asks for the dataset's own statistics. Clay takes any band subset through
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

from datamodules.sensors import stored_units
from datamodules.units import Unit, UnitError, conversion_note, fold

from . import build_backbone, family_module, get_entry
from .base import BackboneError

CONFIG_ONLY = ("name", "weights", "normalization", "finetune", "last_n", "new_bands")


def backbone_arguments(b: dict, ds, patch_size: int) -> dict:
    """Keyword arguments for ``build_backbone`` from the backbone config and the dataset."""
    entry = get_entry(b["name"])
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
    elif entry.any_bands:  # statistics per sensor, for the bands it publishes them for
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
    if not entry.convolutional:  # position tables built for the training patch
        kwargs.setdefault("img_size", patch_size)
    if entry.frames and len(ds.images) > 1:
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
    if fit_statistics(model, ds):
        kwargs |= {
            "bands": list(model.spec.bands),
            "mean": list(model.spec.mean),
            "std": list(model.spec.std),
        }
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
        units = dataset_units(ds, list(model.spec.bands))
        model.spec.normalization["input_units"] = [u.to_dict() for u in units] if units else None
    return model, kwargs


def dataset_units(ds, bands: list[str]):
    """The units of the dataset's stored values for ``bands`` (None: the dataset names no
    sensor); a scale/offset the source file declared takes precedence over the sensor's."""
    if ds.manifest.get("value_units"):  # reflectance as floats (datamodules.ingest_manifest)
        return [Unit.from_dict(ds.manifest["value_units"][ds.bands.index(b)]) for b in bands]
    scales, offsets = ds.manifest.get("scales"), ds.manifest.get("offsets")
    if scales and offsets:
        idx = [ds.bands.index(b) for b in bands]
        scales, offsets = [scales[i] for i in idx], [offsets[i] for i in idx]
    return stored_units(ds.manifest.get("sensor"), bands, scales, offsets)


def fit_statistics(model: nn.Module, ds) -> bool:
    """Put the backbone's statistics on the dataset's stored values; record what was done in
    ``spec.normalization``. Returns whether the statistics changed (folded)."""
    spec = model.spec
    if any(b not in ds.bands for b in spec.bands):
        return False  # the band mapping refuses this dataset, naming the missing bands
    sensor = ds.manifest.get("sensor")
    units = dataset_units(ds, list(spec.bands))
    record = {
        "statistics": "published" if spec.stats_unit is not None else "dataset",
        "source": spec.stats_source,
        "sensor": sensor,
        "input_units": [u.to_dict() for u in units] if units else None,
    }
    if spec.stats_unit is None:
        if spec.stats_source == "given":
            record["source"] = f"dataset {ds.id}: per-band mean/std of its stored values"
        model.spec = replace(spec, normalization=record | {"conversion": "none"})
        return False
    unit = spec.stats_unit
    about = f"{spec.name}'s statistics ({spec.stats_source}) are in {unit.describe()}"
    if units is None:
        raise UnitError(
            f"{about}, but dataset {ds.id!r} names no sensor, so what its values measure is "
            "unknown. Add the dataset again with --sensor ID (e.g. --sensor landsat-c2-l2), or "
            "normalise with the dataset's own statistics: backbone.normalization=dataset."
        )
    try:
        mean, std = fold(list(spec.mean), list(spec.std), [unit] * len(units), units)
    except UnitError:
        bad = sorted({u.describe() for u in units if u.quantity != unit.quantity})
        raise UnitError(
            f"{about}; dataset {ds.id!r} holds {sensor} values ({'; '.join(bad)}), which cannot "
            f"be converted to that unit. Use a backbone pre-trained on such imagery, or "
            "backbone.normalization=dataset to normalise with the dataset's own statistics."
        ) from None
    notes = sorted({n for u in units if (n := conversion_note(u, unit))})
    for note in notes:
        warnings.warn(f"{spec.name} on {sensor}: {note}.", stacklevel=3)
    record |= {
        "unit": unit.to_dict(),
        "published_mean": list(spec.mean),
        "published_std": list(spec.std),
        "conversion": "exact: stored → physical → the statistics' unit, folded into one "
        "z-score per band on the stored values",
        "notes": notes,
    }
    model.spec = replace(
        spec, mean=tuple(mean), std=tuple(std), stats_unit=None, normalization=record
    )
    return True


def describe_normalization(norm: dict) -> str:
    """One line saying what the model does to its input values before the encoder."""
    if not norm:
        return "normalisation: the backbone's statistics, applied to the input as it comes"
    if norm["statistics"] == "dataset":
        return f"normalisation: {norm['source']} (no unit conversion)"
    unit = Unit.from_dict(norm["unit"]).describe()
    return (
        f"normalisation: {norm['source']}, in {unit}; {norm['sensor']} stored values are "
        "converted to that unit exactly, folded into one z-score per band"
    )


def normalization_params(norm: dict, mean, std) -> dict[str, str]:
    """The run parameters that say what the normalisation did (``normalization.*``)."""
    out = {
        "normalization.statistics": norm.get("statistics", "given"),
        "normalization.source": norm.get("source", "given"),
        "normalization.input_sensor": str(norm.get("sensor")),
        "normalization.conversion": norm.get("conversion", "none"),
        "normalization.mean": ",".join(f"{v:.6g}" for v in mean),
        "normalization.std": ",".join(f"{v:.6g}" for v in std),
    }
    if norm.get("unit"):
        out["normalization.unit"] = Unit.from_dict(norm["unit"]).describe()
    if norm.get("notes"):
        out["normalization.notes"] = "; ".join(norm["notes"])
    return {k: v[:500] for k, v in out.items()}
