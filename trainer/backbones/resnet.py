"""ResNet baselines (timm's layout, built without timm), optionally from TorchGeo's SSL4EO-S12 Sentinel-2 weight files.

The TorchGeo files are timm ResNet state dicts (``conv1``, ``bn1``, ``layer1..4``, maybe ``fc``);
they load strictly into ``timm.create_model(..., features_only=True)`` once ``fc.*`` is dropped.
With ``weights=random`` the input bands are the dataset's (``bands=`` override) and the
normalisation is the dataset's statistics (``mean=``/``std=`` overrides). The SSL4EO-S12 files'
statistics are on Sentinel-2 L1C stored values (top-of-atmosphere reflectance x 10000).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from datamodules.sensors import get_sensor, wavelengths

from .base import BackboneError, BackboneSpec, check_state_dict
from .resnet_net import ResNetTrunk
from .variants import ResNetSize, family_entry

_S2_ALL = (
    "coastal",
    "blue",
    "green",
    "red",
    "rededge071",
    "rededge075",
    "rededge078",
    "nir",
    "nir08",
    "nir09",
    "cirrus",
    "swir16",
    "swir22",
)
_S2_RGB = ("red", "green", "blue")

# TorchGeo weight files by name: their input bands (sensor-table names) and normalisation.
# SSL4EO-S12 MoCo weights take Sentinel-2 L1C values divided by 10000.
KNOWN_FILES = {
    "resnet18_sentinel2_all_moco-59bfdff9.pth": ("sentinel-2-l1c", _S2_ALL, 0.0, 10000.0),
    "resnet18_sentinel2_rgb_moco-e3a335e3.pth": ("sentinel-2-l1c", _S2_RGB, 0.0, 10000.0),
    "resnet50_sentinel2_all_moco-df8b932e.pth": ("sentinel-2-l1c", _S2_ALL, 0.0, 10000.0),
    "resnet50_sentinel2_rgb_moco-2b57ba8b.pth": ("sentinel-2-l1c", _S2_RGB, 0.0, 10000.0),
}
DROP_KEYS = ("fc.weight", "fc.bias")


class ResNetBackbone(nn.Module):
    """ResNet (timm's layout, :mod:`.resnet_net`) returning the feature maps at strides 2, 4, 8,
    16, 32 (``out_indices``)."""

    def __init__(self, cfg: ResNetSize, in_chans: int, out_indices: tuple[int, ...]):
        super().__init__()
        self.model = ResNetTrunk(cfg.block, cfg.layers, in_chans, out_indices)
        self.out_indices = out_indices

    def forward(self, x: torch.Tensor, **metadata) -> list[torch.Tensor]:
        return list(self.model(x))

    def block_groups(self) -> list[nn.Module]:
        """Trainable groups from input to output (for last-N fine-tuning)."""
        m = self.model
        return [nn.ModuleList([m.conv1, m.bn1]), m.layer1, m.layer2, m.layer3, m.layer4]


def build(
    name: str,
    *,
    weights: Path | None,
    size: str | None = None,
    bands: list[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    sensor: str | None = None,
    out_indices: tuple[int, ...] | list[int] = (0, 1, 2, 3, 4),
    **unused,
) -> ResNetBackbone:
    entry = family_entry(name, "resnet")
    size = size or entry.default_size
    if size not in entry.sizes:
        raise BackboneError(f"{name} has sizes {', '.join(entry.sizes)}, not {size!r}")
    out_indices = tuple(out_indices)
    if weights is not None:
        if weights.name not in KNOWN_FILES:
            raise BackboneError(
                f"{weights.name} is not a known TorchGeo weight file for {name}; known: "
                + ", ".join(k for k in KNOWN_FILES if k.startswith(name))
            )
        w_sensor, w_bands, w_mean, w_std = KNOWN_FILES[weights.name]
        if not weights.name.startswith(name):
            raise BackboneError(f"{weights.name} holds weights for another network than {name}")
        band_names = list(w_bands)
        mean = [w_mean] * len(band_names)
        std = [w_std] * len(band_names)
        sensor = w_sensor
        stats_unit = get_sensor(w_sensor).unit(band_names[0])
        stats_source = f"{weights.name}: {w_sensor} stored values / {w_std:g}"
    else:
        stats_unit, stats_source = None, "given"
        if not bands:
            sensor = sensor or "sentinel-2-l1c"
            bands = get_sensor(sensor).band_names
        band_names = list(bands)
        if mean is None or std is None:
            s = get_sensor(sensor or "sentinel-2-l1c")
            mean = [s.band(b).mean for b in band_names]
            std = [s.band(b).std for b in band_names]
            stats_source = f"{s.id} default statistics of stored values"
    model = ResNetBackbone(entry.sizes[size], len(band_names), out_indices)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        state = {k: v for k, v in state.items() if k not in DROP_KEYS}
        check_state_dict(model.model.state_dict(), state, str(weights))
        model.model.load_state_dict(state, strict=True)
    info = model.model
    model.spec = BackboneSpec(
        name=name,
        family="resnet",
        size=size,
        bands=tuple(band_names),
        wavelengths=tuple(_safe_wavelengths(band_names, sensor)),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        patch_size=32,
        embed_dim=info.channels()[-1],
        out_channels=tuple(info.channels()),
        out_strides=tuple(info.reduction()),
        weights=str(weights) if weights else "random",
        stats_unit=stats_unit,
        stats_source=stats_source,
    )
    return model


def input_conv(model: ResNetBackbone) -> tuple[nn.Module, str]:
    """Where the first convolution lives (for adding input bands)."""
    return model.model, "conv1"


def _safe_wavelengths(band_names: list[str], sensor: str | None) -> list[float]:
    try:
        return wavelengths(band_names, sensor)
    except (KeyError, ValueError):
        return [0.0] * len(band_names)
