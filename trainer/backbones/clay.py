"""Clay v1 (ViT-B/8) and Clay v1.5 (ViT-L/8) encoders, Apache-2.0, after Clay-foundation/model.

Module and parameter names follow the official ``Encoder`` (``cls_token``, ``patch_embedding.*``,
``transformer.layers.<i>.0|1.*``, ``transformer.norm.*``), so the official Lightning checkpoints
load strictly once ``model.encoder.`` is stripped (layouts in ``CHECKPOINT_LAYOUTS``).

Inputs: ``x`` ``[B, C, H, W]`` normalised with ``spec.mean``/``spec.std`` plus ``make_metadata``'s
``waves`` (µm, one per channel: the patch embedding is generated from them, so any band subset
works), ``gsd`` (m, scales the 2-D sin-cos position encoding), ``time`` ``[B, 4]`` = (sin, cos) of
ISO week·2π/52 and hour·2π/24, ``latlon`` ``[B, 4]`` = (sin, cos) of latitude and longitude. Unknown
time or location is all zeros, the official "no metadata" value (v1.5's pre-training zeroed both
for 20 % of chips; v1 never saw it). The 8 values fill the last 8 channels of the position encoding.
Blocks after the last of ``out_indices`` are not run.

Differences from the official encoder, all exact for the official use (square input, a multiple
of 8, one GSD per batch): the position grid is ``ceil(H/8) × ceil(W/8)`` rather than
``sqrt(L)²`` (non-square inputs work); inputs not a multiple of 8 are zero-padded at the bottom and
right (0 = the band mean after normalisation) and the maps have ``ceil(H/8) × ceil(W/8)`` cells;
``gsd`` may also be one value per sample; there is no masking (MAE pre-training only).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.sensors import get_sensor
from datamodules.sensors import wavelengths as sensor_wavelengths
from datamodules.units import Unit

from .base import BackboneError, BackboneSpec
from .checkpoints import CheckpointLayout, load_encoder_weights
from .variants import ClaySize, family_entry, get_entry
from .vit_utils import checked_dates_lonlat, pick_size, resolve_out_indices

WAVE_DIM = 128  # official DynamicEmbedding(wave_dim=128, num_latent_tokens=128)
NUM_LATENT_TOKENS = 128
PATCH_SIZE = 8


@dataclass(frozen=True)
class ClayBand:
    wavelength: float  # µm, Clay's value
    mean: float
    std: float


@dataclass(frozen=True)
class ClayPlatform:
    gsd: float
    bands: dict[str, ClayBand]  # geotune band name -> Clay's values, in Clay's band order
    unit: Unit  # what the statistics were computed on


def _platform(gsd: float, sensor: str, rows: tuple) -> ClayPlatform:
    """A Clay platform whose statistics are on the stored values of geotune's ``sensor``."""
    unit = get_sensor(sensor).unit(rows[0][0])
    return ClayPlatform(gsd, {name: ClayBand(w, m, s) for name, w, m, s in rows}, unit)


