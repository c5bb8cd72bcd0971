"""Files that arrive over HTTP are hostile: this module is the one place that opens them.

GDAL/OGR read hundreds of formats, and several of them point at further files or URLs (VRT,
GDALG pipelines, SQLite's virtual tables, WMS, STAC item collections ...). A labels upload must
never make the server read another file or fetch a URL. The rules:

- **Kinds by content.** :func:`serve.uploads.save_upload` keeps a file only when its first bytes
  are those of an accepted kind (GeoTIFF; GeoJSON, GeoPackage, zipped Shapefile, GeoParquet,
  FlatGeobuf) and names it itself; no client string becomes a path.
- **Allowed drivers only.** Rasters are opened here with GDAL's ``GTiff`` driver alone. The
  process that reads label files (the ingest job, :mod:`serve.ingestion`) starts with every
  GDAL/OGR driver skipped except ``GTiff``, ``GeoJSON``, ``GPKG``, ``ESRI Shapefile``,
  ``FlatGeobuf`` and ``MEM`` (GeoParquet is read by pyarrow): see :func:`job_env`.
- **Containers are unpacked by us.** A zip may hold one shapefile's own members (``.shp .shx
  .dbf .prj .cpg``) and nothing else: no folders of other files, links, or other formats;
  they are extracted under names the server chooses (:func:`unpack_shapefile`). A GeoPackage
  may hold tables only: views and virtual tables (other than its R-tree index) are refused
  before GDAL opens it (:func:`check_geopackage`).
- **No network.** The ingest job runs in its own network namespace where the system allows it
  (:func:`isolate`): even a path that slipped through could not reach a host.
- **Bounded work.** Pixels of every raster (imagery and mask) are checked from the header
  before any is read; a zip's unpacked size before it is unpacked; the number of features and
  vertices before rasterization (:func:`check_vector_size`); the ingest job's memory is capped.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from datamodules.errors import UserError

RASTER_DRIVERS = ("GTiff",)
VECTOR_DRIVERS = ("GeoJSON", "GPKG", "ESRI Shapefile", "FlatGeobuf")
INTERNAL_DRIVERS = ("MEM",)  # in-memory rasters that rasterio's rasterize/warp use internally
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
REQUIRED_PARTS = (".shp", ".shx", ".dbf")
# opened files never look for siblings (.aux.xml, .ovr, .msk) next to them
OPEN_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_VRT_ENABLE_RAWRASTERBAND": "NO"}


class UntrustedFileError(UserError):
    """An upload that is refused: the message says what is wrong and what is accepted."""


@dataclass(frozen=True)
class Limits:
    """What one request may cost. Checked before the work each bounds."""

    max_pixels: int = 400_000_000  # per raster: imagery and label masks alike
    max_bands: int = 64
    max_unpacked_mb: float = 1024.0  # a zip's members together, unpacked
    max_features: int = 200_000  # label features per file
    max_vertices: int = 20_000_000  # label vertices per file
    memory_mb: int = 8192  # address space of the ingest process

    @property
    def max_unpacked_bytes(self) -> int:
        return int(self.max_unpacked_mb * 1024 * 1024)


# -- rasters --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RasterInfo:
    width: int
    height: int
    count: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def open_raster(path: Path):
    """A dataset of an uploaded GeoTIFF, opened with the GTiff driver alone and no sibling
    files; the caller closes it (``with open_raster(p) as src``)."""
    import rasterio

    with rasterio.Env(**OPEN_ENV):
        return rasterio.open(path, driver=RASTER_DRIVERS[0])


def inspect_raster(path: Path, shown: str, limits: Limits) -> RasterInfo:
    """The size of an uploaded GeoTIFF from its header; refused when it is not a readable
    GeoTIFF, is cut short, or is over the limits (nothing of its pixels is read)."""
    import rasterio

    try:
        with open_raster(path) as src:
            info = RasterInfo(src.width, src.height, src.count)
            if info.pixels > limits.max_pixels:
                raise _too_many_pixels(shown, info.pixels, limits.max_pixels)
            if info.count > limits.max_bands:
                raise UntrustedFileError(
                    f"{shown} has {info.count} bands; this server accepts at most "
                    f"{limits.max_bands}. Keep the bands the model uses (gdal_translate -b ...)."
                )
            _check_blocks_inside(src, path.stat().st_size, shown)
    except rasterio.errors.RasterioIOError as e:
        reason = _gdal_reason(str(e), path)
        raise UntrustedFileError(
            f"{shown} is damaged or cut short: it is not a readable GeoTIFF ({reason}). Upload "
            "the whole GeoTIFF/COG again."
        ) from None
    return info


class TooManyPixels(UntrustedFileError):
    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


def _too_many_pixels(shown: str, n: int, limit: int) -> TooManyPixels:
    return TooManyPixels(
        f"{shown} has {n:,} pixels; this server accepts at most {limit:,} pixels per raster. "
        "Crop it, or split it into parts.",
        limit,
    )


def _check_blocks_inside(src, size: int, shown: str) -> None:
    """Every tile or strip the header lists lies inside the file (a cut-short upload fails
    here, not halfway through the work)."""
    by_band = src.interleaving is not None and src.interleaving.value == "BAND"
    bands = range(1, src.count + 1) if by_band else [1]
    bh, bw = src.block_shapes[0]
    rows, cols = -(-src.height // bh), -(-src.width // bw)
    for b in bands:
        for r in range(rows):
            for c in range(cols):
                off = src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=b)
                n = src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=b)
                if off is None or n is None:
                    continue  # a sparse block: no data stored, read as nodata/zero
                if int(off) + int(n) > size:
                    raise UntrustedFileError(
                        f"{shown} is cut short: its header lists data up to byte "
                        f"{int(off) + int(n):,} but the file has {size:,} bytes. Upload the "
                        "whole file again."
                    )


def _gdal_reason(message: str, path: Path) -> str:
    """GDAL's message without the server's path."""
    text = message.replace(str(path), "the file").replace(path.name, "the file")
    return text.strip().rstrip(".")[:300] or "GDAL cannot open it"


# -- zipped shapefiles ----------------------------------------------------------------------------
def unpack_shapefile(zip_path: Path, dest: Path, shown: str, limits: Limits) -> Path:
    """The shapefile in ``zip_path``, unpacked into ``dest`` as ``labels.<ext>``; refused when
    the zip holds anything but one shapefile's own members, or unpacks larger than the limit."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise UntrustedFileError(f"{shown} is not a readable zip file") from None
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        parts = _shapefile_members(members, shown)
        total = sum(i.file_size for i in parts.values())
        if total > limits.max_unpacked_bytes:
            raise UntrustedFileError(
                f"{shown} unpacks to {total / 1e6:,.0f} MB; this server accepts at most "
                f"{limits.max_unpacked_mb:g} MB unpacked. Split the labels into smaller files."
            )
        dest.mkdir(parents=True, exist_ok=True)
        for ext, info in parts.items():
            _extract(zf, info, dest / f"labels{ext}", shown)
    shp = dest / "labels.shp"
    with open(shp, "rb") as f:
        if f.read(4) != b"\x00\x00\x27\x0a":
            raise UntrustedFileError(f"{shown}: its .shp member is not a shapefile")
    return shp


