"""Chip datasets over a dataset folder: rasterio window reads of the pre-rasterized files.

- :class:`ChipDataset` (segmentation, change, multi-date): a TorchGeo ``GeoDataset`` indexed
  by geo-slices from TorchGeo samplers; it reads the image stack(s) and the unit raster by
  window (no vector file is ever re-read) and maps units to classes. Pixels of units outside
  the wanted set (another split, or beyond a label budget) get the ignore index in every chip,
  so labels never leak across splits.
- :class:`ClassificationChips`: the chips of ``chips.csv``, indexed by row.

Values stay raw sensor values: normalisation belongs to the model. Each worker process opens
its own file handles. Both read whole batches (``__getitems__``, which PyTorch's DataLoader
calls with a batch's indices): every chip is read straight into its place in the batch's
tensors, which share one buffer (in shared memory inside a worker), so a batch is never stacked
or copied again on its way to the training process (use :func:`collate` as the DataLoader's
``collate_fn``).
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pandas as pd
import rasterio
import shapely
import torch
from geopandas import GeoDataFrame
from rasterio.windows import Window
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate, get_worker_info
from torchgeo.datasets import GeoDataset

from .dates import day_number, parse_when
from .manifest import Dataset
from .rasterize import valid_pixels


def read_units(ds: Dataset) -> dict[str, np.ndarray]:
    """``units.csv`` as arrays; ``extent`` (the longer side of each unit's bounding box, px) is
    None for datasets made before it was recorded."""
    with open(ds.file("units_table")) as f:
        rows = list(csv.DictReader(f))
    sized = bool(rows) and "height" in rows[0]
    return {
        "unit_id": np.array([int(r["unit_id"]) for r in rows], dtype=np.int64),
        "class_id": np.array([int(r["class_id"]) for r in rows], dtype=np.int64),
        "pixels": np.array([int(r["pixels"]) for r in rows], dtype=np.int64),
        "split": np.array([r["split"] for r in rows]),
        "extent": np.array([max(int(r["height"]), int(r["width"])) for r in rows], dtype=np.int64)
        if sized
        else None,
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


def class_lookup(ds: Dataset, unit_ok: np.ndarray) -> np.ndarray:
    """Table unit id → class id for the wanted units, the ignore index for every other id.

    Every labelled pixel belongs to exactly one unit (but the guard band between pieces of a cut
    polygon: unit 0), and a unit has one class (polygons and units are drawn in the same order;
    mask regions are of one class), so ``lut[units]`` is the mask with other splits', unkept
    units' and guard-band pixels ignored: one read and one gather per chip.
    """
    u = read_units(ds)
    lut = np.full(len(unit_ok), ds.ignore_index, dtype=np.uint8)
    ok = unit_ok[u["unit_id"]]
    lut[u["unit_id"][ok]] = u["class_id"][ok]
    return lut


def batch_tensors(specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Empty tensors of the given shapes and dtypes, views into ONE buffer.

    In a DataLoader worker the buffer is in shared memory (as PyTorch's own collate allocates
    it), so a batch crosses to the training process as one shared segment: one file descriptor
    to pass instead of one per tensor, and no stacking copy.
    """
    sizes = {k: math.prod(shape) * dtype.itemsize for k, (shape, dtype) in specs.items()}
    offsets, total = {}, 0
    for k, n in sizes.items():
        offsets[k] = total
        total += -(-n // 64) * 64  # 64-byte aligned views
    if get_worker_info() is None:
        buf = torch.empty(total, dtype=torch.uint8)
    else:
        proto = torch.empty(0, dtype=torch.uint8)
        buf = proto.new(proto._typed_storage()._new_shared(total, device="cpu")).resize_(total)
    return {
        k: buf[offsets[k] : offsets[k] + sizes[k]].view(dtype).view(shape)
        for k, (shape, dtype) in specs.items()
    }


def collate(batch):
    """``collate_fn`` for datasets whose ``__getitems__`` returns a ready batch (a dict)."""
    return batch if isinstance(batch, dict) else default_collate(batch)


def _unbatch(batch: dict) -> dict:
    return {k: v[0] for k, v in batch.items()}


def _date_ordinals(ds: Dataset) -> torch.Tensor:
    """Each date as :func:`datamodules.imagery.day_number` (with its time of day, if known)."""
    return torch.tensor(
        [day_number(parse_when(d)) if d else 0.0 for d in ds.manifest.dates],
        dtype=torch.float64,
    )


class _Reader:
    """Per-process file handles and the pixel → lon/lat transform."""

    def __init__(self, ds: Dataset, keys: tuple[str, ...]):
        self.ds, self.keys, self.pid, self.files = ds, keys, None, {}
        m = ds.manifest
        # nodata pixels are set to the band means (0 once normalised), date by date; prediction
        # sets them too, in every date of a pixel missing from one (its output is nodata there)
        self.nodata = m["nodata"]
        self.fill = np.asarray(m["stats"]["mean"], dtype=np.float32)
        self.transform = rasterio.Affine(*m["transform"])
        self.height, self.width = m["shape"]

    def get(self) -> dict:
        if self.pid != os.getpid():
            from pyproj import Transformer

            self.files = {"images": [rasterio.open(p) for p in self.ds.images]}
            self.files |= {k: rasterio.open(self.ds.file(k)) for k in self.keys}
            self.files["lonlat"] = Transformer.from_crs(
                self.ds.manifest.crs_wkt, "EPSG:4326", always_xy=True
            )
            self.pid = os.getpid()
        return self.files

    def lonlat(self, wins: list[Window]) -> np.ndarray:
        """``[B, 2]`` lon/lat of the windows' centres."""
        rows = [w.row_off + w.height / 2 for w in wins]
        cols = [w.col_off + w.width / 2 for w in wins]
        xs, ys = rasterio.transform.xy(self.transform, rows, cols)
        lon, lat = self.get()["lonlat"].transform(np.asarray(xs), np.asarray(ys))
        return np.stack([lon, lat], axis=1)

    def image_shape(self, wins: list[Window], n_bands: int) -> tuple[int, ...]:
        """``[B, C, H, W]`` for one date, ``[B, C, T, H, W]`` for several."""
        h, w, t = int(wins[0].height), int(wins[0].width), len(self.ds.images)
        return (len(wins), n_bands, t, h, w) if t > 1 else (len(wins), n_bands, h, w)

    def read_images(self, out: torch.Tensor, wins: list[Window], band_indexes: list[int]) -> None:
        """Read every window of every date into ``out`` (float32, :meth:`image_shape`)."""
        files = self.get()["images"]
        view = out.numpy()
        multi = len(files) > 1
        every_band = band_indexes == list(range(1, files[0].count + 1))
        fill = self.fill[np.asarray(band_indexes) - 1][:, None]
        for k, win in enumerate(wins):
            for i, im in enumerate(files):
                data = im.read(window=win) if every_band else im.read(band_indexes, window=win)
                dst = view[k, :, i] if multi else view[k]
                np.copyto(dst, data)
                invalid = ~valid_pixels(data, self.nodata)
                if invalid.any():
                    dst[:, invalid] = fill

    def __getstate__(self):
        return {**self.__dict__, "pid": None, "files": {}}


class ChipDataset(GeoDataset):
    """Chips of one split of a segmentation/change dataset, indexed by TorchGeo geo-slices."""

    def __init__(
        self,
        ds: Dataset,
        split: str,
        band_indices: list[int],
        patch_size: int,
        keep_units: np.ndarray | None = None,
    ):
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
        self.unit_ok = split_lookup(ds, split, keep_units)
        self.unit_class = class_lookup(ds, self.unit_ok)
        self.date_ord = _date_ordinals(ds)
        self.ignore_index = ds.ignore_index
        self.reader = _Reader(ds, ("units",))

    def window_of(self, index) -> Window:
        x, y = index[0], index[1]
        col = round((x.start - self.transform.c) / self.transform.a)
        row = round((y.stop - self.transform.f) / self.transform.e)
        size = self.patch_size
        col = min(max(col, 0), max(self.width - size, 0))
        row = min(max(row, 0), max(self.height - size, 0))
        return Window(col, row, min(size, self.width), min(size, self.height))

    def __getitem__(self, index) -> dict:
        return _unbatch(self.__getitems__([index]))

    def __getitems__(self, indices: list) -> dict:
        f = self.reader.get()
        wins = [self.window_of(i) for i in indices]
        n, h, w = len(wins), int(wins[0].height), int(wins[0].width)
        out = batch_tensors(
            {
                "image": (self.reader.image_shape(wins, len(self.band_indexes)), torch.float32),
                "mask": ((n, h, w), torch.int64),
                "lonlat": ((n, 2), torch.float32),
                "date_ord": ((n, len(self.date_ord)), torch.float64),
                "window": ((n, 4), torch.int64),
            }
        )
        self.reader.read_images(out["image"], wins, self.band_indexes)
        mask = out["mask"].numpy()
        for k, win in enumerate(wins):
            np.copyto(mask[k], self.unit_class[f["units"].read(1, window=win)])
        out["lonlat"].numpy()[:] = self.reader.lonlat(wins)
        out["date_ord"][:] = self.date_ord
        out["window"].numpy()[:] = [[w.row_off, w.col_off, w.height, w.width] for w in wins]
        return out


class ClassificationChips(TorchDataset):
    """Scene-classification chips: a ``patch_size`` window centred on each chip of ``chips.csv``.

    ``label`` is the class id (int64), or with multi-label a 0/1 float32 vector over classes.
    """

    def __init__(self, ds: Dataset, chips: dict, band_indices: list[int], patch_size: int):
        self.band_indexes = [i + 1 for i in band_indices]
        self.patch_size = patch_size
        self.multi_label = bool(ds.manifest.multi_label)
        self.k = ds.num_classes
        self.rows, self.cols = chips["row"] + chips["size"] // 2, chips["col"] + chips["size"] // 2
        self.class_ids = chips["class_ids"]
        self.date_ord = _date_ordinals(ds)
        self.reader = _Reader(ds, ())

    def __len__(self) -> int:
        return len(self.rows)

    def window(self, i: int) -> Window:
        r = self.reader
        size = min(self.patch_size, r.height, r.width)
        row = min(max(int(self.rows[i]) - self.patch_size // 2, 0), r.height - size)
        col = min(max(int(self.cols[i]) - self.patch_size // 2, 0), r.width - size)
        return Window(col, row, size, size)

    def __getitem__(self, i: int) -> dict:
        return _unbatch(self.__getitems__([i]))

    def __getitems__(self, indices: list[int]) -> dict:
        wins = [self.window(i) for i in indices]
        n = len(wins)
        out = batch_tensors(
            {
                "image": (self.reader.image_shape(wins, len(self.band_indexes)), torch.float32),
                "label": ((n, self.k), torch.float32) if self.multi_label else ((n,), torch.int64),
                "lonlat": ((n, 2), torch.float32),
                "date_ord": ((n, len(self.date_ord)), torch.float64),
            }
        )
        self.reader.read_images(out["image"], wins, self.band_indexes)
        if self.multi_label:
            out["label"].zero_()
            for row, i in enumerate(indices):
                out["label"][row, list(self.class_ids[i])] = 1.0
        else:
            out["label"].numpy()[:] = [self.class_ids[i][0] for i in indices]
        out["lonlat"].numpy()[:] = self.reader.lonlat(wins)
        out["date_ord"][:] = self.date_ord
        return out
