"""Observations on blocks of the output grid: what ``composite_for_aoi`` reads.

For one block, :meth:`BlockReader.observe` reads the quality mask of every item (of every
observation) whose footprint reaches the block, then, only for items with clear pixels there,
their bands (windowed reads in parallel: :mod:`datamodules.cog_read`), harmonised to the values
of the sensor table (a rule of :data:`HARMONIZE` when the catalog config names one, else the
items' ``raster:bands`` scale/offset where they differ from the table's), and mosaics the items
of one overpass, clearest first.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np
import rasterio
from rasterio.windows import Window

from .aoi import AoiError, project
from .cog_read import ReadOptions, read_to_grid
from .imagery import Grid
from .s2_products import BASELINE_04_DATE, harmonised
from .sensors import get_sensor
from .stac import Found, Observation, StacError


# -- radiometric harmonisation to the values of the sensor table ---------------------------------
def s2_offset_applies(item, asset=None) -> bool:
    """Does this Sentinel-2 item still carry the -1000 offset of processing baseline >= 04.00?
    The provider's flag, else the baseline, else the band asset's ``raster:bands`` offset (not
    0: still in the values, as Earth Search documents), else ESA's switch date (a reprocessed
    collection's old dates have the offset too: they need one of the others)."""
    props = item.properties
    if props.get("earthsearch:boa_offset_applied") is True:
        return False  # the provider already subtracted it
    baseline = props.get("s2:processing_baseline")
    if baseline is not None:
        return float(baseline) >= 4.0
    rb = ((asset.extra_fields.get("raster:bands") if asset is not None else None) or [{}])[0]
    if rb.get("offset") is not None:
        return float(rb["offset"]) != 0.0
    when = item.datetime or datetime.fromisoformat(props["start_datetime"].replace("Z", "+00:00"))
    return when.date() >= BASELINE_04_DATE


def _s2_boa_offset(arr: np.ndarray, item, asset) -> tuple[np.ndarray, str | None]:
    if not s2_offset_applies(item, asset):
        return arr, None
    return harmonised(arr, -1000.0), "subtracted the -1000 offset (baseline >= 04.00)"


def _linear_to_db(arr: np.ndarray, item, asset) -> tuple[np.ndarray, str | None]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(arr > 0, 10.0 * np.log10(arr), np.nan), "linear power to dB"


HARMONIZE = {"sentinel-2-boa-offset": _s2_boa_offset, "linear-to-db": _linear_to_db}


