"""The backbone table: one row per variant, everything the code asks about a backbone.

A row names the family module that builds its ``nn.Module`` (``clay``, ``prithvi``, ``resnet``),
its official weights file and sizes, and its capabilities as fields, so no code asks which
family a backbone is. Adding a variant is one row here plus ``conf/backbone/<name>.yaml``
(whose ``size`` and ``finetune`` are the row's ``default_size`` and ``finetune``;
``tests/test_backbone_table.py`` checks both). Plain data: importing it imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import BackboneError


@dataclass(frozen=True)
class ResNetSize:
    block: str  # basic | bottleneck
    layers: tuple[int, int, int, int]


@dataclass(frozen=True)
class VitSize:  # Prithvi
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class ClaySize:
    embed_dim: int
    depth: int
    num_heads: int
    dim_head: int
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class BackboneEntry:
    """One backbone variant."""

    family: str  # module in trainer.backbones that builds the nn.Module
    weights_file: str  # the official file name looked for in the weights directory
    description: str
    sizes: dict  # size name -> the family's size row; the official size first, then "tiny"
    finetune: str  # recommended fine-tune mode: full | frozen
    convolutional: bool  # a CNN: any input size; prediction fits large chips to the scene
    decoder: str  # what decoder=auto builds: unet (CNN feature pyramid) | upernet (ViT)
    last_feature: int  # out_indices of the deepest feature map (what classification pools)
    pretrain_chip: int  # chip edge a bare backbone embeds: its pre-training chip (CNNs: alike)
    frames: bool = False  # takes several dates as frames (num_frames; task.temporal=frames)
    metadata: bool = False  # takes acquisition date and place (make_metadata)
    any_bands: bool = False  # any band subset, by wavelength (statistics per sensor)
    stats_sensor: str | None = None  # whose stored values its published statistics are in
    params: dict = field(default_factory=dict)  # the family's own per-variant values

    @property
    def default_size(self) -> str:
        """The official size: the one the weights file holds."""
        return next(iter(self.sizes))


_CLAY = dict(
    family="clay",
    finetune="frozen",
    convolutional=False,
    decoder="upernet",
    last_feature=-1,
    pretrain_chip=256,
    metadata=True,
    any_bands=True,
)
_PRITHVI = dict(
    family="prithvi",
    finetune="full",
    convolutional=False,
    decoder="upernet",
    last_feature=-1,
    pretrain_chip=224,
    frames=True,
    stats_sensor="hls",
)
_RESNET = dict(
    family="resnet",
    finetune="full",
    convolutional=True,
    decoder="unet",
    last_feature=4,
    pretrain_chip=256,
    stats_sensor="sentinel-2-l1c",
)

# Prithvi's published statistics, HLS surface reflectance x 10000, bands blue..swir22
_PRITHVI_V1 = dict(  # Prithvi-EO-1.0-100M config.yaml
    mean=(
        775.2290211032589,
        1080.992780391705,
        1228.5855250417867,
        2497.2022620507532,
        2204.2139147975554,
        1610.8324823273745,
    ),
    std=(
        1281.526139861424,
        1270.0297974547493,
        1399.4802505642526,
        1368.3446143747644,
        1291.6764008585435,
        1154.505683480695,
    ),
    temporal_location=False,
    pretrain_frames=3,
)
_PRITHVI_V2 = dict(  # Prithvi-EO-2.0 config.json
    mean=(1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0),
    std=(2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0),
    temporal_location=False,
    pretrain_frames=4,
)
_TL = dict(_PRITHVI_V2, temporal_location=True)
_300M = {"300m": VitSize(1024, 24, 16, 16), "tiny": VitSize(64, 4, 2, 16)}
_600M = {"600m": VitSize(1280, 32, 16, 14), "tiny": VitSize(64, 4, 2, 14)}

# Clay's sizes: clay_mae_base (v1) and clay_mae_large (v1.5) in Clay's model.py
BACKBONES: dict[str, BackboneEntry] = {
    "clay_v1_base": BackboneEntry(
        weights_file="clay-v1-base.ckpt",
        description="Clay v1 ViT-B/8 (Apache-2.0)",
        sizes={"base": ClaySize(768, 12, 12, 64), "tiny": ClaySize(64, 4, 2, 32)},
        params={"sentinel_1": "linear power"},
        **_CLAY,
    ),
    "clay_v1_5": BackboneEntry(
        weights_file="clay-v1.5.ckpt",
        description="Clay v1.5 ViT-L/8 (Apache-2.0)",
        sizes={"large": ClaySize(1024, 24, 16, 64), "tiny": ClaySize(64, 4, 2, 32)},
        **_CLAY,
    ),
    "prithvi_eo_v1_100": BackboneEntry(
        weights_file="Prithvi_EO_V1_100M.pt",
        description="Prithvi-EO 1.0 100M ViT-B/16, 6 HLS bands",
        sizes={"100m": VitSize(768, 12, 12, 16), "tiny": VitSize(64, 4, 2, 16)},
        params=_PRITHVI_V1,
        **_PRITHVI,
    ),
    "prithvi_eo_v2_300": BackboneEntry(
        weights_file="Prithvi_EO_V2_300M.pt",
        description="Prithvi-EO 2.0 300M ViT-L/16",
        sizes=_300M,
        params=_PRITHVI_V2,
        **_PRITHVI,
    ),
    "prithvi_eo_v2_300_tl": BackboneEntry(
        weights_file="Prithvi_EO_V2_300M_TL.pt",
        description="Prithvi-EO 2.0 300M-TL (temporal + location)",
        sizes=_300M,
        params=_TL,
        **_PRITHVI | {"metadata": True},
    ),
    "prithvi_eo_v2_600": BackboneEntry(
        weights_file="Prithvi_EO_V2_600M.pt",
        description="Prithvi-EO 2.0 600M ViT-H/14",
        sizes=_600M,
        params=_PRITHVI_V2,
        **_PRITHVI,
    ),
    "prithvi_eo_v2_600_tl": BackboneEntry(
        weights_file="Prithvi_EO_V2_600M_TL.pt",
        description="Prithvi-EO 2.0 600M-TL (temporal + location)",
        sizes=_600M,
        params=_TL,
        **_PRITHVI | {"metadata": True},
    ),
    "resnet18": BackboneEntry(
        weights_file="resnet18_sentinel2_all_moco-59bfdff9.pth",
        description="ResNet-18 (timm), TorchGeo SSL4EO-S12 weights",
        sizes={"18": ResNetSize("basic", (2, 2, 2, 2)), "tiny": ResNetSize("basic", (1, 1, 1, 1))},
        **_RESNET,
    ),
    "resnet50": BackboneEntry(
        weights_file="resnet50_sentinel2_all_moco-df8b932e.pth",
        description="ResNet-50 (timm), TorchGeo SSL4EO-S12 weights",
        sizes={
            "50": ResNetSize("bottleneck", (3, 4, 6, 3)),
            "tiny": ResNetSize("bottleneck", (1, 1, 1, 1)),
        },
        **_RESNET,
    ),
}


def get_entry(name: str) -> BackboneEntry:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(
            f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}"
        ) from None


def family_entry(name: str, family: str) -> BackboneEntry:
    """The row of ``name``, a backbone of ``family`` (a family module's check of its input)."""
    entry = BACKBONES.get(name)
    if entry is None or entry.family != family:
        ours = [n for n, e in BACKBONES.items() if e.family == family]
        raise BackboneError(
            f"{name!r} is not a {family.capitalize()} backbone; {family.capitalize()} backbones: "
            f"{', '.join(ours)}"
        )
    return entry
