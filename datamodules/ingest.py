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
import rasterio

from .chips import build_chips
from .imagery import Grid, ImageryError, date_order, open_scenes, warp_to_grid
from .label_units import split_units
from .labels import RASTER_SUFFIXES, ClassTable, LabelError, read_vector
from .manifest import Dataset, DatasetWriter, check_name
from .rasterize import IGNORE_INDEX, MaskLabels, PolygonLabels, write_rasters

TASKS = ("segmentation", "classification", "change")
CHANGE_CLASSES = ("binary", "transitions")
NO_CHANGE = "no_change"


def _extent_text(bounds, crs) -> str:
    from rasterio.warp import transform_bounds

    ll = transform_bounds(crs, "EPSG:4326", *bounds)
    return f"lon {ll[0]:.4f}..{ll[2]:.4f}, lat {ll[1]:.4f}..{ll[3]:.4f}"


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


def _prepare_vector(
    labels: Path,
    class_column,
    grid: Grid,
    classes_file,
    *,
    task,
    split_column,
    multi_label,
    background,
    labels_after: Path | None = None,
    change_classes: str = "binary",
    vector_check=None,
):
    gdf = read_vector(
        labels,
        class_column,
        points=task == "classification",
        split_column=split_column,
        multi_label=multi_label,
    )
    if vector_check is not None:
        vector_check(gdf, labels)
    gdf = gdf.to_crs(grid.crs)
    first = None
    if labels_after is not None:
        after = read_vector(labels_after, class_column)
        if vector_check is not None:
            vector_check(after, labels_after)
        after = after.to_crs(grid.crs)
        gdf = change_labels(gdf, after, change_classes, grid, labels.name, labels_after.name)
        first = [NO_CHANGE]
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
            f"{int((~inside).sum())} label(s) outside the imagery were dropped", stacklevel=3
        )
        gdf = gdf[inside].reset_index(drop=True)
    values = [v for val in gdf["value"] for v in (val if multi_label else (val,))]
    table = _class_table(classes_file, values, background, first)
    if task != "classification":
        gdf["class_id"] = gdf["value"].map(table.lookup)
        gdf["unit_id"] = np.arange(1, len(gdf) + 1, dtype=np.int32)
        gdf["area"] = gdf.geometry.area
    return gdf, table


def _class_table(classes_file, values, background, first=None) -> ClassTable:
    if classes_file:
        return ClassTable.from_file(classes_file, values, background)
    return ClassTable.infer(values, background, first=first)


def change_labels(before, after, mode: str, grid: Grid, before_name: str, after_name: str):
    """Change labels from the class polygons of two dates (in ``grid``'s CRS): their
    intersections, each labelled ``no_change`` where the two classes agree and, where they
    differ, ``change`` (``mode="binary"``) or ``<before>→<after>`` (``"transitions"``). Only
    places labelled on both dates get a change label. Slivers where the two dates' boundaries
    nearly coincide cover no pixel centre and are dropped (so no class is left without pixels).
    A ``split`` column comes from the before labels."""
    import geopandas as gpd

    if mode not in CHANGE_CLASSES:
        raise LabelError(
            f"--change-classes must be one of {', '.join(CHANGE_CLASSES)}, not {mode!r}"
        )
    b = before.rename(columns={"value": "before"})
    a = after[["value", after.geometry.name]].rename(columns={"value": "after"})
    pieces = gpd.overlay(b, a, how="intersection", keep_geom_type=True)
    pieces = pieces[~pieces.geometry.is_empty].reset_index(drop=True)
    n_pieces = len(pieces)
    pieces = pieces[_pixels_per_polygon(pieces, grid) > 0]
    if pieces.empty:
        raise LabelError(
            f"the before labels ({before_name}) and after labels ({after_name}) do not overlap "
            "anywhere; change is known only where both dates are labelled. Check that both "
            "files cover the same place."
        )
    b_name, a_name = pieces["before"].astype(str), pieces["after"].astype(str)
    same = b_name == a_name
    changed = "change" if mode == "binary" else b_name + "→" + a_name
    pieces["value"] = np.where(same, NO_CHANGE, changed)
    keep = ["value", *(["split"] if "split" in pieces else []), pieces.geometry.name]
    out = pieces[keep].reset_index(drop=True)
    out.attrs = {"n_invalid_repaired": before.attrs.get("n_invalid_repaired", 0)
                 + after.attrs.get("n_invalid_repaired", 0),
                 "n_before": len(before), "n_after": len(after),
                 "n_slivers_dropped": n_pieces - len(out)}  # fmt: skip
    return out


