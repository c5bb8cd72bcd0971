"""LightningDataModule over a dataset folder: TorchGeo samplers, rasterio window reads.

Chips come from :class:`ChipDataset`, a TorchGeo ``GeoDataset`` that reads the pre-rasterized
stack, mask and unit rasters by window (no vector file is ever re-read). Training draws
``RandomPatchSampler`` chips inside the train split's labelled area; validation and test use a
``GriddedPatchSampler`` grid over their labelled areas, each chip once. Pixels of units from
another split are set to the ignore index in every chip, so labels never leak across splits.
Values stay raw sensor values: normalisation belongs to the model (see trainer.heads).
"""

from __future__ import annotations

import csv
import math
import os
from datetime import date

import lightning as L
import numpy as np
import pandas as pd
import rasterio
import shapely
import torch
from geopandas import GeoDataFrame
from rasterio.windows import Window
from torch.utils.data import DataLoader, Sampler
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from .errors import UserError
from .manifest import Dataset, load_dataset
from .splits import SPLITS


class BandMappingError(UserError):
    pass


def map_bands(model_bands: list[str], data_bands: list[str], any_bands: bool = False) -> list[int]:
    """Indices of the dataset's bands that feed the model, in the model's order."""
    missing = [b for b in model_bands if b not in data_bands]
    if missing:
        raise BandMappingError(
            f"the model needs bands {', '.join(model_bands)}; the dataset lacks {', '.join(missing)} "
            f"(it has {', '.join(data_bands)}). Use a backbone that fits these bands, or random "
            "weights (backbone.weights=random) to train on the dataset's own bands."
        )
    extra = [b for b in data_bands if b not in model_bands]
    if extra:
        import warnings

        warnings.warn(f"dataset bands {', '.join(extra)} are not inputs of the model and are not used", stacklevel=2)
    return [data_bands.index(b) for b in model_bands]


class ChipDataset(GeoDataset):
    """Chips of one split of a dataset folder, indexed by TorchGeo geo-slices."""

    def __init__(self, ds: Dataset, split: str, band_indices: list[int], patch_size: int):
        self.ds = ds
        self.split = split
        self.band_indexes = [i + 1 for i in band_indices]
        self.patch_size = patch_size
        m = ds.manifest
        self.height, self.width = m["shape"]
        self.transform = rasterio.Affine(*m["transform"])
        self._res = tuple(m["resolution"])
        left, bottom, right, top = m["bounds"]
        interval = pd.IntervalIndex.from_tuples(
            [(pd.Timestamp.min, pd.Timestamp.max)], closed="both", name="datetime"
        )
        self.index = GeoDataFrame(
            {"filepath": [str(ds.images[0])]},
            index=interval,
            geometry=[shapely.box(left, bottom, right, top)],
            crs=m["crs_wkt"],
        )
        self.unit_ok = split_lookup(ds, split)
        self.date_ord = torch.tensor(
            [date.fromisoformat(d).toordinal() if d else 0 for d in m["dates"]], dtype=torch.int64
        )
        self.ignore_index = ds.ignore_index
        self._files: dict = {}
        self._to_lonlat = None

    def _handles(self):
        pid = os.getpid()
        if self._files.get("pid") != pid:
            self._files = {
                "pid": pid,
                "images": [rasterio.open(p) for p in self.ds.images],
                "mask": rasterio.open(self.ds.file("mask")),
                "units": rasterio.open(self.ds.file("units")),
            }
            from pyproj import Transformer

            self._to_lonlat = Transformer.from_crs(
                self.ds.manifest["crs_wkt"], "EPSG:4326", always_xy=True
            )
        return self._files

    def window_of(self, index) -> Window:
        x, y = index[0], index[1]
        col = round((x.start - self.transform.c) / self.transform.a)
        row = round((y.stop - self.transform.f) / self.transform.e)
        size = self.patch_size
        col = min(max(col, 0), max(self.width - size, 0))
        row = min(max(row, 0), max(self.height - size, 0))
        return Window(col, row, min(size, self.width), min(size, self.height))

    def __getitem__(self, index) -> dict:
        f = self._handles()
        win = self.window_of(index)
        frames = [im.read(self.band_indexes, window=win) for im in f["images"]]
        image = np.stack(frames, axis=1) if len(frames) > 1 else frames[0]
        mask = f["mask"].read(1, window=win).astype(np.int64)
        units = f["units"].read(1, window=win)
        mask[~self.unit_ok[units]] = self.ignore_index
        cx, cy = rasterio.transform.xy(
            self.transform, win.row_off + win.height / 2, win.col_off + win.width / 2
        )
        lon, lat = self._to_lonlat.transform(cx, cy)
        return {
            "image": torch.from_numpy(image.astype(np.float32)),
            "mask": torch.from_numpy(mask),
            "lonlat": torch.tensor([lon, lat], dtype=torch.float32),
            "date_ord": self.date_ord,
            "window": torch.tensor([win.row_off, win.col_off, win.height, win.width]),
        }


def read_units(ds: Dataset) -> dict[str, np.ndarray]:
    with open(ds.file("units_table")) as f:
        rows = list(csv.DictReader(f))
    return {
        "unit_id": np.array([int(r["unit_id"]) for r in rows], dtype=np.int64),
        "class_id": np.array([int(r["class_id"]) for r in rows], dtype=np.int64),
        "pixels": np.array([int(r["pixels"]) for r in rows], dtype=np.int64),
        "split": np.array([r["split"] for r in rows]),
    }