def _shapefile_members(members: list[zipfile.ZipInfo], shown: str) -> dict[str, zipfile.ZipInfo]:
    allowed = ", ".join(SHAPEFILE_PARTS)
    parts: dict[str, zipfile.ZipInfo] = {}
    stems = set()
    for info in members:
        name = info.filename
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode) or name.startswith("/") or ".." in name.split("/"):
            raise UntrustedFileError(
                f"{shown} holds a link or a path outside the zip ({_printable(name)!r}); zip "
                "the shapefile's own files only"
            )
        base = name.rsplit("/", 1)[-1]
        if base.startswith("._") or name.startswith("__MACOSX/"):
            continue  # macOS resource forks beside the real files: not read, not unpacked
        stem, dot, ext = base.rpartition(".")
        ext = f".{ext.lower()}" if dot else ""
        if ext not in SHAPEFILE_PARTS:
            gdb = ".gdb/" in name.lower()
            raise UntrustedFileError(
                f"{shown} holds {_printable(base)!r}; a labels zip may hold one shapefile's own "
                f"files only ({allowed})"
                + (
                    ", not a File Geodatabase: export its labels layer, e.g. ogr2ogr -f GPKG "
                    "labels.gpkg parcels.gdb LAYER, and upload labels.gpkg"
                    if gdb
                    else ""
                )
            )
        if ext in parts:
            raise UntrustedFileError(
                f"{shown} holds more than one {ext} file; zip one shapefile per upload"
            )
        parts[ext] = info
        stems.add(stem)
    missing = [e for e in REQUIRED_PARTS if e not in parts]
    if missing:
        raise UntrustedFileError(
            f"{shown} has no {' or '.join(missing)} member; a zipped shapefile needs its .shp, "
            ".shx and .dbf (and .prj for its CRS)"
        )
    if len(stems) > 1:
        raise UntrustedFileError(
            f"{shown} holds files of several names ({', '.join(sorted(map(_printable, stems)))}); "
            "zip one shapefile's files, which share one name"
        )
    return parts


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, shown: str) -> None:
    """Copy one member, stopping at its declared size (a lying header cannot unpack more)."""
    budget = info.file_size
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(min(1 << 20, budget + 1)):
                budget -= len(chunk)
                if budget < 0:
                    raise UntrustedFileError(f"{shown}: a member unpacks larger than it declares")
                out.write(chunk)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError) as e:
        raise UntrustedFileError(f"{shown} cannot be unpacked: {e}") from None


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:100]