class BlockReader:
    """Reads observations onto blocks of the output grid (optionally clipped to the AOI)."""

    def __init__(self, cat, source, bands, grid: Grid, clip_geom, read: ReadOptions):
        self.cat, self.source, self.bands, self.grid, self.read = cat, source, bands, grid, read
        for spec in source.collections:
            if spec.harmonize and spec.harmonize not in HARMONIZE:
                raise StacError(
                    f"{spec.collection}: unknown harmonize rule {spec.harmonize!r} in the catalog "
                    f"config; known: {', '.join(HARMONIZE)}"
                )
        self.clip = project(clip_geom, grid.crs) if clip_geom is not None else None
        self._footprints: dict[str, object] = {}
        self.notes: dict[str, list[str]] = {}  # item id → harmonisation applied
        self.pixels: Counter = Counter()  # item id → output pixels it gave a value
        self.resampling: dict[str, set[str]] = {}  # band (or "mask") → how it was put on the grid

    # geometry ----------------------------------------------------------------------------------
    def _footprint(self, f: Found):
        from shapely.geometry import box, shape

        key = f.item.id
        if key not in self._footprints:
            g = shape(f.item.geometry) if f.item.geometry else box(*f.item.bbox)
            try:
                self._footprints[key] = project(g, self.grid.crs)
            except AoiError:  # a footprint the grid's CRS cannot draw: let the reads decide
                self._footprints[key] = None
        return self._footprints[key]

    def aoi_mask(self, win: Window) -> np.ndarray:
        """Pixels of the window whose centres fall inside the AOI (GDAL's rasterisation rule)."""
        from rasterio.features import geometry_mask

        shape = (win.height, win.width)
        if self.clip is None:
            return np.ones(shape, dtype=bool)
        t = rasterio.windows.transform(win, self.grid.transform)
        return geometry_mask([self.clip], shape, t, all_touched=False, invert=True)

    def _touches(self, f: Found, win: Window) -> bool:
        from shapely.geometry import box

        fp = self._footprint(f)
        return fp is None or fp.intersects(box(*rasterio.windows.bounds(win, self.grid.transform)))

    # reading -----------------------------------------------------------------------------------
    def _asset(self, f: Found, key: str, band: str):
        asset = f.item.assets.get(key)
        if asset is None:
            raise StacError(
                f"item {f.item.id} of {f.spec.collection} has no asset {key!r} ({band}); its "
                f"assets: {', '.join(f.item.assets)}. Fix the asset keys of the catalog config."
            )
        return self.cat.access_for(f.spec)(asset.get_absolute_href(), f.spec.collection)

    def _get(self, f: Found, key: str, band: str, win: Window, kind: str):
        t = rasterio.windows.transform(win, self.grid.transform)
        nodata = self.source.nodata if kind == "band" else None
        seen = self.resampling.setdefault(band, set())
        return read_to_grid(
            self._asset(f, key, band),
            t,
            self.grid.crs,
            (win.height, win.width),
            kind=kind,
            options=self.read,
            nodata=nodata,
            on_resampling=seen.add,
        )

    def _clear_views(self, pool, tasks, win) -> list[np.ndarray | None]:
        """Per (observation index, item): where its quality mask shows a clear view."""

        def one(task):
            f = task[1]
            if f.spec.mask is None:
                return np.ones((win.height, win.width), dtype=bool)
            values = self._get(f, f.spec.mask.asset, "mask", win, "mask")
            return None if values is None else ~f.spec.mask.invalid(values)

        return list(pool.map(one, tasks))

    def observe(self, pool, obs: list[Observation], win: Window, aoi: np.ndarray, bands=True):
        """Per observation: (data [C, h, w] float32 or None, clear [h, w] bool)."""
        tasks = [(i, f) for i, o in enumerate(obs) for f in o.found if self._touches(f, win)]
        clear = self._clear_views(pool, tasks, win)
        keep = [(t, c & aoi) for t, c in zip(tasks, clear, strict=True) if c is not None]
        keep = [(t, c) for t, c in keep if c.any()]
        h, w = win.height, win.width
        out = [(None, np.zeros((h, w), dtype=bool)) for _ in obs]
        if not bands:
            for (i, _f), c in keep:
                out[i] = (None, out[i][1] | c)
            return out
        reads = [(t, b) for t, _c in keep for b in self.bands]
        arrays = iter(pool.map(lambda r: self._band(r[0][1], r[1], win), reads))
        for (i, f), c in keep:
            data = np.stack([next(arrays) for _ in self.bands])
            c = c & np.all(np.isfinite(data), axis=0)
            prev, taken = out[i]
            if prev is None:
                prev = np.full((len(self.bands), h, w), np.nan, dtype=np.float32)
            new = c & ~taken  # mosaic: the clearest item of the overpass first
            prev[:, new] = data[:, new]
            self.pixels[f.item.id] += int(new.sum())
            out[i] = (prev, taken | new)
        return out

    def _band(self, f: Found, band: str, win: Window) -> np.ndarray:
        arr = self._get(f, f.spec.assets[band], band, win, "band")
        if arr is None:
            return np.full((win.height, win.width), np.nan, dtype=np.float32)
        rule, asset = f.spec.harmonize, f.item.assets[f.spec.assets[band]]
        if rule:  # a known rule governs (the items' raster:bands describe the values before it)
            arr, note = HARMONIZE[rule](arr, f.item, asset)
        else:
            arr, note = self._to_sensor_units(arr, asset, band)
        if note and note not in self.notes.setdefault(f.item.id, []):
            self.notes[f.item.id].append(note)
        return arr

    def _to_sensor_units(self, arr: np.ndarray, asset, band: str) -> tuple[np.ndarray, str | None]:
        """Values whose ``raster:bands`` scale/offset differ from the sensor table's for
        ``band``, mapped exactly onto the table's stored values (``physical = stored * scale +
        offset``)."""
        rb = (asset.extra_fields.get("raster:bands") or [{}])[0]
        if rb.get("scale") is None and rb.get("offset") is None:
            return arr, None
        scale, offset = float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0))
        sens = get_sensor(self.source.sensor).unit(band)
        if np.isclose(scale, sens.scale, rtol=1e-9, atol=0) and np.isclose(
            offset, sens.offset, rtol=0, atol=1e-12
        ):
            return arr, None
        note = (
            f"stored x {scale:g} + {offset:g} (raster:bands) as the sensor table's "
            f"x {sens.scale:g} + {sens.offset:g}"
        )
        out = (arr.astype(np.float64) * scale + offset - sens.offset) / sens.scale
        return out.astype(np.float32), note


__all__ = ["BlockReader", "HARMONIZE", "s2_offset_applies"]