def split_lookup(ds: Dataset, split: str, keep_units: np.ndarray | None = None) -> np.ndarray:
    """Boolean table over unit ids: True where the unit belongs to ``split`` (and is kept)."""
    u = read_units(ds)
    lut = np.zeros(int(u["unit_id"].max(initial=0)) + 1, dtype=bool)
    sel = u["split"] == split
    if keep_units is not None:
        sel &= np.isin(u["unit_id"], keep_units)
    lut[u["unit_id"][sel]] = True
    return lut


def coverage_grid(ds: Dataset, unit_ok: np.ndarray, cell: int) -> np.ndarray:
    """Labelled pixels of a split per ``cell``×``cell`` block (a coarse, cheap density map)."""
    h, w = ds.manifest["shape"]
    grid = np.zeros((math.ceil(h / cell), math.ceil(w / cell)), dtype=np.int64)
    step = cell * max(1, 2048 // cell)
    with rasterio.open(ds.file("units")) as src:
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


class _Coverage:
    def __init__(self, grid: np.ndarray, cell: int, transform, patch: int):
        self.grid, self.cell, self.t, self.patch = grid, cell, transform, patch
        self.cum = np.pad(grid, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

    def fraction(self, index) -> float:
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
        """The labelled area as a (Multi)Polygon in map units, grown by ``pad`` map units."""
        from rasterio.features import shapes

        t = self.t @ rasterio.Affine.scale(self.cell)
        geoms = [
            shapely.geometry.shape(g)
            for g, v in shapes((self.grid > 0).astype(np.uint8), transform=t)
            if v == 1
        ]
        return shapely.union_all(geoms).buffer(pad, join_style="mitre") if geoms else None


class LabelledPatchSampler(Sampler):
    """Random patches (TorchGeo ``RandomPatchSampler``) kept only where enough pixels are labelled."""

    def __init__(
        self, inner: RandomPatchSampler, coverage: _Coverage, length: int, min_fraction: float
    ):
        self.inner, self.coverage, self.length, self.min_fraction = (
            inner,
            coverage,
            length,
            min_fraction,
        )

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
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
                    raise RuntimeError(
                        f"could not find training chips with >= {self.min_fraction:.0%} labelled pixels; "
                        "lower data.min_labelled_fraction or data.patch_size"
                    )


class ShardedSampler(Sampler):
    """A fixed list of chips split across ranks without padding: each chip is seen exactly once."""

    def __init__(self, items: list, rank: int = 0, world: int = 1):
        self.items = items[rank::world]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


class GeotuneDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str,
        patch_size: int = 128,
        batch_size: int = 8,
        num_workers: int = 2,
        chips_per_epoch: int = 256,
        min_labelled_fraction: float = 0.02,
        seed: int = 0,
    ):
        super().__init__()
        self.ds = load_dataset(dataset)
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.chips_per_epoch = chips_per_epoch
        self.min_labelled_fraction = min_labelled_fraction
        self.seed = seed
        self.band_indices = list(range(len(self.ds.bands)))
        self._loaders: dict[str, tuple] = {}

    def configure_bands(self, model_bands: list[str], any_bands: bool = False) -> list[str]:
        """Choose the dataset bands that feed the model; returns their names in input order."""
        self.band_indices = map_bands(model_bands, self.ds.bands, any_bands)
        return [self.ds.bands[i] for i in self.band_indices]

    def _rank_world(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _split(self, split: str):
        if split in self._loaders:
            return self._loaders[split]
        h, w = self.ds.manifest["shape"]
        if min(h, w) < self.patch_size:
            raise UserError(
                f"data.patch_size={self.patch_size} is larger than the scene ({h}x{w} px); lower it"
            )
        dataset = ChipDataset(self.ds, split, self.band_indices, self.patch_size)
        cell = max(8, int(math.ceil(math.sqrt(h * w / 4e6))))
        cov = _Coverage(
            coverage_grid(self.ds, dataset.unit_ok, cell), cell, dataset.transform, self.patch_size
        )
        res = dataset.res[0]
        rank, world = self._rank_world()
        if split == "train":
            roi = cov.roi(self.patch_size * res * 0.75)
            if roi is None:
                raise UserError(f"split {split!r} has no labelled pixels")
            roi = roi & shapely.box(*self.ds.manifest["bounds"])
            inner = RandomPatchSampler(
                dataset,
                size=self.patch_size,
                length=self.chips_per_epoch,
                roi=roi,
                generator=self.seed * 1009 + rank,
            )
            sampler: Sampler = LabelledPatchSampler(
                inner, cov, max(1, self.chips_per_epoch // world), self.min_labelled_fraction
            )
        else:
            roi = cov.roi(0.0)
            items = (
                []
                if roi is None
                else [
                    i
                    for i in GriddedPatchSampler(dataset, size=self.patch_size, roi=roi)
                    if cov.fraction(i) > 0
                ]
            )
            sampler = ShardedSampler(items, rank, world)
        self._loaders[split] = (dataset, sampler)
        return dataset, sampler

    def _loader(self, split: str) -> DataLoader:
        dataset, sampler = self._split(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def chips(self, split: str) -> int:
        return len(self._split(split)[1])


__all__ = ["SPLITS", "GeotuneDataModule", "ChipDataset", "map_bands", "BandMappingError"]