# -- GeoPackage -----------------------------------------------------------------------------------
def check_geopackage(path: Path, shown: str) -> None:
    """A GeoPackage whose feature layers are plain tables; views, virtual tables (other than the
    spatial index's R-trees) and SQLite files that are not GeoPackages are refused."""
    uri = f"file:{path}?mode=ro&immutable=1"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error:
        raise UntrustedFileError(f"{shown} is not a readable GeoPackage") from None
    try:
        con.execute("PRAGMA trusted_schema=OFF")
        rows = con.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        objects = {name: (kind, sql or "") for kind, name, sql in rows}
        if "gpkg_contents" not in objects or "gpkg_geometry_columns" not in objects:
            raise UntrustedFileError(
                f"{shown} is an SQLite file but not a GeoPackage (no gpkg_contents table); save "
                "the labels as a GeoPackage, e.g. ogr2ogr -f GPKG labels.gpkg ..."
            )
        for kind, name, sql in rows:
            if kind == "view":
                raise UntrustedFileError(
                    f"{shown} holds the view {_printable(name)!r}; geotune reads tables only. "
                    "Save the layer as a table (ogr2ogr -f GPKG out.gpkg in.gpkg layer)."
                )
            if re.match(r"\s*CREATE\s+VIRTUAL\s+TABLE", sql or "", re.I) and not re.search(
                r"USING\s+rtree\s*\(", sql, re.I
            ):
                raise UntrustedFileError(
                    f"{shown} holds the virtual table {_printable(name)!r}, which geotune does "
                    "not read; save the labels as plain GeoPackage tables"
                )
        layers = con.execute(
            "SELECT table_name FROM gpkg_contents WHERE data_type = 'features'"
        ).fetchall()
    except sqlite3.DatabaseError as e:
        raise UntrustedFileError(f"{shown} is not a readable GeoPackage ({e})") from None
    finally:
        con.close()
    if not layers:
        raise UntrustedFileError(
            f"{shown} has no feature layer (no geometry column); save the label polygons in it"
        )