def _pixels_per_polygon(gdf, grid: Grid, size: int = 2048) -> np.ndarray:
    """How many pixel centres of ``grid`` each polygon covers (window by window)."""
    from rasterio.features import rasterize
    from shapely.geometry import box

    from .rasterize import windows

    counts = np.zeros(len(gdf) + 1, dtype=np.int64)
    geoms = gdf.geometry.to_numpy()
    tree = gdf.sindex
    for _, win in windows(grid, size):
        hit = tree.query(box(*rasterio.windows.bounds(win, grid.transform)), predicate="intersects")
        if len(hit):
            ids = rasterize(
                zip(geoms[hit], hit + 1, strict=True),
                out_shape=(win.height, win.width),
                transform=rasterio.windows.transform(win, grid.transform),
                fill=0,
                dtype="int32",
            )
            counts += np.bincount(ids.ravel(), minlength=len(counts))
    return counts[1:]


def _mask_source(mask_path: Path, grid: Grid, ignore_values: set, classes_file, background):
    """The mask warped onto the image grid (nearest), its class table and value lookup."""
    from rasterio.enums import Resampling

    from .rasterize import windows

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
    vrt = warp_to_grid(src, grid, Resampling.nearest, nodata=src.nodata)
    values: set = set()
    for _, w in windows(grid, 1024):
        values |= set(np.unique(vrt.read(1, window=w)).tolist())
    values -= ignore_values
    if not values:
        raise LabelError(f"label raster {mask_path.name} has no labelled pixels over the imagery")
    values = sorted(int(v) for v in values)
    if min(values) < 0:
        raise LabelError(
            f"label raster {mask_path.name} has negative class values {values[:5]}; "
            "list them with --ignore-values or remap them to 0..254"
        )
    table = _class_table(classes_file, values, background)
    lut = np.full(max(values) + 1, IGNORE_INDEX, dtype=np.uint8)
    for c in table.classes:
        if not c.get("background"):
            lut[int(c["value"])] = c["id"]
    return MaskLabels(vrt, lut, len(table.classes)), table


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
        source, table = _mask_source(
            labels, grid, set(mask_ignore_values or []), classes_file, background
        )
    else:
        gdf, table = _prepare_vector(
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
        if task == "classification":
            part = build_chips(
                writer.tmp,
                gdf,
                table,
                grid,
                chip_size=chip_size or 64,
                nodata=scenes[0].nodata,
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
                writer.tmp,
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
        classes = part.pop("classes")
        split_counts = part.pop("split_counts")
        split_units = part.pop("split_units")
        reach = {k: part.pop(f"split_{k}") for k in ("reach", "notes") if f"split_{k}" in part}
        manifest = {
            "id": dataset_id,
            "name": name,
            "owner": owner,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "task": task,
            "classes": classes,
            "num_classes": k,
            "ignore_index": IGNORE_INDEX,
            "output_nodata": IGNORE_INDEX,
            "background": background,
            "sensor": sensor,
            "bands": scenes[0].bands,
            "dtype": scenes[0].dtype,
            "nodata": scenes[0].nodata,
            "nodata_source": scenes[0].nodata_source,
            "scales": scenes[0].scales,
            "offsets": scenes[0].offsets,
            "images": [
                {"path": n, "date": s.date.isoformat() if s.date else None}
                for n, s in zip(result.image_names, scenes, strict=True)
            ],
            "dates": [s.date.isoformat() if s.date else None for s in scenes],
            **part,
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
            "label_kind": "mask"
            if is_mask
            else (
                "points"
                if task == "classification"
                else ("before/after class polygons" if labels_after else "polygons")
            ),
            "splits": {
                "method": "column" if split_column else "blocks",
                "split_column": split_column,
                "block_size": block_size,
                "seed": seed,
                "fractions": fractions,
                "min_class_pixels": min_class_pixels,
                "guard_pixels": part.pop("guard_pixels", 0),
                "units": split_units,
                ("chips" if task == "classification" else "pixels"): split_counts,
                **reach,
            },
            "source": {
                "images": [str(Path(p).name) for p in images],
                "labels": labels.name,
                "class_column": class_column,
            },
        }
        if labels_after is not None:
            manifest["source"] |= {
                "labels_after": labels_after.name, "change_classes": change_classes,
                "n_labels_before": gdf.attrs["n_before"], "n_labels_after": gdf.attrs["n_after"],
                "n_slivers_dropped": gdf.attrs["n_slivers_dropped"],
            }  # fmt: skip
        if imagery is not None:
            manifest["source"]["imagery"] = imagery
        if gdf is not None:
            manifest["source"]["n_labels"] = len(gdf)
            manifest["source"]["n_invalid_repaired"] = int(gdf.attrs.get("n_invalid_repaired", 0))
        return writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise


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
