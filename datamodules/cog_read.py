"""Windowed reads of remote COGs onto an output grid, with timeouts and retries.

Only the source window under the requested output block is read (plus one pixel for
resampling): GDAL fetches just the COG tiles that window touches, with HTTP range requests. The
window is then put onto the block's grid (:func:`resampling_for`): copied unchanged when the
output is the source's own lattice (same CRS, pixel size and origin modulo the pixel size);
each source pixel repeated (nearest) when the output divides the source's pixels on the same
lattice; averaged when it gathers whole source pixels; bilinear when it must reproject. Masks
are always taken nearest. Every read runs in its
own ``rasterio.Env`` with GDAL's HTTP timeouts; when the open + read fails (an HTTP error such as
503, a connection reset, a stall past the timeout) GDAL's cached answer for that file is dropped
and the whole read is tried again after a growing pause, up to ``retries`` attempts.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from .errors import UserError
from .stac_access import Access, redact


class AssetReadError(UserError):
    """An asset could not be read after the retries; the message names it and the cause."""


@dataclass(frozen=True)
class ReadOptions:
    timeout: float = 30.0  # seconds per HTTP request (GDAL_HTTP_TIMEOUT)
    retries: int = 3  # attempts at one read (open + read)
    backoff: float = 1.0  # seconds before the 2nd attempt, doubling after
    workers: int = 8  # reads in flight at once

    def gdal_env(self) -> dict[str, str]:
        return {
            "GDAL_HTTP_TIMEOUT": str(max(1, math.ceil(self.timeout))),
            "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, math.ceil(self.timeout))),
            "GDAL_HTTP_MAX_RETRY": "0",  # retries are ours: see read_to_grid
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing per file
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
            "VSI_CACHE": "TRUE",
        }


def source_window(src, dst_bounds, dst_crs) -> Window | None:
    """The source pixels under ``dst_bounds`` (in ``dst_crs``), one pixel wider for resampling,
    clipped to the file; ``None`` if they do not overlap."""
    left, bottom, right, top = transform_bounds(dst_crs, src.crs, *dst_bounds, densify_pts=21)
    inv = ~src.transform
    cols, rows = zip(*(inv @ (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
    c0, c1 = max(math.floor(min(cols)) - 1, 0), min(math.ceil(max(cols)) + 1, src.width)
    r0, r1 = max(math.floor(min(rows)) - 1, 0), min(math.ceil(max(rows)) + 1, src.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _lattice_multiple(fine, coarse, tol: float = 1e-6) -> int | None:
    """``n`` when pixels of ``coarse`` are exactly n x n pixels of ``fine`` on one lattice
    (no rotation, same origin modulo the fine pixel), else ``None``."""
    if fine.b or fine.d or coarse.b or coarse.d:
        return None
    rf, rc = abs(fine.a), abs(coarse.a)
    n = round(rc / rf)
    if n < 1 or abs(rc - n * rf) > tol * rf or abs(abs(fine.e) - rf) > tol * rf:
        return None
    if abs(abs(coarse.e) - rc) > tol * rc:
        return None
    for off in ((coarse.c - fine.c) / rf, (coarse.f - fine.f) / rf):
        if abs(off - round(off)) > tol * 1e3:
            return None
    return n


def resampling_for(src_crs, src_transform, dst_crs, dst_transform, kind: str):
    """How a source raster is put onto the output grid: (method, what it is, in words)."""
    rs, rd = abs(src_transform.a), abs(dst_transform.a)
    if src_crs == dst_crs:
        up = _lattice_multiple(dst_transform, src_transform)  # source pixels split in n x n
        if up == 1:
            return Resampling.nearest, "none (the source grid)"
        if up:
            return Resampling.nearest, f"nearest ({rs:g} → {rd:g}, each pixel split {up}x{up})"
        down = _lattice_multiple(src_transform, dst_transform)
        if down:
            if kind == "mask":
                return Resampling.nearest, f"nearest ({rs:g} → {rd:g})"
            return Resampling.average, f"average ({rs:g} → {rd:g}, {down}x{down} pixels)"
        why = f"{rs:g} → {rd:g}, off the source's lattice"
    else:
        why = f"{src_crs.to_string()} → {dst_crs.to_string()}"
    method = Resampling.nearest if kind == "mask" else Resampling.bilinear
    return method, f"{method.name} ({why})"


def read_to_grid(
    access: Access,
    dst_transform,
    dst_crs,
    shape: tuple[int, int],
    *,
    kind: str,
    options: ReadOptions,
    nodata: float | None = None,
    on_resampling=None,
) -> np.ndarray | None:
    """Band 1 of an asset on the output block as float32, NaN where there is no data; ``None``
    when the asset does not reach the block. ``kind`` is ``"band"`` or ``"mask"``;
    ``on_resampling(text)`` is told how the asset was put onto the grid."""
    env = options.gdal_env() | access.env
    local = _is_local_path(access.href)  # nothing transient about a local file: one attempt
    last = None
    for attempt in range(1 if local else options.retries):
        if attempt:
            time.sleep(options.backoff * 2 ** (attempt - 1))
            _forget(access.href)  # GDAL caches a failed file; ask the server again
        try:
            with rasterio.Env(**env), rasterio.open(access.href) as src:
                return _read(src, dst_transform, dst_crs, shape, kind, nodata, on_resampling)
        except rasterio.errors.RasterioIOError as e:
            last = e
    if local:
        what = "does not exist" if not os.path.exists(access.href) else f"cannot be read ({last})"
        raise AssetReadError(
            f"the catalog's asset {access.href} {what}; check the local catalog's files, or "
            "remove the item"
        )
    raise AssetReadError(
        f"could not read {redact(access.href)} after {options.retries} attempts "
        f"(timeout {options.timeout:g} s each): {redact(str(last))}. Check the network and the "
        "catalog's credentials, or retry later."
    )


def _is_local_path(href: str) -> bool:
    """A file on this machine (not a URL, nor a GDAL /vsi path to one)."""
    return "://" not in href and not href.startswith("/vsi")


def _forget(href: str) -> None:
    from rasterio.cache import invalidate

    try:
        invalidate(href)
    except Exception:  # a path rasterio cannot parse has nothing cached to forget
        pass


def _read(src, dst_transform, dst_crs, shape, kind, nodata, on_resampling):
    h, w = shape
    win = source_window(src, rasterio.transform.array_bounds(h, w, dst_transform), dst_crs)
    if win is None:
        return None
    data = src.read(1, window=win).astype(np.float32)
    src_nodata = src.nodata if src.nodata is not None else nodata
    if src_nodata is not None:
        data[data == np.float32(src_nodata)] = np.nan
    resampling, text = resampling_for(src.crs, src.transform, dst_crs, dst_transform, kind)
    if on_resampling is not None:
        on_resampling(text)
    out = np.full((h, w), np.nan, dtype=np.float32)
    reproject(
        data,
        out,
        src_transform=src.window_transform(win),
        src_crs=src.crs,
        src_nodata=np.nan,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return out


def read_header(access: Access, options: ReadOptions):
    """The CRS and transform of an asset, from its header (one small read)."""
    env = options.gdal_env() | access.env
    try:
        with rasterio.Env(**env), rasterio.open(access.href) as src:
            return src.crs, src.transform
    except rasterio.errors.RasterioIOError as e:
        raise AssetReadError(f"could not read {redact(access.href)}: {redact(str(e))}") from None


__all__ = [
    "AssetReadError",
    "ReadOptions",
    "read_header",
    "read_to_grid",
    "resampling_for",
    "source_window",
]
