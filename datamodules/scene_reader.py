"""Windows of a :class:`~datamodules.imagery.Scene` read on its grid: its files stacked band by
band, band files warped onto the finest band's grid, a band file's missing pixels (outside
it, or its nodata) made nodata in every band, and the pixels a file's alpha band or internal
mask masks written as the scene's nodata value."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from .errors import ImageryError
from .imagery import Grid, Scene, is_nodata, warp_to_grid


def footprint(ds, g: Grid) -> tuple[int, int, int, int] | None:
    """The grid's pixels whose centre lies inside file ``ds`` (row0, row1, col0, col1), or None
    when the file covers the whole grid."""
    b = ds.bounds
    (c0, r0), (c1, r1) = ~g.transform * (b.left, b.top), ~g.transform * (b.right, b.bottom)
    rows = (max(0, math.ceil(min(r0, r1) - 0.5)), min(g.height, math.ceil(max(r0, r1) - 0.5)))
    cols = (max(0, math.ceil(min(c0, c1) - 0.5)), min(g.width, math.ceil(max(c0, c1) - 0.5)))
    return None if rows == (0, g.height) and cols == (0, g.width) else (*rows, *cols)


class SceneReader:
    """Read windows of a :class:`Scene` on its grid, all bands stacked ``[C, h, w]``.

    A scene of band files is valid only where every band is: a pixel outside a band file (a
    20 m band cropped a pixel short of the 10 m ones) or where a band file holds nodata is read
    as nodata in every band, so that no band reaches a model as its fill value."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self._handles: dict[Path, object] = {}
        self._outside: list[tuple[int, int, int, int]] = []
        g, nd = scene.grid, scene.nodata
        for f, _ in scene.band_sources:
            if f in self._handles:
                continue
            ds = rasterio.open(f)
            if ds.transform != g.transform or ds.width != g.width or ds.height != g.height:
                part = footprint(ds, g)
                if part is not None:
                    self._outside.append(part)
                # the fill value is not blended into the pixels at the file's edge
                kw = (
                    {}
                    if nd is None
                    else {"src_nodata": ds.nodata if ds.nodata is not None else nd, "nodata": nd}
                )
                ds = warp_to_grid(ds, g, Resampling.bilinear, **kw)
            self._handles[f] = ds
        self._per_band = len(self._handles) > 1
        self._fill = nd if nd is not None else np.nan
        if self._outside and nd is None and not np.issubdtype(np.dtype(scene.dtype), np.floating):
            self.close()
            raise ImageryError(
                f"the band files cover different areas of the scene ({g.width} x {g.height} px "
                "on the finest band's grid) and declare no nodata value to mark where a band is "
                "missing: crop them to one extent, or declare their fill value (e.g. rio "
                "edit-info --nodata 0 FILE for each band file)"
            )
        # one read per run of bands from the same file: a pixel-interleaved file's blocks hold
        # every band, and reading band by band decompressed each block once per band (8x slower
        # on a 6-band deflate COG, measured)
        self._runs: list[tuple[Path, list[int]]] = []
        for f, b in scene.band_sources:
            if self._runs and self._runs[-1][0] == f:
                self._runs[-1][1].append(b)
            else:
                self._runs.append((f, [b]))

    def read(self, window: Window) -> np.ndarray:
        out = [self._handles[f].read(bands, window=window) for f, bands in self._runs]
        data = out[0] if len(out) == 1 else np.concatenate(out)
        if self._per_band:
            self._mask_missing(data, window)
        if self.scene.masked:  # its alpha band or internal mask: masked pixels read as nodata
            ds = self._handles[self.scene.files[0]]
            if self.scene.alpha_band is not None:  # GDAL takes it as the mask of RGBA files only
                masked = ds.read(self.scene.alpha_band, window=window) == 0
            else:
                masked = ds.dataset_mask(window=window) == 0
            if masked.any():
                data[:, masked] = np.asarray(self._fill).astype(data.dtype)
        return data

    def _mask_missing(self, data: np.ndarray, window: Window) -> None:
        """Every band nodata where one band is missing (outside its file, or its nodata)."""
        r, c = int(window.row_off), int(window.col_off)
        h, w = data.shape[1:]
        missing = np.zeros((h, w), dtype=bool)
        for r0, r1, c0, c1 in self._outside:
            if r0 <= r and r + h <= r1 and c0 <= c and c + w <= c1:
                continue  # the window lies inside this file
            inside = np.zeros_like(missing)
            inside[max(0, r0 - r) : max(0, r1 - r), max(0, c0 - c) : max(0, c1 - c)] = True
            missing |= ~inside
        nd = self.scene.nodata
        if nd is not None:
            missing |= np.any(is_nodata(data, nd), axis=0)
        if missing.any():
            data[:, missing] = np.asarray(self._fill).astype(data.dtype)

    def close(self) -> None:
        for h in self._handles.values():
            h.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
