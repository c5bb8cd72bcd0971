"""User labels in: vector polygons or a mask raster → class table → rasters on the image grid.

Rasterization runs window by window, so scenes larger than memory work. Two rasters come out:
``mask`` (model class id, ``ignore_index`` where unlabelled) and ``units`` (which label unit each
labelled pixel came from; 0 = none). A unit is a polygon, or for mask labels a connected region
of one class within one block of the split grid. Where polygons overlap, smaller polygons are
drawn last and win (a small field inside a large forest polygon keeps its own class).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .manifest import slugify

PALETTE = [
    "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#98df8a", "#ff9896", "#ffbb78", "#c5b0d5", "#c49c94",
]  # fmt: skip
VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".zip", ".shp", ".parquet", ".geoparquet", ".fgb"}
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img"}


class LabelError(UserError):
    """Bad label input; the message says what is wrong and how to fix it."""


@dataclass
class ClassTable:
    """Model class ids 0..K-1, each from one user value (a name, or a mask value)."""

    classes: list[dict]  # {id, name, slug, color, value}

    def to_json(self) -> list[dict]:
        return [dict(c) for c in self.classes]

    def id_of(self) -> dict:
        return {c["value"]: c["id"] for c in self.classes}

    @classmethod
    def infer(cls, values) -> ClassTable:
        vals = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        return cls(
            [
                {
                    "id": i,
                    "name": str(v),
                    "slug": slugify(v),
                    "color": PALETTE[i % len(PALETTE)],
                    "value": v,
                }
                for i, v in enumerate(vals)
            ]
        )

    @classmethod
    def from_file(cls, path: str | Path, present_values) -> ClassTable:
        """A JSON list of {id, name, color?, value?}: ids must be 0..K-1; value defaults to name."""
        try:
            rows = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LabelError(f"cannot read class table {path}: {e}") from None
        rows = sorted(rows, key=lambda r: int(r["id"]))
        ids = [int(r["id"]) for r in rows]
        if ids != list(range(len(rows))):
            raise LabelError(f"class table ids must be 0..{len(rows) - 1} without gaps; got {ids}")
        classes = []
        for r in rows:
            value = r.get("value", r["name"])
            classes.append(
                {
                    "id": int(r["id"]),
                    "name": str(r["name"]),
                    "slug": slugify(r["name"]),
                    "color": r.get("color") or PALETTE[int(r["id"]) % 16],
                    "value": value,
                }
            )
        table = cls(classes)
        known = set(table.id_of())
        missing = sorted({str(v) for v in present_values} - {str(k) for k in known})
        if missing:
            raise LabelError(
                f"label values {missing} are not in the class table {path}; add them or remove those labels"
            )
        return table


def read_vector(path: str | Path, class_column: str | None):
    """Read polygons, check CRS/column/geometries; returns a GeoDataFrame with ``value`` column."""
    import geopandas as gpd

    path = Path(path).expanduser()
    if not path.is_file():
        raise LabelError(f"labels file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            gdf = gpd.read_parquet(path)
        else:
            gdf = gpd.read_file(path)
    except Exception as e:  # pyogrio/pyarrow raise many types for unreadable files
        raise LabelError(
            f"cannot read labels file {path.name}: {e}. Accepted: GeoJSON, GeoPackage, zipped "
            "Shapefile, GeoParquet, FlatGeobuf, or a mask raster (GeoTIFF)."
        ) from None
    if gdf.crs is None:
        raise LabelError(
            f"{path.name} has no CRS. Save it with one (GeoJSON is EPSG:4326 by definition; "
            "for other formats set it, e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg in.gpkg)."
        )
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    column = class_column or "class"
    if column not in gdf.columns:
        hint = next(
            (c for c in ("class_name", "label", "class_id", "landcover") if c in columns),
            columns[0] if columns else None,
        )
        raise LabelError(
            f"{path.name} has no column {column!r}; columns are: {', '.join(columns + [gdf.geometry.name])}."
            + (f" Pass --class-column {hint}." if hint else " Add a class column.")
        )
    gdf = gdf[[column, gdf.geometry.name]].rename(columns={column: "value"})
    n_null_class = int(gdf["value"].isna().sum())
    if n_null_class:
        warnings.warn(
            f"{n_null_class} label(s) without a class value in {column!r} were dropped",
            stacklevel=2,
        )
        gdf = gdf[gdf["value"].notna()]
    empty = gdf.geometry.is_empty | gdf.geometry.isna()
    if empty.any():
        warnings.warn(f"{int(empty.sum())} label(s) with empty geometry were dropped", stacklevel=2)
        gdf = gdf[~empty]
    if gdf.empty:
        raise LabelError(f"{path.name} holds no labels with a geometry and a class value")
    kinds = set(gdf.geom_type)
    if not kinds <= {"Polygon", "MultiPolygon"}:
        raise LabelError(
            f"segmentation labels must be polygons; {path.name} holds {', '.join(sorted(kinds))}. "
            "Buffer points/lines into polygons first."
        )
    invalid = ~gdf.geometry.is_valid
    n_invalid = int(invalid.sum())
    if n_invalid:
        warnings.warn(
            f"{n_invalid} invalid geometr{'y' if n_invalid == 1 else 'ies'} repaired (make_valid)",
            stacklevel=2,
        )
        gdf.loc[invalid, gdf.geometry.name] = gdf.geometry[invalid].make_valid()
    gdf["value"] = gdf["value"].map(_plain_value)
    gdf.attrs["n_invalid_repaired"] = n_invalid
    return gdf.reset_index(drop=True)


def _plain_value(v):
    if isinstance(v, (np.integer, int)) or (isinstance(v, float) and float(v).is_integer()):
        return int(v)
    return str(v)


def rasterize_window(gdf, window_transform, shape, ignore_index: int):
    """Class and unit rasters for one window from polygons already in the image CRS.

    ``gdf`` needs columns ``class_id``, ``unit_id``, ``area`` (drawing order: largest first).
    """
    from rasterio.features import rasterize

    mask = np.full(shape, ignore_index, dtype=np.uint8)
    units = np.zeros(shape, dtype=np.int32)
    if len(gdf):
        order = gdf.sort_values("area", ascending=False)
        geoms = list(order.geometry)
        mask = rasterize(
            zip(geoms, order["class_id"], strict=True),
            out_shape=shape,
            transform=window_transform,
            fill=ignore_index,
            dtype=np.uint8,
        )
        units = rasterize(
            zip(geoms, order["unit_id"], strict=True),
            out_shape=shape,
            transform=window_transform,
            fill=0,
            dtype=np.int32,
        )
    return mask, units