# Clay's configs/metadata.yaml (v1.5; v1 differs only for sentinel-1-rtc, see V1_SENTINEL_1).
# Keys are Clay platform names; band names are geotune's (Clay's rededge1..3 = rededge071..078).
# Clay's training chips are the providers' COGs as stored (Clay-foundation/stacchip copies the
# Earth Search Sentinel-2 L2A and USGS Landsat C2 assets unchanged), so each platform's
# statistics are on that product's stored values: Sentinel-2 L2A reflectance x 10000, Landsat
# C2 L2 surface reflectance as stored (value * 2.75e-5 - 0.2), NAIP digital numbers.
PLATFORMS = {
    "sentinel-2-l2a": _platform(10, "sentinel-2-l2a", (
        ("blue", 0.493, 1105.0, 1809.0), ("green", 0.56, 1355.0, 1757.0),
        ("red", 0.665, 1552.0, 1888.0), ("rededge071", 0.704, 1887.0, 1870.0),
        ("rededge075", 0.74, 2422.0, 1732.0), ("rededge078", 0.783, 2630.0, 1697.0),
        ("nir", 0.842, 2743.0, 1742.0), ("nir08", 0.865, 2785.0, 1648.0),
        ("swir16", 1.61, 2388.0, 1470.0), ("swir22", 2.19, 1835.0, 1379.0),
    )),
    "landsat-c2l1": _platform(30, "landsat-c2-l1", (
        ("red", 0.65, 10678.0, 6025.0), ("green", 0.56, 10563.0, 5411.0),
        ("blue", 0.48, 11083.0, 5468.0), ("nir08", 0.86, 14792.0, 6746.0),
        ("swir16", 1.6, 12276.0, 5897.0), ("swir22", 2.2, 10114.0, 4850.0),
    )),
    "landsat-c2l2-sr": _platform(30, "landsat-c2-l2", (
        ("red", 0.65, 13705.0, 9578.0), ("green", 0.56, 13310.0, 9408.0),
        ("blue", 0.48, 12474.0, 10144.0), ("nir08", 0.86, 17801.0, 8277.0),
        ("swir16", 1.6, 14615.0, 5300.0), ("swir22", 2.2, 12701.0, 4522.0),
    )),
    "naip": _platform(1.0, "naip", (
        ("red", 0.65, 110.16, 47.23), ("green", 0.56, 115.41, 39.82),
        ("blue", 0.48, 98.15, 35.43), ("nir", 0.842, 139.04, 49.86),
    )),
    "sentinel-1-rtc": _platform(10, "sentinel-1-rtc", (("vv", 3.5, -12.113, 8.314), ("vh", 4.0, -18.673, 8.017))),
}  # fmt: skip
# Clay v1 was pre-trained on linear-power Sentinel-1 backscatter (metadata.yaml before v1.5).
V1_SENTINEL_1 = ClayPlatform(
    10,
    {"vv": ClayBand(3.5, 0.123273, 1.492154), "vh": ClayBand(4.0, 0.027337, 0.122182)},
    Unit("backscatter (linear power)"),
)

# geotune sensor id -> (Clay platform, note when it is a stand-in rather than the same product)
SENSOR_PLATFORMS = {
    "sentinel-2-l2a": ("sentinel-2-l2a", ""),
    "sentinel-2-l1c": ("sentinel-2-l2a", "Clay publishes no Sentinel-2 L1C statistics; using its L2A ones"),
    "hls": ("sentinel-2-l2a", "Clay publishes no HLS statistics; using its Sentinel-2 L2A ones (same reflectance x 10000 scale)"),
    "landsat-c2-l1": ("landsat-c2l1", ""),
    "landsat-c2-l2": ("landsat-c2l2-sr", ""),
    "sentinel-1-rtc": ("sentinel-1-rtc", ""),
    "naip": ("naip", ""),
}  # fmt: skip

# Clay's Lightning module holds ClayMAE as ``model``: the encoder is kept; the MAE decoder, the
# frozen DINO teacher, the projection to the teacher and (in some v1.5 runs) the MRL head are not.
_CLAY_DROP = (r"model\.(decoder|teacher|proj|mrl)\..*",)
CHECKPOINT_LAYOUTS = {
    "lightning": CheckpointLayout(
        "Clay Lightning checkpoint (state_dict, encoder under model.encoder.)", "lightning", "model.encoder.", _CLAY_DROP
    ),
    "lightning_state_dict": CheckpointLayout("Clay Lightning state dict saved alone", "plain", "model.encoder.", _CLAY_DROP),
    "encoder": CheckpointLayout("encoder-only state dict (geotune backbones extract)", "plain"),
}  # fmt: skip


