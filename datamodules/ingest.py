"""Ingestion: validate imagery + labels, rasterize once, stats, spatial splits → dataset folder.

One code path serves ``geotune data add`` and ``POST /v1/datasets``. Everything streams window
by window (scenes may be larger than memory). The folder is built under a temporary name and
appears only when complete (see :mod:`datamodules.manifest`).

Tasks (manifest key ``task``):

- ``segmentation``: polygons or a mask raster → ``mask.tif`` + ``units.tif`` + ``units.csv``;
  one or several dates (``image_t{i}.tif``, for multi-temporal models).
- ``change``: exactly two dates (before, after) + change polygons (or a change mask) → the
  same rasters; ``background`` names the class of every valid unlabelled pixel, so binary change
  data need only the change polygons. Or class polygons of each date (``labels`` before,
  ``labels_after`` after): where both dates are labelled, the change label is ``no_change`` or
  ``change`` (``change_classes="binary"``) or the transition, e.g. ``forest→cropland``
  (``"transitions"``); where only one date is labelled, the change is unknown (ignored).
- ``classification``: points or polygons, each the class of one chip → ``chips.csv``.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .chips import build_chips
from .imagery import Grid, ImageryError, date_order, open_scenes
from .label_sources import CHANGE_CLASSES, mask_source, vector_source
from .label_units import split_units
from .labels import RASTER_SUFFIXES, ClassTable, LabelError
from .manifest import Dataset, DatasetWriter, check_name
from .rasterize import IGNORE_INDEX, PolygonLabels, write_rasters

TASKS = ("segmentation", "classification", "change")


def check_options(
    *,
    task: str,
    labels_name: str,
    is_mask: bool,
    after_name: str | None = None,
    after_is_mask: bool = False,
    chip_size: int | None = None,
    multi_label: bool = False,
    background: str | None = None,
    split_column: str | None = None,
    block_size: int = 256,
    change_classes: str = "binary",
) -> None:
    """The checks of an ingest request that need no file opened (the service runs them before
    it queues the job; :func:`ingest` runs them first)."""
    if task not in TASKS:
        raise LabelError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    if block_size < 8:
        raise LabelError(f"--block-size {block_size} is too small; use at least 8 px")
    if after_name is not None:
        if task != "change":
            raise LabelError(
                "--labels-after is for --task change, as the class polygons of the second date; "
                "the first date's go in --labels."
            )
        if is_mask or after_is_mask:
            raise LabelError(
                "--labels and --labels-after must both be class polygons to derive change labels; "
                "for a change mask, pass it alone as --labels"
            )
        if change_classes not in CHANGE_CLASSES:
            raise LabelError(
                f"--change-classes must be one of {', '.join(CHANGE_CLASSES)}, not {change_classes!r}"
            )
    if task == "classification":
        if is_mask:
            raise LabelError(
                "--task classification takes points or polygons (one per chip), not a mask raster"
            )
        if background is not None:
            raise LabelError("--background is for segmentation and change, not classification")
    else:
        if multi_label:
            raise LabelError("--multi-label is for --task classification only")
        if chip_size is not None:
            raise LabelError(
                "--chip-size is for --task classification; for segmentation and change "
                "the training patch size is data.patch_size"
            )
    if split_column and is_mask:
        raise LabelError(
            f"--split-column needs vector labels; {labels_name} is a mask raster (its regions get "
            "spatial block splits)"
        )


def _check_scene_count(task: str, n_scenes: int) -> None:
    if task == "change" and n_scenes != 2:
        raise ImageryError(
            f"--task change needs exactly two dates, got {n_scenes}: pass "
            "--image before.tif --image after.tif (multi-band files with the same bands)"
        )
    if task == "classification" and n_scenes != 1:
        raise ImageryError(f"--task classification takes one scene, got {n_scenes} dates")


def _check_dates(scenes, labels_after: bool) -> None:
    """Several dates must come oldest first (the first is 'before'); say where nodata comes from."""
    order = date_order(scenes)
    if order is not None and order != sorted(order):
        given = ", ".join(s.date.isoformat() for s in scenes)
        labels = (
            " (and --labels of the first date, --labels-after of the second)"
            if labels_after
            else ""
        )
        raise ImageryError(
            f"the images are dated {given}: give them oldest first, one --image per date in "
            f"date order{labels}."
        )
    s = scenes[0]
    if "fill value" in s.nodata_source:
        warnings.warn(
            f"{s.files[0].name} declares no nodata; pixels where every band equals "
            f"{s.nodata:g} ({s.nodata_source}) are nodata",
            stacklevel=3,
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
    task: str = "segmentation",
    chip_size: int | None = None,
    multi_label: bool = False,
    background: str | None = None,
    split_column: str | None = None,
    labels_after: str | Path | None = None,
    change_classes: str = "binary",
    vector_check=None,
    imagery: dict | None = None,
) -> Dataset:
    """Build a dataset folder from imagery + labels; returns the committed :class:`Dataset`.

    ``labels_after`` (change only): class polygons of the second date; ``labels`` then holds
    the first date's, and the change labels are derived from the two (:func:`change_labels`).
    ``vector_check(gdf, path)``, when given, sees every label file's features as soon as they
    are read (the service bounds their size there). ``imagery``: the provenance of imagery
    fetched by area and dates (STAC items used), recorded as ``source.imagery``.
    """
    fractions = split_fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
    dataset_id = dataset_id or check_name(name)
    labels = Path(labels).expanduser()
    is_mask = labels.suffix.lower() in RASTER_SUFFIXES
    labels_after = Path(labels_after).expanduser() if labels_after is not None else None
    check_options(
        task=task,
        labels_name=labels.name,
        is_mask=is_mask,
        after_name=labels_after.name if labels_after else None,
        after_is_mask=bool(labels_after and labels_after.suffix.lower() in RASTER_SUFFIXES),
        chip_size=chip_size,
        multi_label=multi_label,
        background=background,
        split_column=split_column,
        block_size=block_size,
        change_classes=change_classes,
    )
    scenes = open_scenes(images, bands=bands, sensor=sensor, dates=dates)
    _check_scene_count(task, len(scenes))
    _check_dates(scenes, labels_after is not None)
    grid = scenes[0].grid
    gdf = None
    if is_mask:
        source, table = mask_source(
            labels, grid, set(mask_ignore_values or []), classes_file, background
        )
    else:
        gdf, table = vector_source(
            labels,
            class_column,
            grid,
            classes_file,
            task=task,
            split_column=split_column,
            multi_label=multi_label,
            background=background,
            labels_after=labels_after,
            change_classes=change_classes,
            vector_check=vector_check,
        )
        source = PolygonLabels(gdf) if task != "classification" else None
    k = len(table.classes)
    if k >= IGNORE_INDEX:
        raise LabelError(f"{k} classes; at most {IGNORE_INDEX - 1} are supported")

    writer = DatasetWriter(dataset_id, root)
    try:
        result = write_rasters(
            writer.tmp, scenes, sensor, source, block_size, table.background_id, progress
        )
        if result.valid_pixels == 0:
            raise ImageryError(
                "the imagery is all nodata: every pixel equals the nodata value "
                f"({scenes[0].nodata}). Check the file, or its nodata value."
            )
        part, split_counts = _labels_part(
            writer.tmp,
            task,
            gdf,
            table,
            grid,
            result,
            scenes[0].nodata,
            is_mask,
            chip_size=chip_size,
            block_size=block_size,
            fractions=fractions,
            seed=seed,
            multi_label=multi_label,
            min_class_pixels=min_class_pixels,
        )
        manifest = {
            "id": dataset_id,
            "name": name,
            "owner": owner,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "task": task,
            "classes": part.pop("classes"),
            "num_classes": k,
            "ignore_index": IGNORE_INDEX,
            "output_nodata": IGNORE_INDEX,
            "background": background,
            "sensor": sensor,
            **_imagery_part(scenes, result),
            **part,  # the label files and the split's: guard_pixels also under splits
            **_grid_part(grid, result),
            "label_kind": _label_kind(task, is_mask, labels_after is not None),
            "splits": {
                "method": "column" if split_column else "blocks",
                "split_column": split_column,
                "block_size": block_size,
                "seed": seed,
                "fractions": fractions,
                "min_class_pixels": min_class_pixels,
                "guard_pixels": part.get("guard_pixels", 0),
                **split_counts,
            },
            "source": _source_part(
                images, labels, class_column, gdf, labels_after, change_classes, imagery
            ),
        }
        return writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise


def _labels_part(
    folder: Path,
    task: str,
    gdf,
    table: ClassTable,
    grid: Grid,
    result,
    nodata,
    is_mask: bool,
    *,
    chip_size,
    block_size,
    fractions,
    seed,
    multi_label,
    min_class_pixels,
) -> tuple[dict, dict]:
    """The manifest's part about the labels: classification chips (``chips.csv``) or label
    units and their split, ``classes`` with counts; and the split's counts (and what the split
    could reach) for the manifest's ``splits``."""
    if task == "classification":
        part = build_chips(
            folder,
            gdf,
            table,
            grid,
            chip_size=chip_size or 64,
            nodata=nodata,
            block_size=block_size,
            fractions=fractions,
            seed=seed,
            multi_label=multi_label,
        )
    else:
        user_split = None
        if gdf is not None and "split" in gdf:
            user_split = np.array([""] * (len(gdf) + 1), dtype=object)
            user_split[1:] = gdf["split"].to_numpy()
        part = _units_part(
            folder,
            result.unit_stats,
            table,
            grid,
            block_size,
            fractions,
            seed,
            min_class_pixels,
            user_split,
            "regions" if is_mask else "polygons",
        )
    split_counts = part.pop("split_counts")
    splits = {"units": part.pop("split_units")}
    splits["chips" if task == "classification" else "pixels"] = split_counts
    splits |= {k: part.pop(f"split_{k}") for k in ("reach", "notes") if f"split_{k}" in part}
    return part, splits


