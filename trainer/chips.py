"""Chip and tile geometry of a scene: the global chip grid, its blending weights, the output
tiles, and the coarse grid of per-chip (classification) outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rasterio import Affine
from rasterio.windows import Window

from datamodules.imagery import Grid

from .areas import areal_scale


@dataclass
class ChipGrid:
    """Global chip origins along one axis: stride ``chip - overlap``, last chip flush with the edge."""

    length: int
    chip: int
    overlap: int
    flush: bool = True  # False: chips at multiples of ``chip``, the last one padded past the edge
    starts: list[int] = field(init=False)

    def __post_init__(self):
        if not self.flush:
            self.starts = list(range(0, self.length, self.chip))
            return
        if self.length <= self.chip:
            self.starts = [0]
            return
        stride = self.chip - self.overlap
        starts = list(range(0, self.length - self.chip + 1, stride))
        if starts[-1] + self.chip < self.length:
            starts.append(self.length - self.chip)
        self.starts = starts

    def touching(self, a: int, b: int) -> list[int]:
        return [s for s in self.starts if s < b and s + self.chip > a]


def ramp(h: int, w: int, overlap: int) -> np.ndarray:
    """2-D blending weights of an ``h`` x ``w`` chip: 1 in the middle, a linear ramp to ~0
    across the overlap."""
    r = max(overlap, 1)

    def one(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)
        return np.clip((d + 0.5) / r, 1e-3, 1.0)

    return np.outer(one(h), one(w))


def fit_chip(length: int, max_chip: int, overlap: int, multiple: int) -> int:
    """The smallest chip (a multiple of ``multiple``) that covers ``length`` with as few chips of
    at most ``max_chip`` as possible, overlapping by ``overlap``: no pixels computed in vain.

    A 3000-pixel side with 512-pixel chips overlapping by 32 takes 7 chips, the last flush with
    the edge (3584 pixels run through the network); fitted, 7 chips of 480 (3360 pixels).
    """
    if length <= max_chip:
        return -(-length // multiple) * multiple
    n = -(-(length - overlap) // (max_chip - overlap))
    need = -(-(length + (n - 1) * overlap) // n)
    return min(-(-need // multiple) * multiple, max_chip)


def tiles(width: int, height: int, tile_size: int) -> list[Window]:
    """The output tiles of a ``width`` x ``height`` grid, row-major."""
    return [
        Window(c, r, min(tile_size, width - c), min(tile_size, height - r))
        for r in range(0, height, tile_size)
        for c in range(0, width, tile_size)
    ]


def coarse_grid(grid, chip: int):
    """The grid whose pixel is one ``chip``×``chip`` block (the last row/column may overhang)."""
    return Grid(
        grid.crs,
        grid.transform @ Affine.scale(chip),
        -(-grid.width // chip),
        -(-grid.height // chip),
    )


def crop(x: np.ndarray, r: int, c: int, h: int, w: int) -> np.ndarray:
    """An ``h``x``w`` float32 chip from the read region, padded where the scene ends."""
    sub = x[..., r : r + h, c : c + w].astype(np.float32)
    ph, pw = h - sub.shape[-2], w - sub.shape[-1]
    if ph or pw:
        pad = [(0, 0)] * (sub.ndim - 2) + [(0, ph), (0, pw)]
        sub = np.pad(
            sub, pad, mode="reflect" if ph < sub.shape[-2] and pw < sub.shape[-1] else "edge"
        )
    return sub


def ground_resolution(grid) -> tuple[float, float]:
    """Pixel size in metres on the ground (x, y) at the scene's centre: geodesic for geographic
    CRSs, the map size over the projection's scale there for projected ones."""
    t = grid.transform
    if not grid.crs.is_geographic:
        unit = grid.crs.linear_units_factor[1] if grid.crs.is_projected else 1.0
        k = 1.0
        if grid.crs.is_projected:
            x, y = t @ (grid.width / 2, grid.height / 2)
            k = float(np.sqrt(areal_scale(grid.crs, np.array([x]), np.array([y]))[0]))
        return abs(t.a) * unit / k, abs(t.e) * unit / k
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    lon, lat = t @ (grid.width / 2, grid.height / 2)
    dx = geod.inv(lon, lat, lon + abs(t.a), lat)[2]
    dy = geod.inv(lon, lat, lon, lat + abs(t.e))[2]
    return dx, dy


def dataset_metres(m) -> list[float]:
    """The pixel size in metres a model of dataset manifest ``m`` records (its resolution
    check, a foundation model's GSD, the resolution of imagery fetched for it): the grid's
    own size where its CRS is projected at true scale there (UTM: within 1%), else measured on
    the ground at its centre (a scene in degrees; Web Mercator away from the equator)."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(m.crs_wkt)
    (rx, ry), (left, _, _, top) = m.resolution, m.bounds
    grid = Grid(crs, Affine(rx, 0.0, left, 0.0, -ry, top), m.shape[1], m.shape[0])
    if crs.is_projected:
        unit = crs.linear_units_factor[1]
        ground = ground_resolution(grid)
        if abs(ground[0] / (rx * unit) - 1.0) < 0.01:
            return [rx * unit, ry * unit]
        return [round(v, 6) for v in ground]
    return [round(v, 6) for v in ground_resolution(grid)]


class ChipCache:
    """Chip probabilities shared between neighbouring tiles of one pass (row-major tile order).

    A chip is kept when it touches a later tile and dropped once the last tile it touches is
    done, so a chip on a tile seam runs once; the cache holds at most about one row of chips
    across the scene, and past ``max_bytes`` chips are not kept (later tiles run them again).
    """

    def __init__(self, pred, tile_size: int, max_bytes: int, first: Window | None = None):
        """``pred``: the :class:`trainer.predictor.Predictor` of the scene; ``first``: the
        pass's first tile, when it does not start at the top (a strip)."""
        g = pred.scenes[0].grid
        self.pred, self.t, self.max_bytes = pred, tile_size, max_bytes
        self.ncols = -(-g.width // tile_size)
        self.size = (g.height, g.width)
        self.items: dict[tuple[int, int], np.ndarray] = {}
        self.bytes = 0
        self.start = self.current = (
            0 if first is None else self._index(first.row_off, first.col_off)
        )

    def _index(self, r: int, c: int) -> int:
        return (r // self.t) * self.ncols + c // self.t

    def last(self, rc) -> int:
        r, c = rc
        h, w = self.size
        return self._index(min(r + self.pred.chip_h, h) - 1, min(c + self.pred.chip_w, w) - 1)

    def expects(self, rc, tile: Window) -> bool:
        """Whether the chip ran for an earlier tile than ``tile`` (then it is here, if it fit)."""
        return self.start <= self._index(*rc) < self._index(tile.row_off, tile.col_off) and (
            self.bytes < self.max_bytes or rc in self.items
        )

    def __contains__(self, rc) -> bool:
        return rc in self.items

    def get(self, rc) -> np.ndarray:
        return self.items[rc]

    def put(self, rc, prob: np.ndarray) -> None:
        if rc in self.items:
            return
        if self.last(rc) > self.current and self.bytes + prob.nbytes <= self.max_bytes:
            self.items[rc] = prob
            self.bytes += prob.nbytes

    def done(self, tile: Window) -> None:
        """``tile`` is finished: drop the chips no later tile touches."""
        self.current = self._index(tile.row_off, tile.col_off) + 1
        for rc in [rc for rc in self.items if self.last(rc) < self.current]:
            self.bytes -= self.items.pop(rc).nbytes
