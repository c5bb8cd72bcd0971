"""Ingestion: validate imagery + labels, rasterize once, stats, spatial splits → dataset folder.

One code path serves ``geotune data add`` and ``POST /v1/datasets``. Everything streams window
by window (scenes may be larger than memory). The folder is built under a temporary name and
appears only when complete (see :mod:`datamodules.manifest`).
"""

from __future__ import annotations

import csv
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from .imagery import Grid, ImageryError, SceneReader, gtiff_profile, open_scenes
from .labels import RASTER_SUFFIXES, ClassTable, LabelError, rasterize_window, read_vector
from .manifest import Dataset, DatasetWriter, slugify
from .splits import SPLITS, assign_blocks, check_split_coverage

IGNORE_INDEX = 255


class _Moments:
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


def _valid(data: np.ndarray, nodata) -> np.ndarray:
    valid = np.ones(data.shape[1:], dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~np.all(data == nodata, axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    return valid


def _extent_text(bounds, crs) -> str:
    from rasterio.warp import transform_bounds

    ll = transform_bounds(crs, "EPSG:4326", *bounds)
    return f"lon {ll[0]:.4f}..{ll[2]:.4f}, lat {ll[1]:.4f}..{ll[3]:.4f}"


def _prepare_vector(labels: Path, class_column, grid: Grid, classes_file):
    gdf = read_vector(labels, class_column)
    gdf = gdf.to_crs(grid.crs)
    lb = gdf.total_bounds
    ib = grid.bounds
    if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
        raise LabelError(
            f"the labels lie entirely outside the imagery: labels cover {_extent_text(lb, grid.crs)}, "
            f"the imagery covers {_extent_text(ib, grid.crs)}. Check that they are of the same place "
            "and that the labels' CRS is right."
        )
    from shapely.geometry import box

    inside = gdf.intersects(box(*ib))
    if not inside.all():
        warnings.warn(
            f"{int((~inside).sum())} label(s) outside the imagery were dropped", stacklevel=2
        )
        gdf = gdf[inside].reset_index(drop=True)
    table = (
        ClassTable.from_file(classes_file, gdf["value"])
        if classes_file
        else ClassTable.infer(gdf["value"])
    )
    ids = table.id_of()
    gdf["class_id"] = gdf["value"].map(lambda v: ids[v] if v in ids else ids[str(v)])
    gdf["unit_id"] = np.arange(1, len(gdf) + 1, dtype=np.int32)
    gdf["area"] = gdf.geometry.area
    return gdf, table


def _mask_values(mask_path: Path, grid: Grid, ignore_values: set):
    """The mask warped onto the image grid (nearest), the values to ignore, the class values."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    try:
        src = rasterio.open(mask_path)
    except rasterio.errors.RasterioIOError as e:
        raise LabelError(f"cannot read label raster {mask_path.name}: {e}") from None
    if src.crs is None:
        raise LabelError(
            f"label raster {mask_path.name} has no CRS; georeference it like the imagery"
        )
    if src.nodata is not None:
        ignore_values = ignore_values | {src.nodata}
    vrt = WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.nearest,
        nodata=src.nodata,
    )
    values: set = set()
    for _, w in _windows(grid, 1024):
        values |= set(np.unique(vrt.read(1, window=w)).tolist())
    values -= ignore_values
    if not values:
        raise LabelError(f"label raster {mask_path.name} has no labelled pixels over the imagery")
    return vrt, ignore_values, sorted(int(v) for v in values)


def _windows(grid: Grid, size: int):
    for row in range(0, grid.height, size):
        for col in range(0, grid.width, size):
            yield (
                (row, col),
                Window(col, row, min(size, grid.width - col), min(size, grid.height - row)),
            )


def ingest(
    *,
    name: str,
    images: list[str | Path],
    labels: str | Path,
    class_column: str | None = None,
    sensor: str | None = None,
    bands: list[str] | None = None,
    dates: list[str | None] | None = None,
    classes_file: str | Path | None = None,
    mask_ignore_values: list[int] | None = None,
    owner: str = "local",
    dataset_id: str | None = None,
    root: Path | None = None,
    block_size: int = 256,
    split_fractions: dict[str, float] | None = None,
    seed: int = 0,
    min_class_pixels: int = 20,
    progress: bool = True,
) -> Dataset:
    """Build a dataset folder from imagery + labels; returns the committed :class:`Dataset`."""
    from tqdm.auto import tqdm

    fractions = split_fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
    scenes = open_scenes(images, bands=bands, sensor=sensor, dates=dates)
    grid = scenes[0].grid
    labels = Path(labels).expanduser()
    is_mask = labels.suffix.lower() in RASTER_SUFFIXES
    if is_mask:
        vrt, ignore_values, values = _mask_values(labels, grid, set(mask_ignore_values or []))
        table = (
            ClassTable.from_file(classes_file, values) if classes_file else ClassTable.infer(values)
        )
        lut = np.full(max(values) + 1, IGNORE_INDEX, dtype=np.uint8)
        for c in table.classes:
            lut[int(c["value"])] = c["id"]
        gdf = None
    else:
        gdf, table = _prepare_vector(labels, class_column, grid, classes_file)
        sindex = gdf.sindex
    k = len(table.classes)
    if k >= IGNORE_INDEX:
        raise LabelError(f"{k} classes; at most {IGNORE_INDEX - 1} are supported")

    dataset_id = dataset_id or slugify(name)
    writer = DatasetWriter(dataset_id, root)
    try:
        image_names = (
            ["image.tif"] if len(scenes) == 1 else [f"image_t{t}.tif" for t in range(len(scenes))]
        )
        readers = [SceneReader(s) for s in scenes]
        outs = [
            rasterio.open(
                writer.tmp / n, "w", **gtiff_profile(grid, len(s.bands), s.dtype, s.nodata)
            )
            for n, s in zip(image_names, scenes, strict=True)
        ]
        for out, s in zip(outs, scenes, strict=True):
            out.descriptions = tuple(s.bands)
            out.update_tags(sensor=sensor or "", date=s.date.isoformat() if s.date else "unknown")
        mask_out = rasterio.open(
            writer.tmp / "mask.tif", "w", **gtiff_profile(grid, 1, "uint8", IGNORE_INDEX)
        )
        units_out = rasterio.open(
            writer.tmp / "units.tif", "w", **gtiff_profile(grid, 1, "int32", 0)
        )
        moments = _Moments(len(scenes[0].bands))
        unit_stats: dict[int, np.ndarray] = {}  # unit id → [pixels, sum_row, sum_col, class]
        next_unit = 1
        valid_pixels = 0
        step = max(block_size, (1024 // block_size) * block_size)
        wins = list(_windows(grid, step))
        for (row, col), win in tqdm(wins, desc="ingest", unit="window", disable=not progress):
            datas = [r.read(win) for r in readers]
            valid = np.ones((win.height, win.width), dtype=bool)
            for out, d, s in zip(outs, datas, scenes, strict=True):
                out.write(d, window=win)
                valid &= _valid(d, s.nodata)
            for d in datas:
                moments.update(d, valid)
            valid_pixels += int(valid.sum())
            wt = window_transform(win, grid.transform)
            if is_mask:
                raw = vrt.read(1, window=win)
                mask = np.where(
                    (raw >= 0) & (raw < len(lut)), lut[np.clip(raw, 0, len(lut) - 1)], IGNORE_INDEX
                ).astype(np.uint8)
                mask[~valid] = IGNORE_INDEX
                units, next_unit = _mask_units(mask, block_size, row, col, next_unit, k)
            else:
                from shapely.geometry import box

                bb = rasterio.windows.bounds(win, grid.transform)
                sub = gdf.iloc[sindex.query(box(*bb), predicate="intersects")]
                mask, units = rasterize_window(sub, wt, (win.height, win.width), IGNORE_INDEX)
                mask[~valid] = IGNORE_INDEX
                units[~valid] = 0
            mask_out.write(mask, 1, window=win)
            units_out.write(units, 1, window=win)
            _accumulate_units(unit_stats, units, mask, row, col)
        for f in [*outs, mask_out, units_out]:
            f.close()
        for r in readers:
            r.close()
        if valid_pixels == 0:
            raise ImageryError("the imagery is all nodata: every pixel equals the nodata value")
        if not unit_stats:
            raise LabelError(
                "no labelled pixel falls on valid imagery (labels over nodata or outside)"
            )

        unit_ids = np.array(sorted(unit_stats))
        st = np.array([unit_stats[u] for u in unit_ids])
        pixels, cls = st[:, 0].astype(np.int64), st[:, 3].astype(np.int64)
        cy, cx = st[:, 1] / pixels, st[:, 2] / pixels
        nbx = -(-grid.width // block_size)
        unit_block = (cy // block_size).astype(np.int64) * nbx + (cx // block_size).astype(np.int64)
        block_split = assign_blocks(unit_block, cls, pixels, k, fractions, seed)
        unit_split = np.array([block_split[int(b)] for b in unit_block])
        counts = {
            s: np.bincount(cls[unit_split == s], weights=pixels[unit_split == s], minlength=k)
            for s in SPLITS
            if fractions.get(s, 0) > 0
        }
        check_split_coverage(counts, [c["name"] for c in table.classes], min_class_pixels)

        with open(writer.tmp / "units.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["unit_id", "class_id", "pixels", "block", "split", "row", "col"])
            for u, c, n, b, s, y, x in zip(
                unit_ids, cls, pixels, unit_block, unit_split, cy, cx, strict=True
            ):
                w.writerow(
                    [int(u), int(c), int(n), int(b), s, round(float(y), 1), round(float(x), 1)]
                )

        classes = table.to_json()
        for c in classes:
            sel = cls == c["id"]
            c["pixels"] = int(pixels[sel].sum())
            c["units"] = int(sel.sum())
        manifest = {
            "id": dataset_id,
            "name": name,
            "owner": owner,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "task": "segmentation",
            "classes": classes,
            "num_classes": k,
            "ignore_index": IGNORE_INDEX,
            "output_nodata": IGNORE_INDEX,
            "sensor": sensor,
            "bands": scenes[0].bands,
            "dtype": scenes[0].dtype,
            "nodata": scenes[0].nodata,
            "images": [
                {"path": n, "date": s.date.isoformat() if s.date else None}
                for n, s in zip(image_names, scenes, strict=True)
            ],
            "dates": [s.date.isoformat() if s.date else None for s in scenes],
            "mask": "mask.tif",
            "units": "units.tif",
            "units_table": "units.csv",
            "crs": grid.crs.to_string(),
            "crs_wkt": grid.crs.to_wkt(),
            "resolution": list(grid.res),
            "transform": list(grid.transform)[:6],
            "shape": [grid.height, grid.width],
            "bounds": list(grid.bounds),
            "stats": {
                "mean": moments.mean.round(4).tolist(),
                "std": moments.std.round(4).tolist(),
                "valid_pixels": valid_pixels,
            },
            "label_kind": "mask" if is_mask else "polygons",
            "splits": {
                "method": "blocks",
                "block_size": block_size,
                "seed": seed,
                "fractions": fractions,
                "units": {s: int((unit_split == s).sum()) for s in counts},
                "pixels": {
                    s: {c["slug"]: int(v) for c, v in zip(classes, counts[s], strict=True)}
                    for s in counts
                },
            },
            "source": {
                "images": [str(Path(p).name) for p in images],
                "labels": labels.name,
                "class_column": class_column,
            },
        }
        if gdf is not None:
            manifest["source"]["n_invalid_repaired"] = int(gdf.attrs.get("n_invalid_repaired", 0))
        return writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise


def _accumulate_units(stats: dict, units: np.ndarray, mask: np.ndarray, row: int, col: int) -> None:
    sel = units > 0
    if not sel.any():
        return
    u = units[sel]
    rr, cc = np.nonzero(sel)
    ids, inv, n = np.unique(u, return_inverse=True, return_counts=True)
    srow = np.bincount(inv, weights=rr + row)
    scol = np.bincount(inv, weights=cc + col)
    cls = np.zeros(len(ids))
    cls[inv] = mask[sel]
    for i, uid in enumerate(ids.tolist()):
        if uid in stats:
            stats[uid][:3] += (n[i], srow[i], scol[i])
        else:
            stats[uid] = np.array([n[i], srow[i], scol[i], cls[i]], dtype=np.float64)


def _mask_units(mask: np.ndarray, block: int, row0: int, col0: int, next_unit: int, k: int):
    """Units of a mask: connected regions of one class within one split block."""
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