def _imagery_part(scenes, result) -> dict:
    """The manifest's part about the imagery as stored: bands, type, nodata, units, dates."""
    first = scenes[0]
    return {
        "bands": first.bands,
        "dtype": first.dtype,
        "nodata": first.nodata,
        "nodata_source": first.nodata_source,
        "scales": first.scales,
        "offsets": first.offsets,
        "images": [
            {"path": n, "date": s.date.isoformat() if s.date else None}
            for n, s in zip(result.image_names, scenes, strict=True)
        ],
        "dates": [s.date.isoformat() if s.date else None for s in scenes],
    }


def _grid_part(grid: Grid, result) -> dict:
    """The manifest's part about the pixel grid and the per-band statistics."""
    return {
        "crs": grid.crs.to_string(),
        "crs_wkt": grid.crs.to_wkt(),
        "resolution": list(grid.res),
        "transform": list(grid.transform)[:6],
        "shape": [grid.height, grid.width],
        "bounds": list(grid.bounds),
        "stats": {
            "mean": result.moments.mean.round(4).tolist(),
            "std": result.moments.std.round(4).tolist(),
            "valid_pixels": result.valid_pixels,
        },
    }


def _label_kind(task: str, is_mask: bool, two_dates: bool) -> str:
    if is_mask:
        return "mask"
    if task == "classification":
        return "points"
    return "before/after class polygons" if two_dates else "polygons"


