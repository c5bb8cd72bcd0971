"""Writing a composite block by block: the per-band median of the clear observations, or the
clearest date of each period (:mod:`datamodules.composite` decides which and records it).

The median is taken by sorting each pixel's values (missing values sort last) and picking the
middle one or two: the same numbers as ``np.nanmedian``, several times faster on the stacks a
composite makes (``experiments/composite_median``).

Each block's outputs come from :meth:`Writer.outputs`, in this process (the next block read
while this one's median is taken) or on a Dask cluster's workers
(:mod:`datamodules.composite_cluster`); the files are written here, in block order, either way.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio

from .imagery import iter_windows
from .observe import BlockReader
from .progress import ProgressBar
from .sensors import get_sensor
from .stac import NoImageryError, Observation


def nanmedian(stack: np.ndarray) -> np.ndarray:
    """The median over axis 0 ignoring NaN (NaN where every value is NaN); equals
    ``np.nanmedian(stack, axis=0)`` for float32 and float64 stacks."""
    s = np.sort(stack, axis=0)
    n = np.isfinite(s).sum(axis=0)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(s, (n // 2)[None], axis=0)[0]
    out = (lo + hi) / s.dtype.type(2)
    out[n == 0] = np.nan
    return out


class Writer:
    """Writes the outputs of a composite of ``frames`` images from a :class:`BlockReader`."""

    def __init__(self, reader: BlockReader, frames: int = 1, cluster=None, report=None):
        """``cluster``: a Dask cluster (:class:`trainer.cluster.Cluster`) whose workers read and
        reduce strips of blocks (:mod:`datamodules.composite_cluster`); None: this process.
        ``report(blocks_done, blocks_total)`` is called as blocks are done."""
        self.reader, self.source, self.bands = reader, reader.source, reader.bands
        self.grid, self.read, self.frames = reader.grid, reader.read, frames
        self.cluster, self.report = cluster, report
        # AOI pixels: with >= 1 clear observation, clear in every frame, in all
        self._clear = [0, 0, 0]

    # outputs -----------------------------------------------------------------------------------
    def _open(self, path: Path, count: int, dtype: str, nodata):
        g = self.grid
        return rasterio.open(
            path,
            "w",
            driver="GTiff",
            crs=g.crs,
            transform=g.transform,
            width=g.width,
            height=g.height,
            count=count,
            dtype=dtype,
            nodata=nodata,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="DEFLATE",
            bigtiff="IF_SAFER",
        )

    def _image(self, path: Path):
        nd = self.source.nodata
        f = self._open(path, len(self.bands), self.source.dtype, float("nan") if nd is None else nd)
        f.descriptions = tuple(self.bands)
        sensor = get_sensor(self.source.sensor)  # the values are the sensor table's stored ones
        units = [sensor.unit(b) for b in self.bands]  # per band (Landsat's thermal band differs)
        f.scales = tuple(u.scale for u in units)
        f.offsets = tuple(u.offset for u in units)
        return f

    def _to_dtype(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.source.dtype)
        nd = float("nan") if self.source.nodata is None else self.source.nodata
        bad = ~np.isfinite(x)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            y = np.clip(np.rint(np.where(bad, 0, x)), info.min, info.max).astype(dtype)
            y[(y == nd) & ~bad] += 1 if nd < info.max else -1  # a clear pixel is never nodata
            y[bad] = nd
            return y
        return np.where(bad, nd, x).astype(dtype)

    def _read_ahead(self, pool, obs, blocks, bands: bool = True):
        """``(window, AOI mask, observations)`` of each block in order (no observations
        outside the AOI); the next block is read while the caller works on this one (its
        median and writes), one block ahead: the outputs are those of reading in turn."""

        def read(win):
            aoi = self.reader.aoi_mask(win)
            views = self.reader.observe(pool, obs, win, aoi, bands=bands) if aoi.any() else []
            return win, aoi, views

        with ThreadPoolExecutor(1) as ahead:
            pending = None
            for win in blocks:
                nxt = ahead.submit(read, win)
                if pending is not None:
                    yield pending.result()
                pending = nxt
            if pending is not None:
                yield pending.result()

    def _tally(self, count: np.ndarray, aoi: np.ndarray) -> None:
        self._clear[0] += int(((count > 0) & aoi).sum())
        self._clear[1] += int(((count >= self.frames) & aoi).sum())
        self._clear[2] += int(aoi.sum())

    # one block's outputs -----------------------------------------------------------------------
    def _median(self, obs, aoi, views) -> list[np.ndarray]:
        """The composite's values and the clear count of a block."""
        stack = [np.where(c, d, np.nan) for d, c in views if d is not None]
        count = sum((c for _d, c in views), np.zeros(aoi.shape, dtype=np.uint16))
        if stack:
            med = nanmedian(np.stack(stack))
        else:
            med = np.full((len(self.bands), *aoi.shape), np.nan, dtype=np.float32)
        self._tally(count, aoi)
        return [self._to_dtype(med), count.astype(np.uint16)]

    def _frames(self, obs, aoi, views) -> list[np.ndarray]:
        """Each frame's values and the clear count of a block."""
        if not views:
            views = [(None, np.zeros(aoi.shape, bool))] * len(obs)
        count, out = np.zeros(aoi.shape, dtype=np.uint16), []
        for d, c in views:
            x = (
                np.full((len(self.bands), *aoi.shape), np.nan, np.float32)
                if d is None
                else np.where(c, d, np.nan)
            )
            out.append(self._to_dtype(x))
            count += c
        self._tally(count, aoi)
        return [*out, count]

    def _rank(self, obs, aoi, views) -> list[np.ndarray]:
        """The clear AOI pixels of each observation in a block (masks only)."""
        return [np.array([int(c.sum()) for _d, c in views] or [0] * len(obs), dtype=np.int64)]

    def outputs(self, kind: str, pool, obs, blocks):
        """``(window, arrays)`` of each block in order: ``kind`` is median, frames or rank."""
        step = {"median": self._median, "frames": self._frames, "rank": self._rank}[kind]
        for win, aoi, views in self._read_ahead(pool, obs, blocks, bands=kind != "rank"):
            yield win, step(obs, aoi, views)

    def _computed(self, kind: str, obs, folder: Path, size: int, progress: bool, desc: str):
        """:meth:`outputs` of every block of the grid, here or on the cluster's workers."""
        wins = list(iter_windows(self.grid.width, self.grid.height, size))
        with ProgressBar(len(wins), progress, self.report, desc, "block") as bar:
            if self.cluster is None:
                with ThreadPoolExecutor(self.read.workers) as pool:
                    for win, arrays in self.outputs(kind, pool, obs, wins):
                        yield win, arrays
                        bar.update(1)
            else:
                from .composite_cluster import BlockRun

                yield from BlockRun(self, kind, obs, wins, size, folder).blocks(bar)

    # outputs -----------------------------------------------------------------------------------
    def write_median(self, obs, folder: Path, size: int, progress: bool) -> None:
        img = self._image(folder / "composite.tif")
        cnt = self._open(folder / "count.tif", 1, "uint16", None)
        with img, cnt:
            blocks = self._computed("median", obs, folder, size, progress, "composite")
            for win, (med, count) in blocks:
                img.write(med, window=win)
                cnt.write(count, 1, window=win)

    def best_dates(
        self, per_period, spans, folder: Path, size: int, progress: bool
    ) -> list[Observation]:
        """The observation with the most clear AOI pixels in each period (masks only)."""
        obs = [o for group in per_period for o in group]
        clear = np.zeros(len(obs), dtype=np.int64)
        for _win, (ranks,) in self._computed("rank", obs, folder, size, progress, "rank dates"):
            clear += ranks
        chosen, i0 = [], 0
        for k, ((a, b), group) in enumerate(zip(spans, per_period, strict=True), 1):
            ranks = clear[i0 : i0 + len(group)]
            i0 += len(group)
            if not ranks.any():
                days = ", ".join(o.date.isoformat() for o in group)
                raise NoImageryError(
                    f"the {len(group)} acquisition(s) between {a} and {b} (period {k} of "
                    f"{len(spans)}: {days}) have no clear view of the area (clouds, shadows or "
                    "no data over every pixel): widen the date range or ask for fewer dates"
                )
            chosen.append(group[int(np.argmax(ranks))])  # ties: the earlier date
        return chosen

    def write_frames(self, obs, names, folder: Path, size: int, progress: bool) -> None:
        files = [self._image(folder / n) for n in names]
        cnt = self._open(folder / "count.tif", 1, "uint16", None)
        try:
            for win, arrays in self._computed("frames", obs, folder, size, progress, "frames"):
                *values, count = arrays
                for f, x in zip(files, values, strict=True):
                    f.write(x, window=win)
                cnt.write(count, 1, window=win)
        finally:
            for f in [*files, cnt]:
                f.close()

    def reset_counts(self) -> None:
        """Forget what was read (a worker's copy starts each strip from nothing)."""
        r = self.reader
        r.pixels, r.notes, r.resampling, self._clear = Counter(), {}, {}, [0, 0, 0]

    def counts(self) -> dict:
        """What the blocks read so far add to the provenance (see :meth:`add_counts`)."""
        r = self.reader
        return {
            "pixels": dict(r.pixels),
            "notes": r.notes,
            "resampling": {k: sorted(v) for k, v in r.resampling.items()},
            "clear": list(self._clear),
        }

    def add_counts(self, counts: dict) -> None:
        """Another process's :meth:`counts` added to this writer's, as if read here."""
        r = self.reader
        r.pixels.update(counts["pixels"])
        for item, notes in counts["notes"].items():
            mine = r.notes.setdefault(item, [])
            mine += [n for n in notes if n not in mine]
        for band, how in counts["resampling"].items():
            r.resampling.setdefault(band, set()).update(how)
        self._clear = [a + b for a, b in zip(self._clear, counts["clear"], strict=True)]

    @property
    def n_clear(self) -> int:
        return self._clear[0]

    def clear_fraction(self) -> float:
        """Share of the AOI with at least one clear observation (frames: in any frame)."""
        return round(self._clear[0] / self._clear[2], 4) if self._clear[2] else 0.0

    def usable_fraction(self) -> float:
        """Share of the AOI a model can use: clear in every frame (a composite: as above)."""
        return round(self._clear[1] / self._clear[2], 4) if self._clear[2] else 0.0


__all__ = ["Writer", "nanmedian"]
