"""What every backbone declares about its inputs and outputs, and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass, field

from datamodules.errors import UserError
from datamodules.units import Unit


class BackboneError(UserError):
    """Bad backbone request (unknown name/size, bad band mapping)."""


class WeightsError(BackboneError):
    """A weights file is missing, unreadable or does not match the model."""


@dataclass(frozen=True)
class BackboneSpec:
    """The contract between a backbone and everything around it.

    ``bands``/``mean``/``std`` describe the input the model expects, in channel order:
    normalisation ``(x - mean) / std`` is applied by the model wrapper, never by the caller.
    ``stats_unit`` is the unit ``mean``/``std`` are in when they are a backbone's published
    statistics (Prithvi: HLS surface reflectance x 10000); fitting the backbone to a dataset
    (:func:`trainer.backbones.adapt.backbone_for_dataset`) folds them onto the dataset's stored
    values, after which ``stats_unit`` is None (statistics on the input as stored) and
    ``normalization`` says what was done.
    ``out_channels``/``out_strides`` describe the feature maps ``forward`` returns, one per
    entry of ``out_indices``.
    """

    name: str
    family: str  # clay | prithvi | resnet
    size: str
    bands: tuple[str, ...]
    wavelengths: tuple[float, ...]  # µm, same order as bands
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    embed_dim: int
    out_channels: tuple[int, ...]
    out_strides: tuple[int, ...]
    num_frames: int = 1
    any_bands: bool = (
        False  # True when any band subset works (Clay: wavelength-generated embedding)
    )
    gsd: float | None = None  # the GSD the model was pretrained at, when it matters
    weights: str = "random"  # the file the weights came from, or "random"
    stats_unit: Unit | None = None  # None: mean/std apply to the input values as they come
    stats_source: str = "given"  # where mean/std come from
    normalization: dict = field(default_factory=dict, compare=False)  # see backbones.adapt
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "size": self.size,
            "bands": list(self.bands),
            "wavelengths": list(self.wavelengths),
            "mean": list(self.mean),
            "std": list(self.std),
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "out_channels": list(self.out_channels),
            "out_strides": list(self.out_strides),
            "num_frames": self.num_frames,
            "any_bands": self.any_bands,
            "gsd": self.gsd,
            "weights": self.weights,
            "stats_unit": self.stats_unit.to_dict() if self.stats_unit else None,
            "stats_source": self.stats_source,
            "normalization": self.normalization,
            "extra": {
                k: v
                for k, v in self.extra.items()
                if isinstance(v, (str, int, float, bool, list, type(None)))
            },
        }


def check_state_dict(model_keys: dict, ckpt: dict, source: str) -> None:
    """Strict key-and-shape comparison with an error that lists every difference."""
    missing = sorted(set(model_keys) - set(ckpt))
    unexpected = sorted(set(ckpt) - set(model_keys))
    wrong = sorted(
        f"{k}: checkpoint {tuple(ckpt[k].shape)} vs model {tuple(model_keys[k].shape)}"
        for k in set(model_keys) & set(ckpt)
        if tuple(ckpt[k].shape) != tuple(model_keys[k].shape)
    )
    if missing or unexpected or wrong:
        parts = [f"{source} does not match the model:"]
        if missing:
            parts.append(
                f"  missing keys ({len(missing)}): {', '.join(missing[:20])}"
                + (" ..." if len(missing) > 20 else "")
            )
        if unexpected:
            parts.append(
                f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                + (" ..." if len(unexpected) > 20 else "")
            )
        if wrong:
            parts.append(f"  wrong shapes ({len(wrong)}): {'; '.join(wrong[:20])}")
        parts.append(
            "Check that the file is the official checkpoint for this backbone name and size."
        )
        raise WeightsError("\n".join(parts))
