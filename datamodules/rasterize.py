"""The one pass over the scene: copy the imagery tiled, rasterize the labels, count and measure.

Window by window (scenes may be larger than memory): every date's bands are read on the common
grid and written to ``image.tif`` / ``image_t{i}.tif``; per-band mean/std are accumulated over
valid pixels; labels (polygons or a warped mask raster) become ``mask.tif`` (class ids) and
``units.tif`` (label unit ids), with per-unit pixel counts and centroids collected on the way.
With a background class, every valid pixel no label covers gets it; background units are its
connected regions within each split block.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from .imagery import Grid, Scene, gtiff_profile, is_nodata
from .labels import rasterize_window
from .scene_reader import SceneReader

IGNORE_INDEX = 255
# per label unit: pixel count, sums of rows and columns (centroid), class id, bounding box
UNIT_STATS = ("pixels", "sum_row", "sum_col", "class", "row_min", "row_max", "col_min", "col_max")


class Moments:
    """Streaming per-band mean/std (Chan et al. parallel combination)."""

    def __init__(self, n_bands: int):
        self.n = np.zeros(n_bands)
        self.mean = np.zeros(n_bands)
        self.m2 = np.zeros(n_bands)

    def update(self, data: np.ndarray, valid: np.ndarray) -> None:
        x = data[:, valid].astype(np.float64)
        nb = x.shape[1]
        if nb == 0:
            return
        mb, m2b = x.mean(1), x.var(1) * nb
        delta = mb - self.mean
        tot = self.n + nb
        self.mean = self.mean + delta * nb / tot
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / tot
        self.n = tot

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.maximum(self.n, 1))


def valid_pixels(data: np.ndarray, nodata) -> np.ndarray:
    """Pixels where not every band equals nodata (and, for floats, all bands are finite)."""
    valid = np.ones(data.shape[1:], dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~np.all(is_nodata(data, nodata), axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    return valid


def windows(grid: Grid, size: int):
    for row in range(0, grid.height, size):
        for col in range(0, grid.width, size):
            yield (
                (row, col),
                Window(col, row, min(size, grid.width - col), min(size, grid.height - row)),
            )


@dataclass
class PolygonLabels:
    """Polygons in the image CRS with ``class_id``, ``unit_id`` and ``area`` columns."""

    gdf: object

    def __post_init__(self):
        self.sindex = self.gdf.sindex
        self.first_free_unit = int(self.gdf["unit_id"].max()) + 1 if len(self.gdf) else 1

    def window(self, win: Window, grid: Grid, block: int, row: int, col: int, next_unit: int):
        from shapely.geometry import box

        bb = rasterio.windows.bounds(win, grid.transform)
        sub = self.gdf.iloc[self.sindex.query(box(*bb), predicate="intersects")]
        wt = window_transform(win, grid.transform)
        mask, units = rasterize_window(sub, wt, (win.height, win.width), IGNORE_INDEX)
        return mask, units, next_unit


@dataclass
class MaskLabels:
    """A mask raster warped onto the image grid and a lookup table user value → class id."""

    vrt: object
    lut: np.ndarray
    num_classes: int
    first_free_unit: int = 1

    def window(self, win: Window, grid: Grid, block: int, row: int, col: int, next_unit: int):
        raw = self.vrt.read(1, window=win)
        if raw.dtype.kind == "f":  # whole-number class values; NaN and infinities: no label
            raw = np.where(np.isfinite(raw), raw, -1).astype(np.int64)
        inside = (raw >= 0) & (raw < len(self.lut))
        mask = np.where(inside, self.lut[np.clip(raw, 0, len(self.lut) - 1)], IGNORE_INDEX)
        mask = mask.astype(np.uint8)
        units, next_unit = region_units(mask, block, next_unit, self.num_classes)
        return mask, units, next_unit


@dataclass
class PassResult:
    image_names: list[str]
    moments: Moments
    valid_pixels: int = 0
    unit_stats: dict = field(default_factory=dict)  # unit id → UNIT_STATS values


def write_rasters(
    folder: Path,
    scenes: list[Scene],
    sensor: str | None,
    labels: PolygonLabels | MaskLabels | None,
    block_size: int,
    background_id: int | None = None,
    progress: bool = True,
) -> PassResult:
    """Copy the imagery into ``folder``; with ``labels`` also write ``mask.tif``/``units.tif``."""
    from tqdm.auto import tqdm

    grid = scenes[0].grid
    names = ["image.tif"] if len(scenes) == 1 else [f"image_t{t}.tif" for t in range(len(scenes))]
    result = PassResult(names, Moments(len(scenes[0].bands)))
    readers = [SceneReader(s) for s in scenes]
    outs: list = []  # every open output, closed on the way out
    try:
        for n, s in zip(names, scenes, strict=True):
            out = rasterio.open(
                folder / n,
                "w",
                **gtiff_profile(grid, len(s.bands), s.dtype, s.nodata, layout="image"),
            )
            out.descriptions = tuple(s.bands)
            out.update_tags(sensor=sensor or "", date=s.date.isoformat() if s.date else "unknown")
            outs.append(out)
        image_outs = list(outs)
        if labels is not None:
            mask_out = rasterio.open(
                folder / "mask.tif", "w", **gtiff_profile(grid, 1, "uint8", IGNORE_INDEX)
            )
            units_out = rasterio.open(
                folder / "units.tif", "w", **gtiff_profile(grid, 1, "int32", 0)
            )
            outs += [mask_out, units_out]
            next_unit = labels.first_free_unit
        under_nodata: set = set()  # polygon units with pixels on the imagery's nodata
        step = max(block_size, (1024 // block_size) * block_size)
        wins = list(windows(grid, step))
        for (row, col), win in tqdm(wins, desc="ingest", unit="window", disable=not progress):
            valid = np.ones((win.height, win.width), dtype=bool)
            datas = [r.read(win) for r in readers]
            for out, d, s in zip(image_outs, datas, scenes, strict=True):
                out.write(d, window=win)
                valid &= valid_pixels(d, s.nodata)
            for d in datas:
                result.moments.update(d, valid)
            result.valid_pixels += int(valid.sum())
            if labels is None:
                continue
            mask, units, next_unit = labels.window(win, grid, block_size, row, col, next_unit)
            if isinstance(labels, PolygonLabels) and not valid.all():
                under_nodata.update(np.unique(units[~valid]).tolist())
            mask[~valid] = IGNORE_INDEX
            units[~valid] = 0
            if background_id is not None:
                bg = valid & (mask == IGNORE_INDEX)
                mask[bg] = background_id
                bg_units, next_unit = region_units(
                    np.where(bg, background_id, IGNORE_INDEX).astype(np.uint8),
                    block_size,
                    next_unit,
                    background_id + 1,
                )
                units[bg] = bg_units[bg]
            mask_out.write(mask, 1, window=win)
            units_out.write(units, 1, window=win)
            accumulate_units(result.unit_stats, units, mask, row, col)
    finally:
        for f in outs:
            f.close()
        for r in readers:
            r.close()
    if isinstance(labels, PolygonLabels):
        clouds = any(s.quality is not None and s.quality.spec is not None for s in scenes)
        _say_unused_polygons(labels, result.unit_stats, under_nodata, clouds)
    return result


def _say_unused_polygons(
    labels: PolygonLabels, stats: dict, under_nodata: set, clouds: bool = False
) -> None:
    """Warn about label polygons that gave no labelled pixel: those wholly on the imagery's
    nodata, and those that cover no pixel centre of their own (smaller than a pixel, or
    wholly under smaller polygons, which are drawn over them)."""
    ids = set(labels.gdf["unit_id"].tolist())
    on_nodata = (ids & under_nodata) - set(stats)
    unseen = ids - set(stats) - under_nodata
    if on_nodata:
        masked = " (which includes the clouds masked by --mask-clouds)" if clouds else ""
        warnings.warn(
            f"{len(on_nodata)} label polygon(s) lie wholly on the imagery's nodata{masked} and "
            "were not used",
            stacklevel=3,
        )
    if unseen:
        warnings.warn(
            f"{len(unseen)} label polygon(s) cover no pixel centre of their own (smaller than "
            "a pixel, or wholly under smaller polygons, which win) and were not used",
            stacklevel=3,
        )


def accumulate_units(stats: dict, units: np.ndarray, mask: np.ndarray, row: int, col: int) -> None:
    """Add a window's pixels to the per-unit statistics (see :data:`UNIT_STATS`)."""
    sel = units > 0
    if not sel.any():
        return
    u = units[sel]
    rr, cc = np.nonzero(sel)
    rr, cc = rr + row, cc + col
    ids, inv, n = np.unique(u, return_inverse=True, return_counts=True)
    srow = np.bincount(inv, weights=rr)
    scol = np.bincount(inv, weights=cc)
    cls = np.zeros(len(ids))
    cls[inv] = mask[sel]
    rmin, rmax = np.full(len(ids), np.inf), np.full(len(ids), -np.inf)
    cmin, cmax = rmin.copy(), rmax.copy()
    np.minimum.at(rmin, inv, rr)
    np.maximum.at(rmax, inv, rr)
    np.minimum.at(cmin, inv, cc)
    np.maximum.at(cmax, inv, cc)
    for i, uid in enumerate(ids.tolist()):
        new = np.array([n[i], srow[i], scol[i], cls[i], rmin[i], rmax[i], cmin[i], cmax[i]])
        if uid in stats:
            merge_unit_stats(stats[uid], new)
        else:
            stats[uid] = new


def merge_unit_stats(into: np.ndarray, new: np.ndarray) -> None:
    """Add ``new`` unit statistics to ``into`` in place (sums add, the bounding box grows)."""
    into[:3] += new[:3]
    into[4], into[6] = min(into[4], new[4]), min(into[6], new[6])
    into[5], into[7] = max(into[5], new[5]), max(into[7], new[7])


def region_units(mask: np.ndarray, block: int, next_unit: int, k: int):
    """Units of a class raster: connected regions of one class (< ``k``) within one split block.

    ``mask`` is a window whose origin lies on the block grid (windows are block multiples).
    """
    from scipy import ndimage

    units = np.zeros(mask.shape, dtype=np.int32)
    for r in range(0, mask.shape[0], block):
        for c in range(0, mask.shape[1], block):
            sub = mask[r : r + block, c : c + block]
            for cls in np.unique(sub):
                if cls >= k:
                    continue
                lab, n = ndimage.label(sub == cls)
                if n:
                    view = units[r : r + block, c : c + block]
                    view[lab > 0] = lab[lab > 0] + next_unit - 1
                    next_unit += n
    return units, next_unit
