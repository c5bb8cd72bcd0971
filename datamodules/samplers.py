"""Samplers that know their rank: different training chips per rank and epoch, every
validation/test chip exactly once across ranks.

Training chips of segmentation/change datasets come from :class:`LabelSampler` (around
labelled pixels: sparse labels) or :class:`LabelledPatchSampler` (random chips kept where
enough is labelled: dense labels); classification chips from :class:`ShuffledShardSampler`.

Each sampler is a ``DistributedSampler`` subclass that shards by an explicit ``rank`` and
``world`` (from the Lightning trainer), so Lightning does not wrap it in its own distributed
sampler (which would shard a second time and pad evaluation sets with repeated chips).
``set_epoch`` (called by Lightning every epoch) seeds the epoch's draw: chips are a function of
(seed, rank, epoch), so runs are reproducible and a resumed run draws what it would have drawn.
Without Lightning the epoch advances by itself after every pass.
"""

from __future__ import annotations

import math

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window
from torch.utils.data.distributed import DistributedSampler
from torchgeo.samplers import SpatialSampler

from .errors import UserError


class RankSampler(DistributedSampler):
    """Common state of the rank-aware samplers (no process group needed)."""

    def __init__(self, rank: int, world: int, seed: int, shuffle: bool):  # noqa: D107
        # DistributedSampler.__init__ needs a dataset and an initialised process group; the
        # attributes it would set are set here from explicit arguments instead.
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.rank, self.num_replicas, self.seed = rank, world, seed
        self.shuffle, self.drop_last, self.epoch = shuffle, False, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _next_epoch_rng(self) -> np.random.Generator:
        rng = np.random.default_rng([self.seed, self.rank, self.epoch])
        self.epoch += 1
        return rng


class ShardedSampler(RankSampler):
    """A fixed list of items split across ranks without padding: each is seen exactly once."""

    def __init__(self, items: list, rank: int = 0, world: int = 1):
        super().__init__(rank, world, 0, shuffle=False)
        self.items = list(items)[rank::world]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


class ShuffledShardSampler(RankSampler):
    """Training over a fixed list (classification chips): one seeded permutation per epoch,
    shared by all ranks, then dealt out ``rank::world``; every rank gets the same count (the
    remainder of the permutation is left for later epochs), so no chip repeats within an epoch."""

    def __init__(self, items: list, rank: int = 0, world: int = 1, seed: int = 0):
        super().__init__(rank, world, seed, shuffle=True)
        self.all_items = list(items)
        if len(self.all_items) < world:
            raise UserError(
                f"{len(self.all_items)} training chip(s) cannot feed {world} ranks; label more "
                "chips or train on fewer devices"
            )

    def __len__(self) -> int:
        return len(self.all_items) // self.num_replicas

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])  # the same order on every rank
        self.epoch += 1
        order = rng.permutation(len(self.all_items))[: len(self) * self.num_replicas]
        return iter([self.all_items[i] for i in order[self.rank :: self.num_replicas]])


class LabelledPatchSampler(RankSampler):
    """Random patches (TorchGeo ``RandomPatchSampler``) kept only where enough pixels are labelled.

    ``inner`` draws from the labelled area's region of interest; its random generator is
    replaced every epoch by one seeded with (seed, rank, epoch).
    """

    def __init__(
        self,
        inner,
        coverage: Coverage,
        length: int,
        min_fraction: float,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
    ):
        super().__init__(rank, world, seed, shuffle=True)
        self.inner, self.coverage = inner, coverage
        self.length, self.min_fraction = length, min_fraction

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        self.inner.generator = self._next_epoch_rng()
        n, tries = 0, 0
        while n < self.length:
            for index in self.inner:
                tries += 1
                if self.coverage.fraction(index) >= self.min_fraction:
                    yield index
                    n += 1
                    if n == self.length:
                        return
                if tries > 50 * self.length:
                    raise UserError(
                        f"could not find training chips with >= {self.min_fraction:.0%} labelled "
                        "pixels: the labels are too sparse for data.sampler=random. Use "
                        "data.sampler=labels (chips drawn around labelled pixels), or lower "
                        "data.min_labelled_fraction"
                    )


