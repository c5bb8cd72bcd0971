"""Prithvi-EO 1.0 (100M) and 2.0 (300M, 600M, with or without temporal-location "TL") encoders.

Module and parameter names follow the official ``PrithviViT`` (``patch_embed.proj``,
``cls_token``, ``blocks.<i>`` in timm's ViT block layout, ``norm``, TL: ``temporal_embed_enc.scale``
and ``location_embed_enc.scale``), so the official files load strictly: Prithvi-EO-2.0 files are
``encoder.``/``decoder.`` prefixed, Prithvi-EO-1.0 is flat with ``decoder_*``/``mask_token`` keys
(``CHECKPOINT_LAYOUTS``). The fixed 3-D sin-cos ``pos_embed`` stored in the files is dropped and
computed as the official code does: the table of the built size (``img_size``, 224 by default as in
the official configs; fine-tunes build at their patch size), recomputed for another frame count and
interpolated bicubically (corners aligned) to another input size.

Inputs: ``x`` ``[B, C, T, H, W]`` (or ``[B, C, H, W]`` when ``num_frames == 1``) normalised with
``spec.mean``/``spec.std``; 6 HLS bands. A 3-D patch embedding with tubelet 1 makes ``T·h·w``
tokens in (frame, row, column) order. TL models also take ``temporal_coords`` ``[B, T, 2]`` =
(year, day of year) and ``location_coords`` ``[B, 2]`` = (lat, lon) degrees — the official order —
each turned into 1-D sin-cos encodings times a learned scale and added to every patch token. A
``None`` argument means no encoding (as officially); NaN entries (unknown date or place of one
sample or frame) get no encoding for that sample or frame only.

Feature maps: block outputs without the class token, frame tokens concatenated on channels
(``[B, T·D, ceil(H/p), ceil(W/p)]``, channel ``t·D + d``); the last block after the final norm.
Inputs not a multiple of the patch size are zero-padded at the bottom and right (0 = band mean).
Blocks after the last of ``out_indices`` are not run.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.sensors import get_sensor
from datamodules.sensors import wavelengths as sensor_wavelengths

from .base import BackboneError, BackboneSpec
from .checkpoints import CheckpointLayout, load_encoder_weights
from .variants import VitSize, family_entry
from .vit_utils import checked_dates_lonlat, pick_size, resolve_out_indices

# HLS B02, B03, B04, B8A (L30: B05), B11 (B06), B12 (B07)
BANDS = ("blue", "green", "red", "nir08", "swir16", "swir22")

CHECKPOINT_LAYOUTS = {
    "v2": CheckpointLayout(
        "Prithvi-EO-2.0 MAE state dict (encoder./decoder. prefixes)",
        "plain",
        "encoder.",
        (r"decoder\..*", r"encoder\.pos_embed"),
    ),
    "flat": CheckpointLayout(
        "flat state dict: Prithvi-EO-1.0 MAE (decoder_*, mask_token) or encoder-only",
        "plain",
        "",
        (r"pos_embed", r"mask_token", r"decoder_.*"),
    ),
}


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[M] -> [M, dim]``: sin of ``positions·ω`` then cos, ``ω_k = 10000^(-2k/dim)``, in ``positions``' dtype."""
    omega = torch.arange(dim // 2, dtype=positions.dtype, device=positions.device) / (dim / 2.0)
    out = positions.reshape(-1)[:, None] * (1.0 / 10000**omega)[None, :]
    return torch.cat((out.sin(), out.cos()), dim=1)


@lru_cache(maxsize=16)
def sincos_3d(dim: int, frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """The fixed position table ``[frames·grid_h·grid_w, dim]``: (w, h, t) parts of 6/16, 6/16, 4/16 of dim."""
    if dim % 16:
        raise BackboneError(f"Prithvi's embed_dim must be a multiple of 16, not {dim}.")
    spatial, temporal = dim // 16 * 6, dim // 16 * 4
    w = sincos_1d(spatial, torch.arange(grid_w, dtype=torch.float64, device="cpu"))
    h = sincos_1d(spatial, torch.arange(grid_h, dtype=torch.float64, device="cpu"))
    t = sincos_1d(temporal, torch.arange(frames, dtype=torch.float64, device="cpu"))
    w = w.repeat(frames * grid_h, 1)
    h = h.repeat_interleave(grid_w, dim=0).repeat(frames, 1)
    t = t.repeat_interleave(grid_h * grid_w, dim=0)
    return torch.cat((w, h, t), dim=1).float()


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        tubelet = (1, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=tubelet, stride=tubelet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, T*h*w, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block with timm's parameter names."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CoordinateEncoder(nn.Module):
    """Two coordinates -> sin-cos encodings of D//2 and D - D//2 channels, times a learned scale."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.scale = nn.Parameter(torch.full((1,), 0.1))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """``[..., 2]`` -> ``[..., D]``; rows with a non-finite coordinate encode to zeros."""
        valid = coords.isfinite().all(dim=-1, keepdim=True)
        coords = torch.where(valid, coords, torch.zeros_like(coords))
        half = self.embed_dim // 2
        first = sincos_1d(half, coords[..., 0]).reshape(*coords.shape[:-1], half)
        second = sincos_1d(self.embed_dim - half, coords[..., 1]).reshape(*coords.shape[:-1], -1)
        encoded = self.scale * torch.cat((first, second), dim=-1)
        return torch.where(valid, encoded, torch.zeros_like(encoded))


class PrithviEncoder(nn.Module):
    """Prithvi's ViT encoder; ``forward`` returns one ``[B, T·D, h, w]`` map per ``out_indices``."""

    def __init__(
        self,
        size: VitSize,
        in_chans: int,
        frames: int,
        tl: bool,
        out_indices: tuple,
        img_size: int = 224,
    ):
        super().__init__()
        d = self.embed_dim = size.embed_dim
        self.patch_size, self.num_frames, self.out_indices = size.patch_size, frames, out_indices
        self.pos_grid = max(1, img_size // size.patch_size)  # the table's grid, as built
        self._positions: dict[tuple[int, int, int], torch.Tensor] = {}
        self.temporal_location = temporal_location = tl
        self.patch_embed = PatchEmbed(in_chans, d, size.patch_size)
        if temporal_location:
            self.temporal_embed_enc = CoordinateEncoder(d)  # (year, day of year)
            self.location_embed_enc = CoordinateEncoder(d)  # (lat, lon)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(
            Block(d, size.num_heads, size.mlp_ratio) for _ in range(size.depth)
        )
        self.norm = nn.LayerNorm(d)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, temporal_coords=None, location_coords=None) -> list:
        coords = {"temporal_coords": temporal_coords, "location_coords": location_coords}
        tokens, (frames, gh, gw) = self.forward_tokens(x, **coords)
        d = self.embed_dim
        maps = [t[:, 1:].reshape(len(t), frames, gh, gw, d).permute(0, 1, 4, 2, 3) for t in tokens]
        return [m.reshape(len(m), frames * d, gh, gw) for m in maps]

    def forward_tokens(self, x, *, temporal_coords=None, location_coords=None):
        """Tokens ``[B, 1 + T·h·w, D]`` (class token first) of each ``out_indices`` block, and (T, h, w)."""
        if x.dim() == 4 and self.num_frames == 1:
            x = x.unsqueeze(2)
        if x.dim() != 5 or x.shape[2] != self.num_frames:
            raise BackboneError(
                f"this Prithvi backbone takes {self.num_frames} frame(s) as [B, C, {self.num_frames}, H, W]"
                + (" or [B, C, H, W]" if self.num_frames == 1 else "")
                + f", got {tuple(x.shape)}; set backbone num_frames to the number of dates."
            )
        if not self.temporal_location and (temporal_coords, location_coords) != (None, None):
            raise BackboneError(
                f"{self.spec.name} has no temporal/location encoding; use a *_tl backbone or "
                "drop the coordinates."
            )
        b, _, frames, h, w = x.shape
        p = self.patch_size
        x = F.pad(x, (0, -w % p, 0, -h % p))
        grid_h, grid_w = x.shape[-2] // p, x.shape[-1] // p
        tokens = self.patch_embed(x)
        positions = self.positions(frames, grid_h, grid_w)
        tokens = tokens + positions.to(tokens.device, tokens.dtype)
        if temporal_coords is not None:
            if tuple(temporal_coords.shape) != (b, frames, 2):
                raise BackboneError(
                    f"temporal_coords must be [{b}, {frames}, 2] (year, day of year), got {tuple(temporal_coords.shape)}."
                )
            encoded = self.temporal_embed_enc(temporal_coords.to(tokens.device))
            tokens = tokens + encoded.repeat_interleave(grid_h * grid_w, dim=1)
        if location_coords is not None:
            if tuple(location_coords.shape) != (b, 2):
                raise BackboneError(
                    f"location_coords must be [{b}, 2] (lat, lon), got {tuple(location_coords.shape)}."
                )
            tokens = tokens + self.location_embed_enc(location_coords.to(tokens.device))[:, None, :]
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        kept = {}
        for i, block in enumerate(self.blocks[: max(self.out_indices) + 1]):
            tokens = block(tokens)
            if i in self.out_indices:
                kept[i] = self.norm(tokens) if i == len(self.blocks) - 1 else tokens
        return [kept[i] for i in self.out_indices], (frames, grid_h, grid_w)

    def positions(self, frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
        """``[frames·grid_h·grid_w, D]``: the built grid's sin-cos table, interpolated bicubically
        (corners aligned) to another grid, as the official ``interpolate_pos_encoding`` does."""
        key = (frames, grid_h, grid_w)
        if key not in self._positions:
            with torch.inference_mode(False):  # a plain tensor, usable in training after predicting
                self._positions[key] = self._table(frames, grid_h, grid_w)
        return self._positions[key]

    def _table(self, frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
        g, d = self.pos_grid, self.embed_dim
        table = sincos_3d(d, frames, g, g).float()
        if (grid_h, grid_w) != (g, g):
            maps = table.reshape(frames, g, g, d).permute(0, 3, 1, 2)
            maps = F.interpolate(maps, size=(grid_h, grid_w), mode="bicubic", align_corners=True)
            table = maps.permute(0, 2, 3, 1).reshape(-1, d)
        return table

    def block_groups(self) -> list[nn.Module]:
        """Embedding (patch embedding, class token, TL encoders), each block, the last block with the final norm."""
        embedding = nn.Module()
        embedding.patch_embed = self.patch_embed
        embedding.register_parameter("cls_token", self.cls_token)
        if self.temporal_location:
            embedding.temporal_embed_enc = self.temporal_embed_enc
            embedding.location_embed_enc = self.location_embed_enc
        blocks = list(self.blocks)
        return [embedding, *blocks[:-1], nn.ModuleList([blocks[-1], self.norm])]

    def make_metadata(self, *, dates, lonlat, gsd) -> dict[str, torch.Tensor]:
        """TL: ``temporal_coords`` (year, day of year) per frame and ``location_coords`` (lat, lon); else ``{}``.

        ``dates``: per sample a list of ``num_frames`` ``date`` or ``None``; ``lonlat``: ``[B, 2]``
        degrees in (lon, lat) order (flipped here to Prithvi's (lat, lon)). Unknown values are NaN,
        which ``forward`` encodes as "no encoding" for that frame or sample. ``gsd`` is not used.
        """
        if not self.temporal_location:
            return {}
        dates, lonlat = checked_dates_lonlat(dates, lonlat, frames=self.num_frames)
        temporal = torch.full((len(dates), self.num_frames, 2), float("nan"))
        for i, sample in enumerate(dates):
            for t, day in enumerate(sample):
                if day is not None:
                    temporal[i, t] = torch.tensor([day.year, day.timetuple().tm_yday])
        location = torch.full((len(dates), 2), float("nan"))
        if lonlat is not None:
            location = lonlat[:, [1, 0]].float()
        return {"temporal_coords": temporal, "location_coords": location}


def input_conv(model: PrithviEncoder) -> tuple[nn.Module, str]:
    """Where the tubelet patch embedding lives (for adding input bands)."""
    return model.patch_embed, "proj"


def _statistics(version: dict, band_names: tuple[str, ...], mean, std) -> tuple[list, list, list]:
    """Mean, std and wavelength per band: the variant's published statistics (``mean`` and
    ``std`` None) or the given ones; an error names what is missing."""
    if (mean is None) != (std is None):
        raise BackboneError("pass both mean and std, or neither.")
    if mean is None:
        unknown = [b for b in band_names if b not in BANDS]
        if unknown:
            raise BackboneError(
                f"Prithvi has no statistics for band(s) {', '.join(unknown)}; pass mean=/std= for all bands."
            )
        mean = [version["mean"][BANDS.index(b)] for b in band_names]
        std = [version["std"][BANDS.index(b)] for b in band_names]
    if not len(mean) == len(std) == len(band_names):
        raise BackboneError(
            f"mean/std need one value per band ({len(band_names)}: {', '.join(band_names)})."
        )
    try:
        waves = [sensor_wavelengths([b], "hls" if b in BANDS else None)[0] for b in band_names]
    except (KeyError, ValueError) as exc:
        raise BackboneError(f"unknown band name: {exc}") from None
    return mean, std, waves


def _check_dims(dims: VitSize) -> None:
    if dims.embed_dim % 16 or dims.embed_dim % dims.num_heads:
        raise BackboneError(
            f"Prithvi's embed_dim must be a multiple of 16 and of num_heads, not {dims.embed_dim} / {dims.num_heads}."
        )


def _check_bands(name: str, band_names: tuple, weights: Path | None) -> None:
    """Pretrained weights take the six HLS bands in their order."""
    if weights is not None and band_names != BANDS:
        raise BackboneError(
            f"{name} weights take the bands {', '.join(BANDS)} in this order; got {', '.join(band_names)}. "
            "Map your bands onto these by name (the data module does this) instead of changing the backbone's bands."
        )


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
) -> PrithviEncoder:
    """A Prithvi encoder for ``num_frames`` dates (default 1).

    The six HLS bands and Prithvi's statistics (v1 and v2 differ) are fixed when loading weights;
    with random weights ``bands`` may name another set (with ``mean``/``std`` for bands outside the
    six). Published statistics are in HLS surface reflectance x 10000 (``spec.stats_unit``);
    :mod:`trainer.backbones.adapt` folds them onto a dataset's stored values. ``sensor`` is not used.
    ``img_size``: the input size the position table is built for (official default 224); other
    input sizes get it interpolated, as officially.
    """
    entry = family_entry(name, "prithvi")
    version = entry.params  # published mean/std (HLS reflectance x 10000, band order BANDS), TL
    size, dims = pick_size(
        name, entry.sizes, size, dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    )
    _check_dims(dims)
    num_frames = int(num_frames or 1)
    out_indices = resolve_out_indices(out_indices, dims.depth)
    band_names = tuple(bands or BANDS)
    _check_bands(name, band_names, weights)
    published = mean is None and std is None
    mean, std, waves = _statistics(version, band_names, mean, std)
    model = PrithviEncoder(
        dims,
        len(band_names),
        num_frames,
        version["temporal_location"],
        out_indices,
        img_size=int(img_size or 224),
    )
    if weights is not None:
        load_encoder_weights(model, weights, CHECKPOINT_LAYOUTS)
    model.spec = BackboneSpec(
        name=name,
        family="prithvi",
        size=size,
        bands=band_names,
        wavelengths=tuple(waves),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        patch_size=dims.patch_size,
        embed_dim=dims.embed_dim,
        out_channels=(dims.embed_dim * num_frames,) * len(out_indices),
        out_strides=(dims.patch_size,) * len(out_indices),
        num_frames=num_frames,
        gsd=30.0,
        weights=str(weights) if weights is not None else "random",
        stats_unit=get_sensor(entry.stats_sensor).unit(BANDS[0]) if published else None,
        stats_source=f"{name} published statistics (HLS surface reflectance x 10000)"
        if published
        else "given",
        extra={
            "temporal_location": version["temporal_location"],
            "out_indices": list(out_indices),
            "depth": dims.depth,
            "num_heads": dims.num_heads,
            "pretrain_frames": version["pretrain_frames"],
            "img_size": img_size,
        },
    )
    return model
