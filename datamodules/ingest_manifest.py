"""The dataset manifest's parts, as :func:`datamodules.ingest.ingest` writes them.

Each function returns one part (labels and their split, imagery, pixel grid, sources);
:func:`manifest` puts them together in the order the manifest has always had.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .chips import build_chips
from .imagery import Grid
from .label_units import split_units
from .labels import ClassTable, LabelError
from .mask_classes import looks_unlabelled
from .product_quality import cloud_note
from .rasterize import IGNORE_INDEX
from .sensors import get_sensor, stored_units
from .units import float_reflectance

if TYPE_CHECKING:
    from .ingest import IngestRequest


def manifest(
    req: IngestRequest,
    dataset_id: str,
    table: ClassTable,
    scenes,
    result,
    part: dict,
    fractions: dict,
    split_counts: dict,
    gdf,
) -> dict:
    """The manifest of the dataset ``req`` asked for; ``part`` and ``split_counts`` come from
    :func:`labels_part`."""
    return {
        "id": dataset_id,
        "name": req.name,
        "owner": req.owner,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": req.task,
        "classes": part.pop("classes"),
        "num_classes": len(table.classes),
        "ignore_index": IGNORE_INDEX,
        "output_nodata": IGNORE_INDEX,
        "background": req.background,
        "sensor": req.sensor,
        **imagery_part(scenes, result, req.sensor),
        **part,  # the label files and the split's: guard_pixels also under splits
        **grid_part(scenes[0].grid, result),
        "label_kind": label_kind(req.task, req.is_mask, req.labels_after is not None),
        "splits": {
            "method": "column" if req.split_column else "blocks",
            "split_column": req.split_column,
            "block_size": req.block_size,
            "seed": req.seed,
            "fractions": fractions,
            "min_class_pixels": req.min_class_pixels,
            "guard_pixels": part.get("guard_pixels", 0),
            **split_counts,
        },
        "source": source_part(
            req.images,
            req.labels,
            req.class_column,
            gdf,
            req.labels_after,
            req.change_classes,
            req.imagery,
            table.legend,
            req.labels_layer,
        ),
    }


def labels_part(
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
        part = units_part(
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


def imagery_part(scenes, result, sensor: str | None = None) -> dict:
    """The manifest's part about the imagery as stored: bands, type, nodata, units, dates.
    ``value_units`` is there only when they are not the sensor's and the file declares none:
    reflectance as floats 0..1 (:func:`stored_as_floats`)."""
    first = scenes[0]
    units = stored_as_floats(first, sensor, result.moments.mean)
    return {
        "bands": first.bands,
        "dtype": first.dtype,
        "nodata": first.nodata,
        "nodata_source": first.nodata_source,
        "scales": first.scales,
        "offsets": first.offsets,
        "images": [
            {"path": n, "date": s.date.isoformat() if s.date else None}
            | ({"values": s.offset_note()} if s.product_offsets else {})
            | ({"clouds": cloud_note(s)} if s.quality else {})
            for n, s in zip(result.image_names, scenes, strict=True)
        ],
        "dates": [s.date.isoformat() if s.date else None for s in scenes],
    } | ({"value_units": [u.to_dict() for u in units]} if units else {})


def stored_as_floats(scene, sensor: str | None, mean) -> list | None:
    """The units of a scene that holds reflectance as floats 0..1 where ``sensor`` stores it
    scaled (x 10000), judged by its per-band means against the sensor's typical stored values
    (:func:`datamodules.units.float_reflectance`); None for any other scene. Said as a warning:
    models trained on it convert other imagery of the sensor exactly."""
    if sensor is None or not np.issubdtype(np.dtype(scene.dtype), np.floating):
        return None
    default = stored_units(sensor, scene.bands)
    if default is None or stored_units(sensor, scene.bands, scene.scales, scene.offsets) != default:
        return None  # an unknown sensor, or the file declares its own scale/offset
    typical = [get_sensor(sensor).band(b).mean for b in scene.bands]
    units = float_reflectance(default, mean, typical, default)
    if units is not None:
        warnings.warn(
            f"{scene.files[0].name} holds reflectance as floats (band means "
            f"{', '.join(f'{m:.3g}' for m in mean)}): recorded as reflectance 0..1, so that "
            f"models trained on it convert {sensor} imagery exactly",
            stacklevel=2,
        )
    return units


def grid_part(grid: Grid, result) -> dict:
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


def label_kind(task: str, is_mask: bool, two_dates: bool) -> str:
    if is_mask:
        return "mask"
    if task == "classification":
        return "points"
    return "before/after class polygons" if two_dates else "polygons"


def source_part(
    images, labels: Path, class_column, gdf, labels_after, change_classes, imagery, legend="",
    layer=None,
):  # fmt: skip
    """The manifest's ``source``: the files given, and what reading the labels found (``legend``:
    where a mask's class names and colours came from)."""
    source = {
        "images": [str(Path(p).name) for p in images],
        "labels": labels.name,
        "class_column": class_column,
    } | ({"labels_layer": layer} if layer else {})
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
    if legend:
        source["legend"] = legend
    if gdf is not None:
        source["n_labels"] = gdf.attrs.get("n_features", len(gdf))
        if len(gdf) != source["n_labels"]:  # multi-part polygons: each part a label unit
            source["n_label_parts"] = len(gdf)
        source["n_invalid_repaired"] = int(gdf.attrs.get("n_invalid_repaired", 0))
    return source


def units_part(
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
    if unit_word == "regions":
        _say_if_zero_looks_unlabelled(classes)
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


def _say_if_zero_looks_unlabelled(classes: list[dict]) -> None:
    """A mask's value 0 covering most labelled pixels is often "unlabelled": say how to mean it."""
    total = sum(c["pixels"] for c in classes)
    zero = next((c for c in classes if c.get("value") == 0 and not c.get("background")), None)
    if zero is not None and looks_unlabelled(zero["name"]):
        return  # the mask's legend calls it no class: said already, with the same hint
    if zero is not None and total and zero["pixels"] > total / 2:
        warnings.warn(
            f"mask value 0 is a class covering {zero['pixels'] / total:.0%} of the labelled "
            "pixels; if 0 means unlabelled, add --ignore-values 0",
            stacklevel=4,
        )
