"""Labels as ingestion reads them: a class table and a source to rasterize onto the image grid.

Polygons, points (classification) or class polygons of two dates (change, see
:func:`change_labels`) are read and put in the grid's CRS (:func:`vector_source`); a label raster
is warped onto the grid with its values looked up in the class table (:func:`mask_source`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import rasterio
import shapely

from .imagery import Grid, warp_to_grid
from .labels import ClassTable, LabelError, read_vector
from .mask_classes import MaskLegend, looks_unlabelled, mask_legend
from .rasterize import IGNORE_INDEX, MaskLabels

CHANGE_CLASSES = ("binary", "transitions")
NO_CHANGE = "no_change"


def _extent_text(bounds, crs) -> str:
    from rasterio.warp import transform_bounds

    ll = transform_bounds(crs, "EPSG:4326", *bounds)
    return f"lon {ll[0]:.4f}..{ll[2]:.4f}, lat {ll[1]:.4f}..{ll[3]:.4f}"


def vector_source(
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
    layer: str | None = None,
):
    gdf = read_vector(
        labels,
        class_column,
        layer=layer,
        points=task == "classification",
        split_column=split_column,
        multi_label=multi_label,
        grid=grid,
    )
    if vector_check is not None:
        vector_check(gdf, labels)
    gdf = gdf.to_crs(grid.crs)
    first = None
    if labels_after is not None:
        after = read_vector(labels_after, class_column, grid=grid)
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
        # each part of a multi-part polygon is a label unit of its own: a class dissolved into
        # one feature (QGIS's Dissolve) is still the separate areas it was drawn as, and the
        # spatial split may put them in different splits instead of cutting "one polygon"
        parts = gdf.explode(index_parts=False).reset_index(drop=True)
        parts.attrs = dict(gdf.attrs) | {"n_features": len(gdf)}
        gdf = parts
        gdf["class_id"] = gdf["value"].map(table.lookup)
        gdf["unit_id"] = np.arange(1, len(gdf) + 1, dtype=np.int32)
        # in the grid's units: an order (smaller polygons drawn over larger ones), so degrees²
        # serve a geographic grid too (geopandas would warn about them)
        gdf["area"] = shapely.area(gdf.geometry.values)
    return gdf, table


def _class_table(classes_file, values, background, first=None, **legend) -> ClassTable:
    """The class table file's, else inferred from the values (``legend``: a mask's own
    ``names`` and ``colors`` by value)."""
    if classes_file:
        return ClassTable.from_file(classes_file, values, background)
    return ClassTable.infer(values, background, first=first, **legend)


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
    repaired = before.attrs.get("n_invalid_repaired", 0) + after.attrs.get("n_invalid_repaired", 0)
    out.attrs = {
        "n_invalid_repaired": repaired,
        "n_before": len(before),
        "n_after": len(after),
        "n_slivers_dropped": n_pieces - len(out),
    }
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


def mask_source(mask_path: Path, grid: Grid, ignore_values: set, classes_file, background):
    """The mask warped onto the image grid (nearest), its class table and value lookup. Without
    a class table file, classes are named and coloured by the mask's own legend where it has one
    (:mod:`.mask_classes`)."""
    from rasterio.enums import Resampling

    from .rasterize import windows

    try:
        src = rasterio.open(mask_path)
    except rasterio.errors.RasterioIOError as e:
        raise LabelError(f"cannot read label raster {mask_path.name}: {e}") from None
    problem = None
    if src.crs is None:
        problem = f"label raster {mask_path.name} has no CRS; georeference it like the imagery"
    elif src.count != 1:
        problem = (
            f"label raster {mask_path.name} has {src.count} bands; a mask is one band of class "
            "values (is it the image? give the image with --image and the labels with --labels)"
        )
    if problem:
        src.close()
        raise LabelError(problem)
    if src.nodata is not None:
        ignore_values = ignore_values | {src.nodata}
    vrt = warp_to_grid(src, grid, Resampling.nearest, nodata=src.nodata)
    values: set = set()
    for _, w in windows(grid, 1024):
        values |= set(np.unique(vrt.read(1, window=w)).tolist())
    values = {v for v in values - ignore_values if math.isfinite(v)}  # NaN, ±inf: no label
    if not values:
        raise LabelError(f"label raster {mask_path.name} has no labelled pixels over the imagery")
    fractional = sorted(v for v in values if v != int(v))
    if fractional:
        raise LabelError(
            f"label raster {mask_path.name} holds values that are not whole numbers "
            f"({', '.join(f'{v:g}' for v in fractional[:5])}); a mask holds class values "
            "(integers). Round it or write it as integers, e.g. gdal_translate -ot Int16 "
            f"{mask_path.name} mask_int.tif"
        )
    values = sorted(int(v) for v in values)
    if len(values) > IGNORE_INDEX - 1:
        raise LabelError(
            f"label raster {mask_path.name} holds {len(values)} distinct values; a mask holds "
            f"class values, at most {IGNORE_INDEX - 1} classes (is it an image rather than "
            "labels?)"
        )
    if min(values) < 0:
        raise LabelError(
            f"label raster {mask_path.name} has negative class values {values[:5]}; "
            "list them with --ignore-values or remap them to 0..254"
        )
    legend = MaskLegend() if classes_file else mask_legend(src, values)  # a table file decides
    table = _class_table(classes_file, values, background, names=legend.names, colors=legend.colors)
    table.legend = legend.describe()
    _say_if_named_unlabelled(mask_path.name, legend.names)
    lut = np.full(max(values) + 1, IGNORE_INDEX, dtype=np.uint8)
    for c in table.classes:
        if not c.get("background"):
            lut[int(c["value"])] = c["id"]
    return MaskLabels(vrt, lut, len(table.classes)), table


def _say_if_named_unlabelled(name: str, names: dict[int, str]) -> None:
    """Values the mask's own legend calls no class ("Unclassified", "No Data") but that no nodata
    or ``--ignore-values`` left out: say they are trained as classes, and how to leave them out."""
    hit = {v: n for v, n in sorted(names.items()) if looks_unlabelled(n)}
    if hit:
        listed = ", ".join(f"{v} ({n!r})" for v, n in hit.items())
        warnings.warn(
            f"{name}'s legend names mask value(s) {listed} as no class, yet they are classes "
            f"here; if they mean unlabelled, add --ignore-values {','.join(map(str, hit))}",
            stacklevel=4,
        )