# -- label files as a whole -----------------------------------------------------------------------
def prepare_labels(path: Path, kind: str, shown: str, work: Path, limits: Limits) -> Path:
    """The path GDAL may open for an uploaded labels file of ``kind`` (its sniffed kind), after
    the checks of its container; a zip becomes the unpacked ``.shp``."""
    if kind == "zip":
        return unpack_shapefile(path, work / f"{path.stem}-shp", shown, limits)
    if kind == "gpkg":
        check_geopackage(path, shown)
    return path


def check_vector_size(path: Path, shown: str, limits: Limits) -> None:
    """Refuse a label file with more features than the limit, from its header where the format
    has one (Shapefile, GeoPackage, FlatGeobuf) before its geometries are read."""
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        import pyarrow.parquet as pq

        try:
            n = pq.ParquetFile(path).metadata.num_rows
        except Exception as e:  # pyarrow raises several kinds for a damaged file
            raise UntrustedFileError(f"{shown} is not a readable GeoParquet file ({e})") from None
    else:
        import pyogrio

        try:
            n = pyogrio.read_info(path, force_feature_count=True)["features"]
        except Exception as e:  # pyogrio's DataSourceError and friends
            reason = _gdal_reason(str(e), path)
            raise UntrustedFileError(f"cannot read labels {shown}: {reason}") from None
    if n > limits.max_features:
        raise UntrustedFileError(
            f"{shown} holds {n:,} features; this server accepts at most {limits.max_features:,} "
            "label features per file. Merge small polygons of one class, or split the area."
        )


def check_vertices(gdf, shown: str, limits: Limits) -> None:
    """Refuse labels whose geometries have more vertices than the limit (before rasterizing)."""
    import shapely

    n = int(shapely.get_num_coordinates(gdf.geometry.values).sum())
    if n > limits.max_vertices:
        raise UntrustedFileError(
            f"{shown} has {n:,} vertices; this server accepts at most {limits.max_vertices:,}. "
            "Simplify the polygons (e.g. ogr2ogr -simplify 1 out.gpkg in.gpkg)."
        )


# -- the process that reads uploads ---------------------------------------------------------------
@lru_cache(maxsize=1)
def _skipped_drivers() -> str:
    import pyogrio
    import rasterio

    with rasterio.Env() as env:
        names = set(env.drivers())
    names |= set(pyogrio.list_drivers())
    keep = set(RASTER_DRIVERS) | set(VECTOR_DRIVERS) | set(INTERNAL_DRIVERS)
    return ",".join(sorted(names - keep))


def job_env() -> dict[str, str]:
    """Environment of a process that reads uploaded files: every GDAL/OGR driver but the allowed
    ones is skipped when GDAL starts (comma-separated: driver names may hold spaces), siblings
    are not searched, and GDAL's default error printer is silent (rasterio and pyogrio raise
    the errors; the skip list names drivers that only one of their two GDAL builds has)."""
    return OPEN_ENV | {"GDAL_SKIP": _skipped_drivers(), "CPL_LOG": os.devnull}


def isolate(memory_mb: int) -> list[str]:
    """In the process that reads uploads, before it opens one: no network (a network namespace
    of its own, where the kernel allows it) and at most ``memory_mb`` of address space. Returns
    notes on what could not be applied (the driver allow-list of :func:`job_env` still holds)."""
    import resource

    notes = []
    try:
        _own_network_namespace()
    except (AttributeError, OSError) as e:
        notes.append(
            f"no network namespace of its own ({e.__class__.__name__}: {e}); the GDAL driver "
            "allow-list still applies"
        )
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return notes


def _own_network_namespace() -> None:
    """A network namespace with no interface but a down loopback: every connect fails. As root
    directly; otherwise inside a user namespace that maps this user to itself (so the files the
    process writes keep their owner)."""
    try:
        os.unshare(os.CLONE_NEWNET)
        return
    except PermissionError:
        pass
    uid, gid = os.getuid(), os.getgid()
    os.unshare(os.CLONE_NEWUSER | os.CLONE_NEWNET)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
