"""LightningDataModule over a dataset folder, for every task in the manifest.

- segmentation / change / multi-date: training chips from one of two samplers (``sampler``):
  ``labels`` (:class:`~datamodules.samplers.LabelSampler`: a labelled pixel, then a chip that
  holds it) or ``random`` (TorchGeo ``RandomPatchSampler`` chips inside the train split's
  labelled area, kept only where at least ``min_labelled_fraction`` is labelled). ``auto`` takes
  ``random`` for dense labels (at least ``DENSE_FRACTION`` of the valid pixels labelled for
  training), else ``labels``. ``patch_size`` and ``chips_per_epoch`` default from the labels:
  for ``labels``, chips about twice the size of most label units (64-256 px) and about as many
  chips per epoch as it takes to see every labelled pixel once (``MIN_BATCHES`` batches at
  least, 512 chips at most); for ``random``, 128 px and 256 chips. ``GriddedPatchSampler`` chips over the val/test
  labelled areas, each chip once. Batches:
  ``image`` float32 ``[B, C, H, W]`` (``[B, C, T, H, W]`` for T dates; change: T = 2), ``mask``
  int64 ``[B, H, W]``, ``lonlat`` ``[B, 2]``, ``date_ord`` float64 ``[B, T]`` (day numbers: ordinal + fraction of the day), ``window``.
- classification: the chips of ``chips.csv``; every training chip once per epoch, reshuffled.
  Batches: ``image`` float32 ``[B, C, H, W]``, ``label`` int64 ``[B]`` (multi-label: float32
  ``[B, K]`` of 0/1), ``lonlat``, ``date_ord``.

``patch_size`` (chip edge in pixels) defaults to the dataset's chip size for classification
(a chip is what a label describes; an override that differs says so), else from the labels.
``budget`` keeps that many training label units (see :mod:`datamodules.budget`). Samplers are
rank-aware (see :mod:`datamodules.samplers`). Values stay raw: normalisation is the model's.
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import shapely
from torch.utils.data import DataLoader, Sampler
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from .bands import BandMappingError, map_bands
from .budget import select_budget
from .chips import read_chips
from .datasets import ChipDataset, ClassificationChips, collate, read_units
from .errors import UserError
from .manifest import load_dataset
from .samplers import (
    Coverage,
    LabelledPatchSampler,
    LabelPoints,
    LabelSampler,
    ShardedSampler,
    ShuffledShardSampler,
    coverage_grid,
)
from .splits import SPLITS

SAMPLERS = ("auto", "labels", "random")
DENSE_FRACTION = 0.25  # auto: labels on at least this share of the valid pixels are dense
MAX_CHIPS_PER_EPOCH = 512
# Sparse labels: an epoch is at least this many batches. A few small polygons are seen whole in
# a handful of chips, so this floor sets the steps per epoch. With one polygon per class
# (experiments/few-labels, 15 epochs) 8 batches an epoch reached held-out accuracy 0.8 only in
# the last epochs; 16 reached it in the second and ended at 0.88.
MIN_BATCHES = 16


class GeotuneDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str,
        patch_size: int | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        chips_per_epoch: int | None = None,
        sampler: str = "auto",
        min_labelled_fraction: float = 0.02,
        seed: int = 0,
        budget: int | None = None,
    ):
        super().__init__()
        self.ds = load_dataset(dataset)
        self.task = self.ds.manifest.task
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.chips_per_epoch = chips_per_epoch
        self.min_labelled_fraction = min_labelled_fraction
        self.seed = seed
        if budget is not None and budget < 1:
            raise UserError(f"data.budget must be a positive number of label units, not {budget}")
        self.budget = budget
        self.band_indices = list(range(len(self.ds.bands)))
        self._loaders: dict[str, tuple] = {}
        self._kept: np.ndarray | None = None
        if sampler not in SAMPLERS:
            raise UserError(f"data.sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        self.sampler = "chips" if self.task == "classification" else self._choose(sampler)
        self.patch_size = patch_size or self._default_patch()

    def configure_bands(self, model_bands: list[str], any_bands: bool = False) -> list[str]:
        """Choose the dataset bands that feed the model; returns their names in input order."""
        self.band_indices = map_bands(model_bands, self.ds.bands, any_bands)
        self._loaders.clear()
        return [self.ds.bands[i] for i in self.band_indices]

    def example_image(self):
        """One chip of zeros shaped as a training batch's images (``[1, C, H, W]``, or
        ``[1, C, T, H, W]`` for several dates): the model summary's example input, from which
        Lightning reports each layer's sizes and FLOPs."""
        import torch

        c, t, p = len(self.band_indices), len(self.ds.images), self.patch_size
        return torch.zeros((1, c, t, p, p) if t > 1 else (1, c, p, p))

    def _rank_world(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    # -- label units and budgets -------------------------------------------------------------
    def _train_units(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and (stratum) classes of the training label units: polygons/regions or chips."""
        if self.task == "classification":
            chips = read_chips(self.ds.file("chips"))
            sel = chips["split"] == "train"
            ids = chips["chip_id"][sel]
            labels = [chips["class_ids"][i] for i in np.nonzero(sel)[0]]
            freq = np.bincount([c for cs in labels for c in cs], minlength=self.ds.num_classes)
            return ids, np.array([min(cs, key=lambda c: (freq[c], c)) for cs in labels])
        u = read_units(self.ds)
        sel = u["split"] == "train"
        return u["unit_id"][sel], u["class_id"][sel]

    def kept_units(self) -> np.ndarray | None:
        """The training unit ids the budget keeps (None: no budget, all are used)."""
        if self.budget is None:
            return None
        if self._kept is None:
            ids, cls = self._train_units()
            self._kept = select_budget(ids, cls, self.budget, self.seed)
        return self._kept

    def train_units(self) -> int:
        """How many label units training uses."""
        kept = self.kept_units()
        return len(kept) if kept is not None else len(self._train_units()[0])

    # -- defaults from the labels -------------------------------------------------------------
    def _train_table(self) -> dict:
        """The training units kept (by the budget) of a segmentation/change dataset."""
        u = read_units(self.ds)
        sel = u["split"] == "train"
        if self.kept_units() is not None:
            sel &= np.isin(u["unit_id"], self.kept_units())
        return {k: (v[sel] if v is not None else None) for k, v in u.items()}

    def _choose(self, sampler: str) -> str:
        if sampler != "auto":
            return sampler
        labelled = int(self._train_table()["pixels"].sum())
        valid = self.ds.manifest.stats.get("valid_pixels") or math.prod(self.ds.manifest.shape)
        return "random" if labelled >= DENSE_FRACTION * valid else "labels"

    def _default_patch(self) -> int:
        """Classification: the chip size. Sparse labels: a multiple of 32 px about twice the
        extent of most (90%) training units, 64-256 px. Dense labels: 128 px. At most the scene."""
        m = self.ds.manifest
        if self.task == "classification":
            return int(m["chip_size"])
        extent = self._train_table()["extent"]
        patch = 128
        if self.sampler == "labels" and extent is not None and len(extent):
            e = float(np.percentile(extent, 90))
            patch = int(min(max(32 * math.ceil((e + 2 * max(16.0, e / 2)) / 32), 64), 256))
        return min(patch, *m["shape"])

    def _chips_for(self, points: LabelPoints, cov: Coverage) -> int:
        """Chips per epoch that show about every labelled training pixel once (expected
        labelled pixels per chip measured on a fixed draw), ``MIN_BATCHES`` batches at least."""
        r0, c0 = points.draw(np.random.default_rng(0), 256, self.patch_size)
        t = cov.t
        per_chip = (
            np.mean(
                [
                    cov.fraction((slice(t.c + c * t.a, None), slice(None, t.f + r * t.e)))
                    for r, c in zip(r0, c0, strict=True)
                ]
            )
            * self.patch_size**2
        )
        n = math.ceil(points.pixels / max(per_chip, 1.0))
        return int(min(max(n, MIN_BATCHES * self.batch_size), MAX_CHIPS_PER_EPOCH))

    def has_labels(self, split: str) -> bool:
        """Whether ``split`` holds any label (on every rank alike: read from the dataset)."""
        if self.task == "classification":
            return bool((read_chips(self.ds.file("chips"))["split"] == split).any())
        u = read_units(self.ds)
        return bool(u["pixels"][u["split"] == split].sum() > 0)

    def sampling(self) -> str:
        """How training chips are drawn, in a sentence; resolves ``chips_per_epoch``. The train
        split built for it is not kept: the trainer's rank may not be known yet."""
        n = self.chips("train")
        self._loaders.pop("train", None)
        if self.sampler == "chips":
            return f"{n} training chips of {self.patch_size} px per epoch"
        how = {
            "labels": "around labelled pixels",
            "random": f"at random where >= {self.min_labelled_fraction:.0%} is labelled",
        }[self.sampler]
        px = int(self._train_table()["pixels"].sum())
        return (
            f"{self.chips_per_epoch} training chips of {self.patch_size} px per epoch, drawn {how} "
            f"({px:,} labelled training pixels; data.sampler={self.sampler})"
        )

    # -- samplers ------------------------------------------------------------------------------
    def _split(self, split: str):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        if split not in self._loaders:
            make = self._chip_split if self.task == "classification" else self._patch_split
            self._loaders[split] = make(split)
        return self._loaders[split]

    def _chip_split(self, split: str):
        chip = int(self.ds.manifest.chip_size)
        if chip != self.patch_size and not self._loaders:
            warnings.warn(
                f"data.patch_size={self.patch_size} differs from the dataset's chip size {chip}: "
                f"chips are read as {self.patch_size}-px windows centred on each label",
                stacklevel=3,
            )
        chips = read_chips(self.ds.file("chips"))
        sel = chips["split"] == split
        if split == "train" and self.budget is not None:
            sel &= np.isin(chips["chip_id"], self.kept_units())
        rows = np.nonzero(sel)[0]
        subset = {
            k: (v[rows] if isinstance(v, np.ndarray) else [v[i] for i in rows])
            for k, v in chips.items()
        }
        dataset = ClassificationChips(self.ds, subset, self.band_indices, self.patch_size)
        rank, world = self._rank_world()
        items = list(range(len(rows)))
        if split == "train":
            if not items:
                raise UserError("the training split has no chips")
            return dataset, ShuffledShardSampler(items, rank, world, self.seed)
        return dataset, ShardedSampler(items, rank, world)

    def _patch_split(self, split: str):
        h, w = self.ds.manifest.shape
        if min(h, w) < self.patch_size:
            raise UserError(
                f"data.patch_size={self.patch_size} is larger than the scene ({h}x{w} px); lower it"
            )
        keep = self.kept_units() if split == "train" else None
        dataset = ChipDataset(self.ds, split, self.band_indices, self.patch_size, keep)
        cell = max(1, math.ceil(math.sqrt(h * w / 4e6)))  # exact (1 px) up to 4 Mpx
        grid = coverage_grid(self.ds.file("units"), dataset.unit_ok, (h, w), cell)
        cov = Coverage(grid, cell, dataset.transform, self.patch_size)
        res = dataset.res[0]
        rank, world = self._rank_world()
        if split == "train" and self.sampler == "labels":
            points = LabelPoints(
                self.ds.file("units"),
                dataset.unit_ok,
                dataset.unit_class,
                (h, w),
                int(self._train_table()["pixels"].sum()),
            )
            if self.chips_per_epoch is None:
                self.chips_per_epoch = self._chips_for(points, cov)
            n = max(1, self.chips_per_epoch // world)
            return dataset, LabelSampler(
                dataset, points, self.patch_size, n, rank, world, self.seed
            )
        if split == "train":
            self.chips_per_epoch = self.chips_per_epoch or 256
            roi = cov.roi(self.patch_size * res * 0.75)
            if roi is None:
                raise UserError(f"split {split!r} has no labelled pixels")
            roi = roi & shapely.box(*self.ds.manifest.bounds)
            inner = RandomPatchSampler(
                dataset, size=self.patch_size, length=self.chips_per_epoch, roi=roi
            )
            sampler: Sampler = LabelledPatchSampler(
                inner,
                cov,
                max(1, self.chips_per_epoch // world),
                self.min_labelled_fraction,
                rank,
                world,
                self.seed,
            )
            return dataset, sampler
        roi = cov.roi(0.0)
        items = []
        if roi is not None:
            grid_chips = GriddedPatchSampler(dataset, size=self.patch_size, roi=roi)
            items = [i for i in grid_chips if cov.fraction(i) > 0]
        return dataset, ShardedSampler(items, rank, world)

    def _loader(self, split: str) -> DataLoader:
        dataset, sampler = self._split(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate,
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
        """Chips per epoch of ``split`` on this rank."""
        return len(self._split(split)[1])


__all__ = ["SPLITS", "GeotuneDataModule", "ChipDataset", "map_bands", "BandMappingError"]