def coverage_grid(units_path, unit_ok: np.ndarray, shape, cell: int) -> np.ndarray:
    """Labelled pixels of a split per ``cell``×``cell`` block (a coarse, cheap density map)."""
    h, w = shape
    grid = np.zeros((math.ceil(h / cell), math.ceil(w / cell)), dtype=np.int64)
    step = cell * max(1, 2048 // cell)
    with rasterio.open(units_path) as src:
        for row in range(0, h, step):
            for col in range(0, w, step):
                win = Window(col, row, min(step, w - col), min(step, h - row))
                ok = unit_ok[src.read(1, window=win)]
                ph, pw = -ok.shape[0] % cell, -ok.shape[1] % cell
                ok = np.pad(ok, ((0, ph), (0, pw)))
                counts = ok.reshape(ok.shape[0] // cell, cell, ok.shape[1] // cell, cell).sum(
                    (1, 3)
                )
                grid[
                    row // cell : row // cell + counts.shape[0],
                    col // cell : col // cell + counts.shape[1],
                ] = counts
    return grid


class Coverage:
    """Where a split's labelled pixels are, per ``cell`` x ``cell`` px: chip fractions, the ROI.

    With ``cell`` = 1 the labelled fraction of a chip is exact; with larger cells (scenes over
    4 Mpx) it counts the cells a chip touches, so it can exceed the exact fraction near the
    edges of labelled areas by up to about 4 cells' share of the chip.
    """

    def __init__(self, grid: np.ndarray, cell: int, transform, patch: int):
        self.grid, self.cell, self.t, self.patch = grid, cell, transform, patch
        self.cum = np.pad(grid, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

    def fraction(self, index) -> float:
        """Labelled fraction of the chip at a TorchGeo slice (see the class docstring)."""
        col = (index[0].start - self.t.c) / self.t.a
        row = (index[1].stop - self.t.f) / self.t.e
        r0, c0 = max(int(row // self.cell), 0), max(int(col // self.cell), 0)
        r1 = min(int(math.ceil((row + self.patch) / self.cell)), self.grid.shape[0])
        c1 = min(int(math.ceil((col + self.patch) / self.cell)), self.grid.shape[1])
        if r1 <= r0 or c1 <= c0:
            return 0.0
        s = self.cum[r1, c1] - self.cum[r0, c1] - self.cum[r1, c0] + self.cum[r0, c0]
        return float(s) / (self.patch * self.patch)

    def roi(self, pad: float):
        """The labelled area as a (Multi)Polygon in map units, grown by ``pad`` map units.

        Traced on cells of at least 8 px: a simple outline for the random sampler to draw from.
        """
        from rasterio.features import shapes

        f = max(1, 8 // self.cell)
        g = self.grid
        g = np.pad(g, ((0, -g.shape[0] % f), (0, -g.shape[1] % f)))
        coarse = g.reshape(g.shape[0] // f, f, g.shape[1] // f, f).sum((1, 3))
        t = self.t @ rasterio.Affine.scale(self.cell * f)
        geoms = [
            shapely.geometry.shape(geom)
            for geom, v in shapes((coarse > 0).astype(np.uint8), transform=t)
            if v == 1
        ]
        return shapely.union_all(geoms).buffer(pad, join_style="mitre") if geoms else None


class LabelPoints:
    """Where a split's labelled pixels are, as a weighted list to draw from.

    One entry per labelled pixel (``cell`` = 1), or per (``cell`` x ``cell`` block, class) when
    there are more than ``max_points`` labelled pixels. An entry's weight is its pixel count
    divided by the square root of its class's count, so classes are drawn in proportion to the
    square root of their labelled pixels: a class of 100 px is drawn a tenth as often as one of
    10,000 px, not a hundredth.
    """

    def __init__(self, units_path, unit_ok, unit_class, shape, labelled: int, max_points=2_000_000):
        h, w = shape
        self.cell = 1 if labelled <= max_points else math.ceil(math.sqrt(labelled / max_points))
        self.shape = shape
        rows, cols, classes, counts = [], [], [], []
        step = max(self.cell, (2048 // self.cell) * self.cell)
        with rasterio.open(units_path) as src:
            for row in range(0, h, step):
                for col in range(0, w, step):
                    win = Window(col, row, min(step, w - col), min(step, h - row))
                    u = src.read(1, window=win)
                    ok = unit_ok[u]
                    if not ok.any():
                        continue
                    rr, cc = np.nonzero(ok)
                    cls = unit_class[u[ok]].astype(np.int64)
                    rr, cc = (rr + row) // self.cell, (cc + col) // self.cell
                    key = (rr * (w // self.cell + 1) + cc) * 256 + cls
                    key, n = np.unique(key, return_counts=True)
                    rows.append(key // 256 // (w // self.cell + 1))
                    cols.append(key // 256 % (w // self.cell + 1))
                    classes.append(key % 256)
                    counts.append(n)
        if not rows:
            raise UserError("the training split has no labelled pixels")
        self.rows = np.concatenate(rows).astype(np.int32)
        self.cols = np.concatenate(cols).astype(np.int32)
        self.classes = np.concatenate(classes).astype(np.int16)
        counts = np.concatenate(counts).astype(np.float64)
        per_class = np.bincount(self.classes, weights=counts)
        self.pixels = int(counts.sum())
        self.cum = np.cumsum(counts / np.sqrt(per_class[self.classes]))

    def draw(self, rng: np.random.Generator, n: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-left (row, col) of ``n`` chips of ``patch`` px, each holding a drawn labelled pixel
        (a random pixel of the drawn cell when ``cell`` > 1) at a random place in the chip."""
        h, w = self.shape
        i = np.searchsorted(self.cum, rng.random(n) * self.cum[-1], side="right")
        i = np.minimum(i, len(self.cum) - 1)
        r = np.minimum(
            self.rows[i].astype(np.int64) * self.cell + rng.integers(0, self.cell, n), h - 1
        )
        c = np.minimum(
            self.cols[i].astype(np.int64) * self.cell + rng.integers(0, self.cell, n), w - 1
        )
        r0 = np.clip(r - rng.integers(0, patch, n), 0, max(h - patch, 0))
        c0 = np.clip(c - rng.integers(0, patch, n), 0, max(w - patch, 0))
        return r0, c0


class LabelSampler(SpatialSampler, RankSampler):
    """Training chips around labelled pixels: a TorchGeo ``GeoSampler`` (spatial, random).

    Each chip is drawn as a labelled pixel of the split (:class:`LabelPoints`: classes weighted by
    the square root of their pixel counts), then a random chip position that contains it, so a
    few small polygons in a large scene give labelled chips at every step. ``length`` chips per
    epoch on this rank, a function of (seed, rank, epoch) like the other samplers here.
    """

    strategy = "random"

    def __init__(
        self, dataset, points: LabelPoints, size: int, length: int, rank=0, world=1, seed=0
    ):
        SpatialSampler.__init__(self, dataset)
        RankSampler.__init__(self, rank, world, seed, shuffle=True)
        self.points, self.size, self.length = points, size, length
        self.t = dataset.transform

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        r0, c0 = self.points.draw(self._next_epoch_rng(), self.length, self.size)
        t, size = self.t, self.size
        for r, c in zip(r0.tolist(), c0.tolist(), strict=True):
            x0, y1 = t.c + c * t.a, t.f + r * t.e
            yield slice(x0, x0 + size * t.a), slice(y1 + size * t.e, y1)
