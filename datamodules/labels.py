"""User labels in: vector features or a mask raster → class table → rasters on the image grid.

Rasterization runs window by window, so scenes larger than memory work. Two rasters come out:
``mask`` (model class id, ``ignore_index`` where unlabelled) and ``units`` (which label unit each
labelled pixel came from; 0 = none). A unit is a polygon, or for mask labels (and background
pixels) a connected region of one class within one block of the split grid. Where polygons
overlap, smaller polygons are drawn last and win (a small field inside a large forest polygon
keeps its own class).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .label_files import LabelError, checked_frame, one_spelling, read_frame
from .manifest import slugify

PALETTE = [
    "#1f77b4",
    "#2ca02c",
    "#d62728",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#98df8a",
    "#ff9896",
    "#ffbb78",
    "#c5b0d5",
    "#c49c94",
]
VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".zip", ".shp", ".parquet", ".geoparquet", ".fgb"}
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img"}
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
POLYGONAL = {"Polygon", "MultiPolygon"}
MULTI_LABEL_SEPARATOR = ";"


@dataclass
class ClassTable:
    """Model class ids 0..K-1, each from one user value (a name, or a mask value).

    The background class (``--background NAME``), when there is one, has no user value of its own
    in the labels: it is every valid unlabelled pixel. It gets id 0 unless a class table says
    otherwise, and carries ``"background": true``.
    """

    classes: list[dict]  # {id, name, slug, color, value[, background]}
    legend: str = ""  # where names and colours came from, when from the labels file itself

    def __post_init__(self):
        """Each class its own slug (metric names and per-class figures are keyed by it): a name
        with no letter or digit in ASCII ("水") is ``class_<id>``, and a slug two names share
        gets its class id."""
        taken: set[str] = set()
        for c in self.classes:
            slug = c["slug"]
            if slug == "class" and slugify(c["name"]) == "class" and c["name"] != "class":
                slug = f"class_{c['id']}"
            if slug in taken:
                slug = f"{slug}_{c['id']}"
            c["slug"] = slug
            taken.add(slug)

    def to_json(self) -> list[dict]:
        return [dict(c) for c in self.classes]

    def id_of(self) -> dict:
        return {c["value"]: c["id"] for c in self.classes}

    def lookup(self, value) -> int:
        ids = self.id_of()
        return ids[value] if value in ids else ids[str(value)]

    @property
    def background_id(self) -> int | None:
        return next((c["id"] for c in self.classes if c.get("background")), None)

    @classmethod
    def infer(
        cls, values, background: str | None = None, first=None, names=None, colors=None
    ) -> ClassTable:
        """Classes sorted by value (integers first); ``background``, then the values in
        ``first`` (those present), lead. ``names`` and ``colors`` (by value: a mask's own legend)
        name and colour the values they cover; a name two values share gets its value."""
        vals = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        lead = [v for v in first or [] if v in vals]
        vals = lead + [v for v in vals if v not in lead]
        if background is not None:
            vals = [background] + [v for v in vals if str(v) != background]
        names, colors = names or {}, colors or {}
        shared = Counter(names[v].lower() for v in vals if v in names)

        def name(v) -> str:
            if v not in names:
                return str(v)
            return f"{names[v]} ({v})" if shared[names[v].lower()] > 1 else names[v]

        classes = [
            {
                "id": i,
                "name": name(v),
                "slug": slugify(name(v)),
                "color": colors.get(v, PALETTE[i % len(PALETTE)]),
                "value": v,
            }
            for i, v in enumerate(vals)
        ]
        if background is not None:
            classes[0]["background"] = True
        return cls(classes)

    @classmethod
    def from_file(
        cls, path: str | Path, present_values, background: str | None = None
    ) -> ClassTable:
        """A JSON list of {id, name, color?, value?}: ids must be 0..K-1; value defaults to name."""
        try:
            rows = json.loads(Path(path).read_text())
            rows = sorted(rows, key=lambda r: int(r["id"]))
        except (OSError, json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
            raise LabelError(
                f"cannot read class table {path}: {e}. It must be a JSON list of "
                '{"id": 0, "name": "water", "color": "#1f77b4", "value": "water"} objects.'
            ) from None
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
        if background is not None:
            hit = [c for c in classes if background in (c["name"], str(c["value"]))]
            if not hit:
                raise LabelError(
                    f"--background {background!r} is not a class of {path}; add it to the table"
                )
            hit[0]["background"] = True
        table = cls(classes)
        known = {str(k) for k in table.id_of()}
        missing = sorted({str(v) for v in present_values} - known)
        if missing:
            raise LabelError(
                f"label values {missing} are not in the class table {path}; add them or remove those labels"
            )
        return table


# columns that usually hold the classes, most likely first, compared in lower case ("Name" is
# where KML from Google Earth keeps a placemark's text)
_CLASS_COLUMNS = (
    "class_name", "classname", "class", "label", "labels", "landcover", "land_cover", "lulc",
    "category", "type", "name", "class_id", "value",
)  # fmt: skip


def _column(gdf, path: Path, wanted: str | None, default: str, flag: str) -> str:
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    column = wanted or default
    if column in gdf.columns:
        return column
    hint = _class_column_hint(gdf, columns) if flag == "--class-column" else None
    listed = f"{path.name} has no column {column!r}; columns are: {', '.join(columns + [gdf.geometry.name])}."
    if hint is None:
        raise LabelError(f"{listed} Pass {flag} with one of them.")
    values = hint[1][:8]
    more = ", ..." if len(hint[1]) > 8 else ""
    raise LabelError(f"{listed} Pass {flag} {hint[0]} (its values: {', '.join(values)}{more}).")


def _class_column_hint(gdf, columns: list[str]) -> tuple[str, list[str]] | None:
    """The column most likely to hold the classes, and its distinct values: a usual name, else
    the first column whose values repeat (classes, not one id or place name per feature), else
    the first with a value; columns without a value (KML's empty ``id``, ``timestamp``) never."""
    values = {}
    for c in columns:
        cell = gdf[c].dropna().astype(str).str.strip()
        cell = cell[cell != ""]
        values[c] = (len(cell), sorted(cell.unique().tolist()))
    usable = [c for c in columns if values[c][0]]
    lower = {c.lower(): c for c in reversed(usable)}
    named = [lower[n] for n in _CLASS_COLUMNS if n in lower]
    repeated = [c for c in usable if 2 <= len(values[c][1]) < values[c][0]]
    pick = next(iter(named + repeated + usable), None)
    return None if pick is None else (pick, values[pick][1])


def read_vector(
    path: str | Path,
    class_column: str | None,
    *,
    points: bool = False,
    split_column: str | None = None,
    multi_label: bool = False,
    layer: str | None = None,
    grid=None,
):
    """Read label features (of ``layer``, in a file of several), check CRS/columns/geometries
    (without a CRS, the message names the imagery ``grid``'s where the coordinates fall on it);
    returns a GeoDataFrame.

    Columns: ``value`` (a class name or integer; with ``multi_label`` a tuple of them from a
    ``;``-separated cell), ``split`` when ``split_column`` is given, and the geometry. Polygons
    only, unless ``points`` (scene classification: points or polygons, one chip each). Invalid
    polygons are repaired with ``make_valid`` and counted in ``attrs["n_invalid_repaired"]``.
    """
    path = Path(path).expanduser()
    gdf = read_frame(path, class_column, layer)
    checked_frame(gdf, path, grid)
    column = _column(gdf, path, class_column, "class", "--class-column")
    keep = {column: "value"}
    if split_column:
        keep[_column(gdf, path, split_column, split_column, "--split-column")] = "split"
    gdf = gdf[[*keep, gdf.geometry.name]].rename(columns=keep)
    # " water" and "water " are "water"; an empty or blank value is no value
    gdf["value"] = gdf["value"].map(lambda v: (v.strip() or None) if isinstance(v, str) else v)
    n_null_class = int(gdf["value"].isna().sum())
    if n_null_class:
        warnings.warn(
            f"{n_null_class} label(s) without a class value (missing or blank) in {column!r} "
            "were dropped",
            stacklevel=2,
        )
        gdf = gdf[gdf["value"].notna()]
    empty = gdf.geometry.is_empty | gdf.geometry.isna()
    if empty.any():
        warnings.warn(f"{int(empty.sum())} label(s) with empty geometry were dropped", stacklevel=2)
        gdf = gdf[~empty]
    if gdf.empty:
        raise LabelError(f"{path.name} holds no labels with a geometry and a class value")
    gdf = _collections_to_polygons(gdf, path)
    gdf = _polygons_only(gdf, path, points)
    gdf, n_invalid = _repair(gdf)
    if split_column:
        gdf["split"] = _splits(gdf["split"], path, split_column)
    gdf["value"] = gdf["value"].map(_multi_value if multi_label else _plain_value)
    if not multi_label:
        gdf["value"] = one_spelling(gdf["value"], path, column)
    if multi_label:
        bad = int((gdf["value"].map(len) == 0).sum())
        if bad:
            raise LabelError(
                f"{bad} label(s) in {path.name} have an empty class list in {column!r}; "
                f"multi-label classes are names separated by '{MULTI_LABEL_SEPARATOR}'"
            )
    gdf = gdf.reset_index(drop=True)
    gdf.attrs["n_invalid_repaired"] = n_invalid
    return gdf


def _polygons_only(gdf, path: Path, points: bool):
    """The labels of the kinds the task takes (polygons; or points too): a few stray others are
    dropped with a count, a file of none is refused."""
    kinds = set(gdf.geom_type)
    allowed = POLYGONAL | {"Point"} if points else POLYGONAL
    stray = ~gdf.geom_type.isin(allowed)
    if stray.any() and not stray.all():  # a few stray points or lines among the labels
        shown = ", ".join(sorted(set(gdf.geom_type[stray])))
        warnings.warn(
            f"{int(stray.sum())} label(s) of {path.name} are not "
            f"{'points or polygons' if points else 'polygons'} ({shown}) and were dropped; "
            "buffer them into polygons to use them",
            stacklevel=3,
        )
        gdf = gdf[~stray]
        kinds = set(gdf.geom_type)
    if not kinds <= allowed:
        raise LabelError(
            f"{'classification labels must be points or polygons' if points else 'segmentation and change labels must be polygons'}; "
            f"{path.name} holds {', '.join(sorted(kinds))}. "
            + (
                "Give one point or polygon per chip."
                if points
                else "Buffer points/lines into polygons first."
            )
        )
    return gdf


def _repair(gdf):
    """Repair invalid polygons (make_valid, polygonal parts kept); drop what repairs to nothing."""
    import shapely

    invalid = ~gdf.geometry.is_valid
    n_invalid = int(invalid.sum())
    if not n_invalid:
        return gdf, 0
    fixed = [_polygonal(shapely.make_valid(g)) for g in gdf.geometry[invalid]]
    gdf = gdf.copy()
    gdf.loc[invalid, gdf.geometry.name] = fixed
    lost = gdf.geometry.isna() | gdf.geometry.is_empty
    message = f"{n_invalid} invalid geometr{'y' if n_invalid == 1 else 'ies'} repaired (make_valid)"
    if lost.any():
        message += f"; {int(lost.sum())} of them had no area left and were dropped"
        gdf = gdf[~lost]
    warnings.warn(message, stacklevel=3)
    return gdf, n_invalid


def _collections_to_polygons(gdf, path: Path):
    """GeometryCollections (as GIS repairs write them) as their polygons; one without any is
    dropped with a warning."""
    coll = (gdf.geom_type == "GeometryCollection").to_numpy()
    if not coll.any():
        return gdf
    gdf = gdf.copy()
    polys = gdf.geometry[coll].map(_polygonal)
    gdf.loc[coll, gdf.geometry.name] = polys
    lost = coll & gdf.geometry.isna().to_numpy()
    if lost.any():
        warnings.warn(
            f"{int(lost.sum())} GeometryCollection label(s) in {path.name} hold no polygon and "
            "were dropped",
            stacklevel=3,
        )
        gdf = gdf[~lost]
    if gdf.empty:
        raise LabelError(f"{path.name} holds no polygon labels")
    return gdf


def _polygonal(geom):
    import shapely

    if geom.geom_type in POLYGONAL or geom.geom_type == "Point":
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in POLYGONAL]
    polys = [p for g in parts for p in getattr(g, "geoms", [g])]
    return shapely.MultiPolygon(polys) if polys else None


def _splits(series, path: Path, column: str):
    norm = series.map(lambda v: SPLIT_NAMES.get(str(v).strip().lower()) if v == v else None)
    bad = series[norm.isna()]
    if len(bad):
        shown = sorted({str(v) for v in bad})[:5]
        raise LabelError(
            f"{len(bad)} label(s) in {path.name} have a split value in {column!r} that is not "
            f"train, val or test: {', '.join(shown)}. Give every label one of train/val/test."
        )
    missing = [s for s in ("train", "val", "test") if s not in set(norm)]
    if missing:
        raise LabelError(
            f"split column {column!r} of {path.name} has no {' or '.join(missing)} labels; "
            "every split needs labels (train, val and test)"
        )
    return norm


def _plain_value(v):
    if isinstance(v, (np.integer, int)) or (isinstance(v, float) and float(v).is_integer()):
        return int(v)
    return str(v)


def _multi_value(v) -> tuple:
    if not isinstance(v, str):
        return (_plain_value(v),)
    parts = [p.strip() for p in v.split(MULTI_LABEL_SEPARATOR)]
    return tuple(
        sorted(
            {_plain_value(int(p)) if p.lstrip("-").isdigit() else p for p in parts if p}, key=str
        )
    )


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
