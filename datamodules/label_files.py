"""Label files as other tools write them: read with GDAL/OGR (the one layer with the labels, a
zipped shapefile wherever it sits in its zip, unclosed rings closed), checked before their
values are read (a geometry column, features, a CRS whose coordinates fit it), and class names
spelled one way. An Esri File Geodatabase (a ``.gdb`` folder, or zipped) is read on the command
line; over HTTP a zip holds a shapefile only (:mod:`serve.untrusted`)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from .errors import UserError


class LabelError(UserError):
    """Bad label input; the message says what is wrong and how to fix it."""


def read_frame(path: Path, class_column: str | None, layer: str | None = None):
    """The features of a label file (``layer``, else its one labels layer) as a GeoDataFrame."""
    import geopandas as gpd

    source, asked = str(path), layer
    if path.is_dir() and path.suffix.lower() != ".gdb":
        inside = sorted(p.name for p in path.iterdir())[:5]
        raise LabelError(
            f"{path} is a folder, not a labels file; give the file with the labels"
            + (f" (it holds: {', '.join(inside)})" if inside else " (it is empty)")
        )
    if not path.exists():
        raise LabelError(f"labels file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            return gpd.read_parquet(path)
        source = _zipped_vectors(path) if path.suffix.lower() == ".zip" else str(path)
        layer = _label_layer(source, path, class_column, asked)
        frame = gpd.read_file(source, layer=layer)
        if path.suffix.lower() in TABLE_SUFFIXES and not isinstance(frame, gpd.GeoDataFrame):
            return points_from_lonlat(frame, path)
        return frame
    except LabelError:
        raise
    except Exception as e:  # pyogrio/pyarrow raise many types for unreadable files
        if "LinearRing" in str(e):  # GEOS cannot build a polygon whose ring is not closed
            return _closing_rings(source, layer, path, e)
        raise LabelError(
            f"cannot read labels file {path.name}: {_reader_reason(e, path)}. Accepted: GeoJSON, "
            "GeoPackage, zipped Shapefile, GeoParquet, FlatGeobuf, KML/KMZ, File Geodatabase "
            "(.gdb), a CSV of points (lon/lat columns), or a mask raster (GeoTIFF)."
        ) from None


# a table of points (a field survey; ODK Central or KoboToolbox exports): without a WKT
# column, its points are its longitude and latitude columns
TABLE_SUFFIXES = (".csv", ".tsv")
_LONGITUDE = ("longitude", "lon", "long", "lng")
_LATITUDE = ("latitude", "lat")


def _named(columns, names: tuple[str, ...]) -> str | None:
    """The column called one of ``names`` (any case), else one ending so after ``_``, ``.``,
    ``-`` or a space (ODK's ``_location_longitude``, ``gps-latitude``)."""
    lower = {str(c).strip().lower(): c for c in columns}
    for n in names:
        if n in lower:
            return lower[n]
    for low, c in lower.items():
        if any(low.endswith(sep + n) for n in names for sep in "_.- "):
            return c
    return None


def points_from_lonlat(frame, path: Path):
    """The rows of a table as points at their longitude/latitude columns, in EPSG:4326 (what
    such columns mean); rows without both numbers are left out with a warning."""
    import geopandas as gpd
    import pandas as pd

    x, y = _named(frame.columns, _LONGITUDE), _named(frame.columns, _LATITUDE)
    if x is None or y is None:
        raise LabelError(
            f"{path.name} is a table without geometries; geotune reads one of points with "
            "longitude and latitude columns (lon/lat, longitude/latitude, ..._longitude/"
            f"..._latitude) or a WKT column. Its columns: {', '.join(map(str, frame.columns))}"
        )

    def numbers(col):  # "12,5" where a comma is the decimal separator
        text = frame[col].astype(str).str.strip().str.replace(",", ".", regex=False)
        return pd.to_numeric(text.where(text != ""), errors="coerce")

    lon, lat = numbers(x), numbers(y)
    missing = lon.isna() | lat.isna()
    if missing.all():
        raise LabelError(f"{path.name}: columns {x!r} and {y!r} hold no numbers")
    if ((lon.abs() > 180) | (lat.abs() > 90)).any():
        raise LabelError(
            f"{path.name}: columns {x!r} and {y!r} reach {lon.min():.6g}..{lon.max():.6g} and "
            f"{lat.min():.6g}..{lat.max():.6g}, not longitudes and latitudes. Projected "
            "coordinates need their CRS: save the points as a GeoPackage or GeoJSON with it"
        )
    if missing.any():
        rows = ", ".join(str(i + 2) for i in missing[missing].index[:10])  # + header, 1-based
        warnings.warn(
            f"{int(missing.sum())} row(s) of {path.name} have no {x}/{y} numbers (lines {rows}"
            f"{' ...' if missing.sum() > 10 else ''}); left out",
            stacklevel=4,
        )
    keep = ~missing
    return gpd.GeoDataFrame(
        frame.loc[keep].drop(columns=[x, y]),
        geometry=gpd.points_from_xy(lon[keep], lat[keep]),
        crs="EPSG:4326",
    ).reset_index(drop=True)


def _zipped_vectors(path: Path) -> str:
    """What GDAL opens for a zipped shapefile: the zip itself, or its one ``.shp`` in a folder
    of the zip (as "Export to zip" tools often write it); or for a zipped File Geodatabase (as
    ArcGIS shares one), its ``.gdb`` folder in the zip."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise LabelError(f"{path.name} is not a readable zip file") from None
    names = [
        n
        for n in names
        if not n.startswith("__MACOSX/") and not n.rsplit("/", 1)[-1].startswith("._")
    ]
    shps = [n for n in names if n.lower().endswith(".shp")]
    gdbs = sorted({m[1] for n in names if (m := re.match(r"^((?:[^/]*/)*?[^/]+\.gdb)/", n, re.I))})
    if not shps and len(gdbs) == 1:
        return f"/vsizip/{path}/{gdbs[0]}"
    if not shps:
        raise LabelError(
            f"{path.name} holds no shapefile (.shp)"
            + (f" and {len(gdbs)} File Geodatabases ({', '.join(gdbs[:5])})" if gdbs else "")
            + "; zip one shapefile's .shp, .shx, .dbf and .prj files, or one .gdb folder"
        )
    if len(shps) > 1:
        raise LabelError(
            f"{path.name} holds {len(shps)} shapefiles ({', '.join(shps[:5])}); zip the one "
            "with the labels on its own"
        )
    return f"/vsizip/{path}/{shps[0]}" if "/" in shps[0] else str(path)


def _label_layer(
    source: str, path: Path, class_column: str | None, asked: str | None
) -> str | None:
    """The layer to read: ``asked`` (``--labels-layer``), else from a file with several
    (GeoPackage, File Geodatabase, KML folders, ...) the only one with geometries, features and
    the class column. Several candidates are refused, naming them."""
    import pyogrio

    listed = pyogrio.list_layers(source)
    layers = [str(name) for name, _ in listed]
    if asked is not None:
        if asked not in layers:
            raise LabelError(
                f"{path.name} has no layer {asked!r}; its layers: "
                f"{', '.join(repr(n) for n in layers[:20])}. Pass --labels-layer with one of them"
            )
        return asked
    if len(layers) < 2:
        return None
    column = class_column or "class"
    info = {name: pyogrio.read_info(source, layer=name) for name in layers}
    spatial = {str(name) for name, geometry in listed if geometry is not None}
    with_column = [  # a table without geometry (a legend of the classes) holds no labels
        n
        for n in layers
        if n in spatial and info[n]["features"] and column in list(info[n]["fields"])
    ]
    if len(with_column) == 1:
        others = ", ".join(repr(n) for n in layers if n != with_column[0])
        warnings.warn(
            f"{path.name} holds {len(layers)} layers; reading {with_column[0]!r}, the only one "
            f"with geometries and a {column!r} column (the others: {others})",
            stacklevel=4,
        )
        return with_column[0]

    def described(n):
        fields = list(info[n]["fields"])
        cols = ", ".join(fields[:5]) + (f", ... ({len(fields)} in all)" if len(fields) > 5 else "")
        return f"{n!r} ({info[n]['features']} features, columns: {cols or '-'})"

    shown = "; ".join(described(n) for n in layers[:8]) + ("; ..." if len(layers) > 8 else "")
    raise LabelError(
        f"{path.name} holds {len(layers)} layers and geotune reads one: {shown}. Name the "
        "layer with the labels (--labels-layer NAME), or merge the layers into one (e.g. "
        "QGIS's Merge vector layers)"
    )


def _closing_rings(source: str, layer: str | None, path: Path, error: Exception):
    """The labels with unclosed rings closed (their first point repeated at their end), and a
    warning naming those features; what cannot be closed so is an error naming them."""
    import geopandas as gpd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # GDAL's own note on unclosed rings
        bad = gpd.read_file(source, layer=layer, on_invalid="ignore").geometry.isna()
        try:
            gdf = gpd.read_file(source, layer=layer, on_invalid="fix")
        except Exception:
            gdf = None
    rows = ", ".join(str(i + 1) for i in bad[bad].index[:10]) + (" ..." if bad.sum() > 10 else "")
    if gdf is None:
        raise LabelError(
            f"feature(s) {rows} of {path.name} have a geometry that cannot be read "
            f"({_reader_reason(error, path)}); fix them in a GIS (e.g. QGIS's Fix geometries)"
        ) from None
    warnings.warn(
        f"feature(s) {rows} of {path.name} had a ring that was not closed (first and last point "
        "differ); closed it",
        stacklevel=4,
    )
    return gdf


def _reader_reason(error: Exception, path: Path) -> str:
    """The reader's message about ``path``, without the path and GDAL's hint about driver
    prefixes (which a user cannot act on)."""
    text = str(error).split("; It might help", 1)[0]
    if "not recognized as being in a supported file format" in text:
        return "GDAL does not recognise its format"
    text = text.replace(f"'{path}'", "it").replace(str(path), "it").strip().rstrip(".")
    return text[:300] or error.__class__.__name__


def checked_frame(gdf, path: Path, grid=None) -> None:
    """Refuse what has no labels to read: no geometry column, no features, no CRS (saying which
    CRS its coordinates look like, the imagery's ``grid``'s where they fall on it), or
    coordinates that do not fit the CRS the file states."""
    if getattr(gdf, "_geometry_column_name", None) is None:
        raise LabelError(
            f"{path.name} has no geometry column (a table without shapes); save the label "
            "polygons with their geometries (e.g. export the layer as polygons from your GIS)"
        )
    if gdf.empty:
        raise LabelError(
            f"{path.name} holds no features; draw or export the label polygons into it first"
        )
    if gdf.crs is None:
        raise LabelError(_no_crs(gdf, path, grid))
    if gdf.crs.is_geographic:
        x0, y0, x1, y1 = gdf.total_bounds
        if not _fits_lonlat(x0, y0, x1, y1):
            raise LabelError(
                f"{path.name} says its coordinates are longitude/latitude ({gdf.crs.to_string()}) "
                f"but they reach x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}: they are projected "
                "coordinates without their CRS (a GeoJSON without a crs member is read as "
                "EPSG:4326). Save the labels with their CRS, e.g. ogr2ogr -s_srs EPSG:XXXX "
                f"-t_srs EPSG:4326 labels_4326.geojson {path.name}, or as a GeoPackage."
            )


def _fits_lonlat(x0: float, y0: float, x1: float, y1: float) -> bool:
    """Whether bounds can be longitude/latitude (x within -180..360, y within ±90)."""
    return -180.001 <= x0 and x1 <= 360.001 and max(abs(y0), abs(y1)) <= 90.001


def _no_crs(gdf, path: Path, grid) -> str:
    """What to do about labels without a CRS: the CRS their coordinates look like (longitude/
    latitude; else projected, and the imagery's CRS where they fall on the imagery in it), set
    with geopandas, which geotune installs."""
    x0, y0, x1, y1 = (float(v) for v in gdf.total_bounds)
    where = f"x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}"
    crs = "EPSG:XXXX"
    if _fits_lonlat(x0, y0, x1, y1):
        guess, crs = "they look like longitude/latitude (EPSG:4326)", "EPSG:4326"
    else:
        guess = "they are projected coordinates"
        if grid is not None and grid.crs is not None:
            g0, g1, g2, g3 = grid.bounds
            if x0 < g2 and x1 > g0 and y0 < g3 and y1 > g1:
                epsg = grid.crs.to_epsg()
                crs = f"EPSG:{epsg}" if epsg else crs
                guess += f" that fall on the imagery read in its CRS ({crs})"
    fixed = f"{path.stem}_crs.gpkg"
    return (
        f"{path.name} has no CRS (its coordinates: {where}; {guess}). Save it with the CRS its "
        "coordinates are in (GeoJSON is EPSG:4326 by definition), e.g. in its folder with the "
        'Python geotune runs in (geopandas comes with it): python -c "import geopandas as g; '
        f"g.read_file('{path.name}').set_crs('{crs}').to_file('{fixed}')\", then give {fixed}"
    )


def one_spelling(values, path: Path, column: str):
    """Class names that differ only in case ("Water", "water") as one class, spelled as most
    labels spell it, with a warning naming them."""
    names = values[values.map(lambda v: isinstance(v, str))]
    if names.empty:
        return values
    counts = names.value_counts()
    groups: dict[str, list[str]] = {}
    for name in sorted(counts.index, key=lambda n: (-counts[n], n)):
        groups.setdefault(name.casefold(), []).append(name)
    rename = {}
    for spellings in groups.values():
        if len(spellings) > 1:
            kept = spellings[0]
            rename |= {n: kept for n in spellings[1:]}
            shown = ", ".join(f"{n!r} ({counts[n]})" for n in spellings)
            warnings.warn(
                f"class values {shown} in {column!r} of {path.name} differ only in case: taken "
                f"as one class {kept!r}. If they are different classes, rename one in the file.",
                stacklevel=3,
            )
    return values.map(lambda v: rename.get(v, v)) if rename else values