class FCBlock(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.l1 = nn.Linear(size, size)
        self.l2 = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class WavesTransformer(nn.Module):
    """Turns one token per wavelength into that band's patch-embedding kernel (and a shared bias)."""

    def __init__(self, wave_dim: int, output_dim: int, num_latent_tokens: int, embed_dim: int):
        super().__init__()
        # batch_first as in v1.5 (v1 had False): the input is one unbatched sequence, so both agree.
        layer = nn.TransformerEncoderLayer(
            wave_dim, 4, activation="gelu", dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(wave_dim, output_dim)
        self.fc_bias = nn.Linear(wave_dim, embed_dim)
        self.weight_tokens = nn.Parameter(torch.randn(num_latent_tokens, wave_dim) * 0.02)
        self.bias_token = nn.Parameter(torch.randn(1, wave_dim) * 0.02)

    def forward(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.weight_tokens.shape[0]
        tokens = torch.cat([self.weight_tokens, waves, self.bias_token])  # unbatched [n + C + 1, W]
        out = self.encoder(tokens)
        return self.fc_weight(out[n:-1] + tokens[n:-1]), self.fc_bias(out[-1])


def wave_encoding(waves: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D sin-cos encoding of wavelengths (µm): ``[C] -> [C, dim]``."""
    omega = torch.arange(dim // 2, device=waves.device) / (dim // 2 - 1)
    scaled = waves[:, None] * (1.0 / 10000**omega)[None, :]
    return torch.cat((scaled.sin(), scaled.cos()), dim=1)


class DynamicEmbedding(nn.Module):
    """Patch embedding whose conv kernel is generated from the input's wavelengths."""

    def __init__(self, wave_dim: int, num_latent_tokens: int, patch_size: int, embed_dim: int):
        super().__init__()
        self.wave_dim, self.patch_size, self.embed_dim = wave_dim, patch_size, embed_dim
        out_dim = patch_size**2 * embed_dim
        self.weight_generator = WavesTransformer(wave_dim, out_dim, num_latent_tokens, embed_dim)
        self.fclayer = FCBlock(wave_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight_generator(self.fclayer(wave_encoding(waves, self.wave_dim)))
        p = self.patch_size
        kernel = weight.view(len(waves), self.embed_dim, p, p).transpose(0, 1)  # [D, C, p, p]
        return F.conv2d(x, kernel * 0.02, bias, stride=p).flatten(2).transpose(1, 2)  # [B, L, D]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)])
            for _ in range(depth)
        )


def position_encoding(grid_h: int, grid_w: int, dim: int, gsd: torch.Tensor) -> torch.Tensor:
    """Clay's GSD-scaled 2-D sin-cos encoding: ``gsd [B] -> [B, grid_h*grid_w, dim]``."""
    rows, cols = torch.arange(grid_h, device=gsd.device), torch.arange(grid_w, device=gsd.device)
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    omega = torch.arange(dim // 4, device=gsd.device) / (dim // 4 - 1)
    omega = (1.0 / (10000 ** (2 * omega / dim)))[None, :] * gsd[:, None]  # [B, dim/4]
    y = y.flatten()[None, :, None] * omega[:, None, :]
    x = x.flatten()[None, :, None] * omega[:, None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=-1)


class ClayEncoder(nn.Module):
    """Clay's encoder; ``forward`` returns one ``[B, D, ceil(H/8), ceil(W/8)]`` map per ``out_indices``."""

    def __init__(self, size: ClaySize, out_indices: tuple[int, ...]):
        super().__init__()
        self.patch_size, self.dim, self.out_indices = PATCH_SIZE, size.embed_dim, out_indices
        self.cls_token = nn.Parameter(torch.randn(1, 1, size.embed_dim) * 0.02)
        self.patch_embedding = DynamicEmbedding(WAVE_DIM, NUM_LATENT_TOKENS, PATCH_SIZE, self.dim)
        mlp_dim = int(self.dim * size.mlp_ratio)
        self.transformer = Transformer(self.dim, size.depth, size.num_heads, size.dim_head, mlp_dim)

    def forward(self, x: torch.Tensor, waves=None, gsd=None, time=None, latlon=None) -> list:
        tokens, (gh, gw) = self.forward_tokens(x, waves=waves, gsd=gsd, time=time, latlon=latlon)
        return [t[:, 1:].transpose(1, 2).reshape(len(t), self.dim, gh, gw) for t in tokens]

    def forward_tokens(self, x, *, waves, gsd, time, latlon) -> tuple[list, tuple[int, int]]:
        """Tokens ``[B, 1 + L, D]`` (class token first) of each ``out_indices`` block, and the grid."""
        given = {"waves": waves, "gsd": gsd, "time": time, "latlon": latlon}
        if any(v is None for v in given.values()):
            raise BackboneError(
                f"Clay needs {', '.join(k for k, v in given.items() if v is None)}: pass "
                "model.make_metadata(dates=..., lonlat=..., gsd=...)."
            )
        b, c, h, w = x.shape
        want = {"waves": (c,), "time": (b, 4), "latlon": (b, 4)}
        if any(tuple(given[k].shape) != shape for k, shape in want.items()):
            got = {k: tuple(given[k].shape) for k in want}
            raise BackboneError(
                f"Clay metadata for input {tuple(x.shape)} must be {want}, got {got}."
            )
        p = self.patch_size
        x = F.pad(x, (0, -w % p, 0, -h % p))
        grid_h, grid_w = x.shape[-2] // p, x.shape[-1] // p
        patches = self.patch_embedding(x, waves.to(x.device, torch.float32))
        gsd = torch.as_tensor(gsd, dtype=torch.float32, device=x.device).reshape(-1)
        if len(gsd) not in (1, b):
            raise BackboneError(f"gsd must be one value or one per sample ({b}), got {len(gsd)}.")
        gsd = gsd.expand(b)
        encoding = position_encoding(grid_h, grid_w, self.dim - 8, gsd)
        meta = torch.cat((time, latlon), dim=1).to(x.device, encoding.dtype)[:, None, :]
        meta = meta.expand(-1, grid_h * grid_w, -1)
        patches = patches + torch.cat((encoding, meta), dim=-1)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), patches), dim=1)
        layers = self.transformer.layers
        kept = {}
        for i, (attn, ff) in enumerate(layers[: max(self.out_indices) + 1]):
            tokens = attn(tokens) + tokens
            tokens = ff(tokens) + tokens
            if i in self.out_indices:
                kept[i] = self.transformer.norm(tokens) if i == len(layers) - 1 else tokens
        return [kept[i] for i in self.out_indices], (grid_h, grid_w)

    def block_groups(self) -> list[nn.Module]:
        """Embedding (patch embedding + class token), each block, the last block with the final norm."""
        embedding = nn.Module()
        embedding.patch_embedding = self.patch_embedding
        embedding.register_parameter("cls_token", self.cls_token)
        layers = list(self.transformer.layers)
        return [embedding, *layers[:-1], nn.ModuleList([layers[-1], self.transformer.norm])]

    def make_metadata(self, *, dates, lonlat, gsd) -> dict[str, torch.Tensor]:
        """Clay's ``waves``, ``gsd``, ``time``, ``latlon`` for a batch.

        ``dates``: per sample a one-element list of ``date``/``datetime`` (hour used if given,
        else 00:00) or ``None``; ``lonlat``: ``[B, 2]`` degrees in (lon, lat) order, NaN = unknown;
        ``gsd``: metres, a number or ``[B]``. ``None`` for dates or lonlat = unknown for all.
        """
        dates, lonlat = checked_dates_lonlat(dates, lonlat, frames=1)
        time = torch.zeros(len(dates), 4, dtype=torch.float64)
        for i, (day,) in enumerate(dates):
            if day is not None:
                week = day.isocalendar().week * 2 * math.pi / 52
                hour = (day.hour if isinstance(day, datetime) else 0) * 2 * math.pi / 24
                time[i] = torch.tensor(
                    [math.sin(week), math.cos(week), math.sin(hour), math.cos(hour)]
                )
        latlon = torch.zeros(len(dates), 4, dtype=torch.float64)
        if lonlat is not None:
            lonlat = lonlat.double()
            lat, lon = torch.deg2rad(lonlat[:, 1]), torch.deg2rad(lonlat[:, 0])
            encoded = torch.stack((lat.sin(), lat.cos(), lon.sin(), lon.cos()), dim=1)
            latlon = torch.where(lonlat.isfinite().all(dim=1, keepdim=True), encoded, latlon)
        return {
            "waves": torch.tensor(self.spec.wavelengths, dtype=torch.float32),
            "gsd": torch.as_tensor(gsd, dtype=torch.float32),
            "time": time.float(),
            "latlon": latlon.float(),
        }


def published_bands(sensor: str | None) -> list[str]:
    """The bands Clay publishes statistics for on ``sensor`` (default: Sentinel-2 L2A)."""
    platform = PLATFORMS.get(SENSOR_PLATFORMS.get(sensor or "sentinel-2-l2a", (None, ""))[0])
    return list(platform.bands) if platform else []


def band_table(name: str, sensor: str | None, bands, mean, std) -> tuple:
    """Band names, Clay's wavelengths, mean, std, pre-training GSD, where the statistics come
    from and their unit (None for given statistics)."""
    sensor = sensor or "sentinel-2-l2a"
    platform_name, note = SENSOR_PLATFORMS.get(sensor, (None, ""))
    platform = PLATFORMS.get(platform_name)
    linear_s1 = get_entry(name).params.get("sentinel_1") == "linear power"  # Clay v1
    if linear_s1 and platform_name == "sentinel-1-rtc":
        platform = V1_SENTINEL_1
        if mean is None:
            raise BackboneError(
                "Clay v1 was pre-trained on linear-power Sentinel-1 backscatter, but geotune's "
                "sentinel-1-rtc holds dB. Use clay_v1_5 (pre-trained on dB), or pass mean=/std= "
                "matching your data."
            )
    table = platform.bands if platform else {}
    if bands is None and not table:
        raise BackboneError(
            f"Clay has no default bands for sensor {sensor!r}; pass bands= and mean=/std=."
        )
    bands = list(bands if bands is not None else table)
    if (mean is None) != (std is None) or (
        mean is not None and not len(mean) == len(std) == len(bands)
    ):
        raise BackboneError(f"pass both mean and std, one value per band ({', '.join(bands)}).")
    no_stats = [b for b in bands if b not in table]
    if no_stats and mean is None:
        raise BackboneError(
            f"Clay publishes no statistics for band(s) {', '.join(no_stats)} of sensor {sensor!r} "
            f"(it has: {', '.join(table) or 'none'}). Pass mean=/std= for all bands (e.g. your "
            "dataset's statistics) or drop those bands."
        )
    try:
        waves = [
            table[b].wavelength if b in table else sensor_wavelengths([b], sensor)[0] for b in bands
        ]
    except (KeyError, ValueError) as exc:
        raise BackboneError(f"no wavelength for a band of sensor {sensor!r}: {exc}") from None
    source, unit = "given", None
    if mean is None:
        mean, std = [table[b].mean for b in bands], [table[b].std for b in bands]
        source = f"Clay metadata.yaml {platform_name}" + (f" ({note})" if note else "")
        unit = platform.unit
        if note:
            warnings.warn(f"{name} with sensor {sensor}: {note}.", stacklevel=3)
    gsd = platform.gsd if platform else None
    return bands, waves, [float(v) for v in mean], [float(v) for v in std], gsd, source, unit


def build(
    name: str,
    *,
    weights: Path | None,
    size: str | None = None,
    bands: list[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    sensor: str | None = None,
    img_size: int | None = None,
    num_frames: int | None = None,
    out_indices=None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    **unused,
) -> ClayEncoder:
    """A Clay encoder; ``sensor``/``bands`` choose Clay's wavelengths and statistics (default Sentinel-2 L2A).

    ``img_size`` is accepted but has no effect: positions are computed for each input size.
    """
    entry = family_entry(name, "clay")
    size, dims = pick_size(
        name, entry.sizes, size, dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    )
    if num_frames not in (None, 1):
        raise BackboneError(f"Clay takes one date per sample (num_frames=1), not {num_frames}.")
    if (dims.embed_dim - 8) % 4:
        raise BackboneError(f"Clay's embed_dim must be a multiple of 4, not {dims.embed_dim}.")
    out_indices = resolve_out_indices(out_indices, dims.depth)
    band_names, waves, mean, std, gsd, stats_source, unit = band_table(
        name, sensor, bands, mean, std
    )
    model = ClayEncoder(dims, out_indices)
    if weights is not None:
        load_encoder_weights(model, weights, CHECKPOINT_LAYOUTS)
    model.spec = BackboneSpec(
        name=name,
        family="clay",
        size=size,
        bands=tuple(band_names),
        wavelengths=tuple(waves),
        mean=tuple(mean),
        std=tuple(std),
        patch_size=PATCH_SIZE,
        embed_dim=dims.embed_dim,
        out_channels=(dims.embed_dim,) * len(out_indices),
        out_strides=(PATCH_SIZE,) * len(out_indices),
        num_frames=1,
        any_bands=True,
        gsd=gsd,
        weights=str(weights) if weights is not None else "random",
        stats_unit=unit,
        stats_source=stats_source,
        extra={
            "sensor": sensor or "sentinel-2-l2a",
            "statistics": stats_source,
            "out_indices": list(out_indices),
            "depth": dims.depth,
            "num_heads": dims.num_heads,
            "img_size": img_size,
        },
    )
    return model
