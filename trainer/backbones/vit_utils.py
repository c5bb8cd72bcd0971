"""Helpers the ViT backbones (Clay, Prithvi) share: which blocks to return, metadata argument checks."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import torch

from .base import BackboneError


def resolve_out_indices(out_indices, depth: int) -> tuple[int, ...]:
    """Blocks whose outputs ``forward`` returns; default: quarter points, e.g. depth 24 -> (5, 11, 17, 23)."""
    if out_indices is None:
        return tuple(sorted({max(0, depth * k // 4 - 1) for k in range(1, 5)}))
    out = tuple(int(i) + depth if int(i) < 0 else int(i) for i in out_indices)
    if not out or any(not 0 <= i < depth for i in out):
        raise BackboneError(
            f"out_indices {tuple(out_indices)} must be block numbers in [0, {depth}) "
            "(or negative, counted from the end)."
        )
    return out


def checked_dates_lonlat(dates, lonlat, frames: int) -> tuple[list[list], torch.Tensor | None]:
    """Validate ``make_metadata`` arguments: per-sample lists of ``frames`` dates, ``[B, 2]`` (lon, lat).

    ``dates=None`` means every date is unknown; ``lonlat`` may be ``None`` (unknown places).
    """
    if dates is None and lonlat is None:
        raise BackboneError(
            "make_metadata needs dates (per-sample lists) or lonlat ([B, 2] lon, lat)."
        )
    batch = len(dates) if dates is not None else len(lonlat)
    dates = [list(d) for d in dates] if dates is not None else [[None] * frames] * batch
    for i, sample in enumerate(dates):
        if len(sample) != frames:
            raise BackboneError(
                f"sample {i} has {len(sample)} date(s); this backbone takes {frames} date(s) per sample "
                "(use None for an unknown date)."
            )
        for day in sample:
            if day is not None and not isinstance(day, date):
                raise BackboneError(
                    f"dates must be datetime.date values or None, got {type(day).__name__}."
                )
    if lonlat is not None:
        lonlat = torch.as_tensor(lonlat, dtype=torch.float64)
        if tuple(lonlat.shape) != (batch, 2):
            raise BackboneError(
                f"lonlat must be [{batch}, 2] (lon, lat) degrees, got {tuple(lonlat.shape)}."
            )
    return dates, lonlat


def pick_size(name: str, sizes: dict, size: str | None, overrides: dict):
    """The size row for ``size`` (default: the official, first one) with non-None ``overrides`` applied."""
    size = size or next(iter(sizes))
    if size not in sizes:
        raise BackboneError(f"{name} has sizes {', '.join(sizes)}, not {size!r}")
    return size, replace(sizes[size], **{k: v for k, v in overrides.items() if v is not None})