def _source_part(images, labels: Path, class_column, gdf, labels_after, change_classes, imagery):
    """The manifest's ``source``: the files given, and what reading the labels found."""
    source = {
        "images": [str(Path(p).name) for p in images],
        "labels": labels.name,
        "class_column": class_column,
    }
    if labels_after is not None:
        source |= {
            "labels_after": labels_after.name,
            "change_classes": change_classes,
            "n_labels_before": gdf.attrs["n_before"],
            "n_labels_after": gdf.attrs["n_after"],
            "n_slivers_dropped": gdf.attrs["n_slivers_dropped"],
        }
    if imagery is not None:
        source["imagery"] = imagery
    if gdf is not None:
        source["n_labels"] = len(gdf)
        source["n_invalid_repaired"] = int(gdf.attrs.get("n_invalid_repaired", 0))
    return source


def _units_part(
    folder: Path,
    unit_stats: dict,
    table: ClassTable,
    grid: Grid,
    block_size: int,
    fractions: dict,
    seed: int,
    min_class_pixels: int,
    user_split,
    unit_word: str,
) -> dict:
    """Split the label units (:func:`datamodules.label_units.split_units`); the manifest's part."""
    if not unit_stats:
        raise LabelError("no labelled pixel falls on valid imagery (labels over nodata or outside)")
    names = [c["name"] for c in table.classes]
    part = split_units(
        folder,
        unit_stats,
        names,
        grid,
        block_size,
        fractions,
        seed,
        min_class_pixels,
        user_split,
        unit_word=unit_word,
    )
    classes = table.to_json()
    for c in classes:
        i = c["id"]
        c["pixels"], c["units"] = part["pixel_counts"][i], part["source_counts"][i]
    counts = part["split_counts"]
    return {
        "classes": classes,
        "mask": "mask.tif",
        "units": "units.tif",
        "units_table": "units.csv",
        "split_units": part["split_units"],
        "split_counts": {
            s: {c["slug"]: int(v) for c, v in zip(classes, counts[s], strict=True)} for s in counts
        },
        "split_reach": {c["slug"]: part["reach"][c["id"]] for c in classes},
        "split_notes": part["notes"],
        "guard_pixels": part["guard_pixels"],
    }
