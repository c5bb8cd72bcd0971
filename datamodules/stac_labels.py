"""``geotune data add`` by area and dates: what is checked before any imagery is fetched (the
dataset name, the options, the labels, their class column and class table, the sensor and
bands), and what the fetched imagery means for the labels (how many fall on pixels the model
cannot use: without a clear view, or with frames > 1 not clear in every frame)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError


@dataclass
class CheckedLabels:
    path: Path
    extent: object  # the labels' bounding box, a CRS84 polygon
    frame: object | None  # vector labels (GeoDataFrame in their own CRS); None for a mask


def check_dataset(args, frames: int) -> CheckedLabels:
    """Everything ``ingest`` would refuse that does not depend on the imagery."""
    from .ingest import _check_scene_count, check_options
    from .labels import RASTER_SUFFIXES, ClassTable, read_vector
    from .manifest import DatasetError, check_name
    from .options import integers, split_fractions
    from .paths import datasets_dir
    from .sensors import get_sensor

    dataset_id = check_name(args.name)
    if (datasets_dir() / dataset_id).exists():
        raise DatasetError(
            f"dataset {dataset_id!r} already exists. Choose another --name, or delete it first: "
            f"geotune data delete {dataset_id}"
        )
    split_fractions(args.split_fractions)
    integers(args.ignore_values, "--ignore-values")
    sensor = get_sensor(args.sensor)
    unknown = [b for b in (args.bands or "").replace(" ", "").split(",") if b]
    unknown = [b for b in unknown if b not in sensor.band_names]
    if unknown:
        raise UserError(
            f"--bands names {', '.join(unknown)}, not bands of {sensor.id} "
            f"({', '.join(sensor.band_names)})"
        )
    path = Path(args.labels).expanduser()
    if not path.exists():
        raise UserError(f"labels file {path} does not exist")
    after = Path(args.labels_after).expanduser() if args.labels_after else None
    is_mask = path.suffix.lower() in RASTER_SUFFIXES
    check_options(
        task=args.task,
        labels_name=path.name,
        is_mask=is_mask,
        after_name=after.name if after else None,
        after_is_mask=bool(after and after.suffix.lower() in RASTER_SUFFIXES),
        chip_size=args.chip_size,
        multi_label=args.multi_label,
        background=args.background,
        split_column=args.split_column,
        block_size=args.block_size,
        change_classes=args.change_classes,
    )
    _check_scene_count(args.task, frames)
    if is_mask:
        return CheckedLabels(path, _raster_extent(path), None)
    gdf = read_vector(
        path,
        args.class_column,
        layer=args.labels_layer,
        points=args.task == "classification",
        split_column=args.split_column,
        multi_label=args.multi_label,
    )
    frames_read = [gdf]
    if after is not None:
        frames_read.append(read_vector(after, args.class_column))
    if args.classes:
        values = [v for f in frames_read for val in f["value"] for v in _values(val)]
        ClassTable.from_file(args.classes, values, args.background)
    return CheckedLabels(path, _vector_extent(frames_read), gdf)


def _values(val):
    return val if isinstance(val, tuple) else (val,)


def _vector_extent(frames):
    from shapely.geometry import box

    bounds = np.array([f.to_crs("OGC:CRS84").total_bounds for f in frames])
    return box(*bounds[:, :2].min(0), *bounds[:, 2:].max(0))


def _raster_extent(path: Path):
    import rasterio
    from rasterio.warp import transform_bounds
    from shapely.geometry import box

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise UserError(f"{path.name} has no CRS; its extent cannot be located")
            return box(*transform_bounds(src.crs, "OGC:CRS84", *src.bounds))
    except rasterio.errors.RasterioIOError as e:
        raise UserError(f"cannot read the label raster {path}: {e}") from None


def report_unusable_labels(labels: CheckedLabels, result, size: int = 2048) -> dict | None:
    """Count the labelled pixels (polygon labels) on pixels the model cannot use, say so, and
    record it in the composite's provenance (``labels``)."""
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    if labels.frame is None or not labels.frame.geom_type.isin(["Polygon", "MultiPolygon"]).all():
        return None
    frames = int(result.provenance["frames"])
    gdf = labels.frame.to_crs(result.grid.crs)
    shapes = list(zip(gdf.geometry, range(1, len(gdf) + 1), strict=True))
    total = np.zeros(len(gdf) + 1, dtype=np.int64)
    usable = np.zeros(len(gdf) + 1, dtype=np.int64)
    with rasterio.open(result.count) as src:
        for row in range(0, src.height, size):
            for col in range(0, src.width, size):
                win = Window(col, row, min(size, src.width - col), min(size, src.height - row))
                ids = rasterize(
                    shapes,
                    out_shape=(win.height, win.width),
                    fill=0,
                    dtype="int32",
                    transform=window_transform(win, src.transform),
                )
                ok = src.read(1, window=win) >= frames
                total += np.bincount(ids.ravel(), minlength=len(total))
                usable += np.bincount(ids[ok], minlength=len(total))
    info = {
        "pixels": int(total[1:].sum()),
        "pixels_unusable": int((total - usable)[1:].sum()),
        "labels": len(gdf),
        "labels_without_usable_pixels": int(((usable[1:] == 0) & (total[1:] > 0)).sum()),
    }
    if info["pixels_unusable"]:
        where = "clear in every frame" if frames > 1 else "with a clear view"
        print(
            f"warning: {info['pixels_unusable']:,} of {info['pixels']:,} labelled pixels fall on "
            f"pixels not {where} ({info['labels_without_usable_pixels']} of {info['labels']} "
            "labels entirely); they are left out of training. Widen the dates or raise "
            "--max-cloud to use them.",
            file=sys.stderr,
        )
    result.provenance["labels"] = info
    path = Path(result.provenance_path)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(result.provenance, indent=2))
    tmp.replace(path)
    return info


__all__ = ["CheckedLabels", "check_dataset", "report_unusable_labels"]
