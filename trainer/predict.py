"""Streaming tiled prediction: a scene in; class COG, confidence COG, polygons, class areas out.

One implementation for the CLI, the demo, evaluation and the HTTP service. The scene is cut into
output tiles (``tile_size``); each tile is a pure function of (model, window): the chips of a
global chip grid that touch the tile are read, run in batches, blended with a linear weight
ramp over the overlap, cropped to the tile and written. Memory is bounded by the tile size, not
the scene, and the result does not depend on the tiling (the same chips cover every pixel), so
independent workers can each take a list of tiles (see ``tiles`` / ``predict_tiles``).
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from datamodules.datamodule import map_bands
from datamodules.errors import UserError
from datamodules.imagery import ImageryError, Scene, SceneReader, open_scenes

from .areas import class_histogram, pixel_area_rows
from .polygons import PolygonCollector


class PredictError(UserError):
    pass


@dataclass
class PredictOptions:
    chip_size: int | None = None  # default: 512 for convolutional nets, the training patch for ViTs
    overlap: int | None = None  # default: the model's recorded overlap
    batch_size: int = 4
    tile_size: int = 2048  # output tile edge; bounds memory
    polygons: bool = True
    confidence: bool = True
    min_area_m2: float = 0.0
    simplify: float = 0.0  # tolerance in the scene CRS units
    sieve_pixels: int = 0
    confidence_threshold: float | None = None  # pixels below it become nodata
    resolution_tolerance: float = 0.25
    channels_last: bool = True


@dataclass
class ChipGrid:
    """Global chip origins along one axis: stride ``chip - overlap``, last chip flush with the edge."""

    length: int
    chip: int
    overlap: int
    starts: list[int] = field(init=False)

    def __post_init__(self):
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


def ramp(chip: int, overlap: int) -> np.ndarray:
    """2-D blending weights: 1 in the middle, a linear ramp to ~0 across the overlap."""
    r = max(overlap, 1)
    d = np.minimum(np.arange(chip), np.arange(chip)[::-1]).astype(np.float32)
    w1 = np.clip((d + 0.5) / r, 1e-3, 1.0)
    return np.outer(w1, w1)


def tiles(width: int, height: int, tile_size: int) -> list[Window]:
    return [
        Window(c, r, min(tile_size, width - c), min(tile_size, height - r))
        for r in range(0, height, tile_size)
        for c in range(0, width, tile_size)
    ]


class Predictor:
    """A loaded model bound to a scene: checks inputs, then predicts windows."""

    def __init__(self, model, scenes: list[Scene], options: PredictOptions):
        import torch

        self.model, self.scenes, self.o = model, scenes, options
        rec = model.record
        self.record = rec
        scene = scenes[0]
        try:
            idx = map_bands(rec["bands"], scene.bands, any_bands=False)
        except ValueError as e:
            raise PredictError(str(e)) from None
        self.band_index = idx
        res = scene.grid.res
        want = rec["resolution"]
        if abs(res[0] - want[0]) > options.resolution_tolerance * want[0]:
            raise PredictError(
                f"the scene's resolution is {res[0]:g} m but the model was trained at {want[0]:g} m; "
                f"resample the scene to {want[0]:g} m (e.g. gdalwarp -tr {want[0]:g} {want[1]:g}) first"
            )
        family = rec["backbone"]["spec"]["family"]
        self.chip = options.chip_size or (512 if family == "resnet" else rec["patch_size"])
        self.overlap = options.overlap if options.overlap is not None else rec.get("overlap", 32)
        if self.overlap >= self.chip:
            raise PredictError(
                f"overlap {self.overlap} must be smaller than the chip size {self.chip}"
            )
        g = scene.grid
        self.cols, self.rows = (
            ChipGrid(g.width, self.chip, self.overlap),
            ChipGrid(g.height, self.chip, self.overlap),
        )
        self.weight = ramp(self.chip, self.overlap)
        self.net = model.net.eval()
        if options.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.k = rec["num_classes"]
        self.readers = [SceneReader(s) for s in scenes]
        self.nodata = [s.nodata for s in scenes]

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def read(self, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """Model bands of every date for a window, padded to at least one chip; and validity."""
        frames, valid = [], np.ones((win.height, win.width), dtype=bool)
        for reader, nd in zip(self.readers, self.nodata, strict=True):
            data = reader.read(win)[self.band_index]
            if nd is not None:
                valid &= ~np.all(data == nd, axis=0)
            if np.issubdtype(data.dtype, np.floating):
                valid &= np.all(np.isfinite(data), axis=0)
            frames.append(data.astype(np.float32))
        x = np.stack(frames, 1) if len(frames) > 1 else frames[0]
        return x, valid

    def predict_window(self, tile: Window, data=None) -> dict:
        """Probabilities for one output tile; ``data`` is what :meth:`read_for` returned."""
        import torch

        data = data if data is not None else self.read_for(tile)
        x, valid_src, (r0, c0) = data
        a_r, a_c = tile.row_off, tile.col_off
        acc = np.zeros((self.k, tile.height, tile.width), dtype=np.float32)
        wsum = np.zeros((tile.height, tile.width), dtype=np.float32)
        chips = [
            (r, c)
            for r in self.rows.touching(a_r, a_r + tile.height)
            for c in self.cols.touching(a_c, a_c + tile.width)
        ]
        for i in range(0, len(chips), self.o.batch_size):
            batch = chips[i : i + self.o.batch_size]
            arr = np.stack([_crop(x, r - r0, c - c0, self.chip) for r, c in batch])
            t = torch.from_numpy(arr)
            if self.o.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                prob = torch.softmax(self.net(t), dim=1).float().numpy()
            for (r, c), p in zip(batch, prob, strict=True):
                # intersect chip [r, r+chip) with tile [a_r, a_r+h)
                y0, y1 = max(r, a_r), min(r + self.chip, a_r + tile.height)
                x0, x1 = max(c, a_c), min(c + self.chip, a_c + tile.width)
                w = self.weight[y0 - r : y1 - r, x0 - c : x1 - c]
                acc[:, y0 - a_r : y1 - a_r, x0 - a_c : x1 - a_c] += (
                    p[:, y0 - r : y1 - r, x0 - c : x1 - c] * w
                )
                wsum[y0 - a_r : y1 - a_r, x0 - a_c : x1 - a_c] += w
        prob = acc / np.maximum(wsum, 1e-12)
        valid = valid_src[a_r - r0 : a_r - r0 + tile.height, a_c - c0 : a_c - c0 + tile.width]
        return {"prob": prob, "valid": valid}

    def read_for(self, tile: Window):
        """Read the union of the chips touching ``tile`` (what ``predict_window`` needs)."""
        g = self.scenes[0].grid
        rs = self.rows.touching(tile.row_off, tile.row_off + tile.height)
        cs = self.cols.touching(tile.col_off, tile.col_off + tile.width)
        r0, c0 = rs[0], cs[0]
        r1, c1 = min(rs[-1] + self.chip, g.height), min(cs[-1] + self.chip, g.width)
        x, valid = self.read(Window(c0, r0, c1 - c0, r1 - r0))
        return x, valid, (r0, c0)


def _crop(x: np.ndarray, r: int, c: int, chip: int) -> np.ndarray:
    """A chip from the read region, edge-padded when the scene is smaller than a chip."""
    sub = x[..., r : r + chip, c : c + chip]
    ph, pw = chip - sub.shape[-2], chip - sub.shape[-1]
    if ph or pw:
        pad = [(0, 0)] * (sub.ndim - 2) + [(0, ph), (0, pw)]
        sub = np.pad(
            sub, pad, mode="reflect" if ph < sub.shape[-2] and pw < sub.shape[-1] else "edge"
        )
    return sub


def _profile(grid, dtype: str, nodata) -> dict:
    return {
        "driver": "GTiff", "crs": grid.crs, "transform": grid.transform, "width": grid.width,
        "height": grid.height, "count": 1, "dtype": dtype, "nodata": nodata, "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "DEFLATE", "bigtiff": "IF_SAFER",
    }  # fmt: skip


def to_cog(src: Path, dst: Path, resampling: str) -> None:
    """Copy a finished tiled GeoTIFF to a Cloud-Optimized GeoTIFF (GDAL's COG driver)."""
    from rasterio.shutil import copy

    copy(
        src,
        dst,
        driver="COG",
        compress="DEFLATE",
        blocksize=512,
        overview_resampling=resampling,
        resampling=resampling,
        bigtiff="IF_SAFER",
    )


def _hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255


def predict_scene(
    model,
    images: list[str | Path],
    out_dir: str | Path,
    *,
    bands: list[str] | None = None,
    sensor: str | None = None,
    options: PredictOptions | None = None,
    progress: bool = True,
    provenance: dict | None = None,
) -> dict:
    """Predict a scene to ``out_dir``: classes.tif, confidence.tif (COGs), polygons.geojson, summary.json."""
    from tqdm.auto import tqdm

    o = options or PredictOptions()
    rec = model.record
    t0 = time.time()
    try:
        scenes = open_scenes(images, bands=bands, sensor=sensor)
    except ImageryError as e:
        if "cannot tell the bands" in str(e):
            scenes = open_scenes(images, bands=_assume_model_bands(images, rec))
        else:
            raise PredictError(str(e)) from None
    pred = Predictor(model, scenes, o)
    grid = scenes[0].grid
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nod = int(rec.get("output_nodata", 255))
    class_names = [c["name"] for c in rec["classes"]]
    counts = np.zeros(len(rec["classes"]), dtype=np.int64)
    area_rows = pixel_area_rows(grid)
    area = np.zeros(len(rec["classes"]), dtype=np.float64)
    collector = PolygonCollector(grid, rec["classes"], sieve=o.sieve_pixels) if o.polygons else None
    windows = tiles(grid.width, grid.height, o.tile_size)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp = Path(tmp)
        cls_tmp = rasterio.open(tmp / "classes.tif", "w", **_profile(grid, "uint8", nod))
        conf_tmp = (
            rasterio.open(tmp / "confidence.tif", "w", **_profile(grid, "uint8", 255))
            if o.confidence
            else None
        )
        cls_tmp.write_colormap(1, {c["id"]: _hex_to_rgba(c["color"]) for c in rec["classes"]})
        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(pred.read_for, windows[0])
            for i, win in enumerate(
                tqdm(windows, desc="predict", unit="tile", disable=not progress)
            ):
                data = nxt.result()
                if i + 1 < len(windows):
                    nxt = pool.submit(pred.read_for, windows[i + 1])  # read ahead while computing
                res = pred.predict_window(win, data)
                prob, valid = res["prob"], res["valid"]
                classes = prob.argmax(0).astype(np.uint8)
                conf = prob.max(0)
                if o.confidence_threshold is not None:
                    valid = valid & (conf >= o.confidence_threshold)
                classes[~valid] = nod
                cls_tmp.write(classes, 1, window=win)
                if conf_tmp is not None:
                    c8 = np.round(conf * 100).astype(np.uint8)
                    c8[~valid] = 255
                    conf_tmp.write(c8, 1, window=win)
                counts += np.bincount(classes[valid].ravel(), minlength=len(counts))[: len(counts)]
                rows_area = area_rows[win.row_off : win.row_off + win.height]
                for k in range(len(counts)):
                    area[k] += float(((classes == k) & valid).sum(1) @ rows_area)
                if collector is not None:
                    collector.add(win, classes, conf, valid, nod)
        cls_tmp.close()
        to_cog(tmp / "classes.tif", out / "classes.tif", "mode")
        if conf_tmp is not None:
            conf_tmp.close()
            to_cog(tmp / "confidence.tif", out / "confidence.tif", "average")
    pred.close()
    summary = {
        "n_pixels": int(counts.sum()),
        "class_histogram": class_histogram(rec["classes"], counts, area),
        "crs": grid.crs.to_string(),
        "resolution": list(grid.res),
        "shape": [grid.height, grid.width],
        "outputs": {"classes": "classes.tif"}
        | ({"confidence": "confidence.tif"} if o.confidence else {}),
        "options": asdict(o) | {"chip_size": pred.chip, "overlap": pred.overlap},
        "provenance": {
            "model": getattr(model, "uri", None),
            "run_id": rec.get("run_id"),
            "dataset_id": rec.get("dataset_id"),
            "backbone": rec["backbone"]["name"],
            "inputs": [Path(p).name for p in images],
            "dates": [s.date.isoformat() if s.date else None for s in scenes],
            **(provenance or {}),
        },
        "seconds": round(time.time() - t0, 2),
    }
    if collector is not None:
        fc = collector.feature_collection(
            min_area_m2=o.min_area_m2, simplify=o.simplify, class_names=class_names
        )
        (out / "polygons.geojson").write_text(json.dumps(fc))
        summary["outputs"]["polygons"] = "polygons.geojson"
        summary["n_polygons"] = len(fc["features"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _assume_model_bands(images, rec) -> list[str]:
    with rasterio.open(images[0]) as ds:
        count = ds.count
    if count != len(rec["bands"]) or len(images) != 1:
        raise PredictError(
            f"cannot tell the bands of {Path(images[0]).name} ({count} bands, no band names); the model "
            f"needs {', '.join(rec['bands'])}. Pass --bands in file order."
        )
    warnings.warn(
        f"{Path(images[0]).name} has no band names; assuming the model's band order {rec['bands']}",
        stacklevel=2,
    )
    return list(rec["bands"])


__all__ = ["PredictOptions", "Predictor", "predict_scene", "tiles", "ChipGrid", "PredictError"]
