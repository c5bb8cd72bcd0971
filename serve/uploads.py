"""Uploaded files reach the disk under names the server chooses, never the client's.

A file's kind is read from its first bytes (GeoTIFF, GeoPackage, zip, Parquet, FlatGeobuf,
GeoJSON), which fixes its suffix; the client's file name contributes at most a sanitised stem
(letters, digits, ``-``, ``_``; band files are named by it, e.g. ``..._B04``) and is otherwise
kept only for messages and provenance. So no client string becomes a path: no ``/vsi*``, no
``..``, no URL. What a file may point GDAL at once it is opened is :mod:`serve.untrusted`'s
concern.

The request body is limited (413) before it is read when it declares its length, and while it
is read when it does not (:class:`BodyLimit`): uploads (multipart) to the server's upload limit,
every other body (JSON, read into memory whole) to :data:`MAX_JSON_BYTES`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import UploadFile
from fastapi.responses import JSONResponse

from datamodules.errors import UserError
from datamodules.options import INGEST

from .errors import ApiError, PayloadTooLarge, error_body
from .untrusted import TooManyPixels

RASTER = {"tif"}
VECTOR = {"geojson", "gpkg", "zip", "parquet", "fgb"}
KIND_NAMES = {
    "tif": "GeoTIFF/COG",
    "geojson": "GeoJSON",
    "gpkg": "GeoPackage",
    "zip": "zipped Shapefile",
    "parquet": "GeoParquet",
    "fgb": "FlatGeobuf",
}


# kinds named in a refusal, never stored: what a user may upload instead of a GeoTIFF
OTHER_RASTERS = {
    b"\x00\x00\x00\x0cjP  \r\n\x87\n": "a JPEG 2000 file (Sentinel-2 SAFE bands are)",
    b"\x89HDF\r\n\x1a\n": "an HDF5/netCDF-4 file",
    b"CDF\x01": "a netCDF file",
    b"CDF\x02": "a netCDF file",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
}
TO_GEOPACKAGE = (
    '; convert it to a GeoPackage first, e.g. `python -c "import geopandas as g; '
    "g.read_file('IN').to_file('OUT.gpkg')\"` (geopandas, installed with geotune), "
    "`ogr2ogr OUT.gpkg IN` (GDAL) or QGIS's Export > Save Features As"
)
TO_GEOTIFF = (
    "; convert it to a GeoTIFF first, e.g. `rio convert IN OUT.tif --driver GTiff` (rasterio's "
    "command, installed with geotune) or `gdal_translate -of COG IN OUT.tif`"
)


class UploadError(UserError):
    pass


def sniff(head: bytes) -> str | None:
    """The file kind from its first bytes, or None."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tif"
    if head.startswith(b"SQLite format 3\x00"):
        return "gpkg"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"fgb\x03"):
        return "fgb"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        return "geojson"
    return None


def display_name(filename: str | None, fallback: str) -> str:
    """The client's file name for messages: its last path part, printable, at most 100 chars."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:100]
    return name or fallback


def safe_stem(filename: str | None) -> str:
    stem = re.split(r"[\\/]", filename or "")[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:64]


def save_upload(
    upload: UploadFile, folder: Path, base: str, allowed: set[str], role: str
) -> tuple[Path, str]:
    """Copy ``upload`` into ``folder`` as ``<base>[-<stem>].<kind>``; returns (path, display name)."""
    shown = display_name(upload.filename, role)
    upload.file.seek(0)
    head = upload.file.read(64)
    kind = sniff(head)
    if kind not in allowed:
        accepted = ", ".join(KIND_NAMES[k] for k in sorted(allowed))
        # a zip is only sniffed as one: what it holds is not known before it is unpacked
        raster = next((n for magic, n in OTHER_RASTERS.items() if head.startswith(magic)), None)
        other = "a KML file" if b"<kml" in head else raster
        what = {None: other or "not a format geotune reads", "zip": "a zip archive"}.get(kind)
        what = what or f"a {KIND_NAMES[kind]}"
        hint = ""
        if kind is None:  # a raster format where rasters go, else a vector one where they go
            if RASTER <= allowed and (raster or not VECTOR <= allowed):
                hint = TO_GEOTIFF
            elif VECTOR <= allowed:
                hint = TO_GEOPACKAGE
        raise UploadError(f"{role} {shown!r} is {what}; {role} must be: {accepted}{hint}")
    stem = safe_stem(upload.filename)
    path = folder / (f"{base}-{stem}.{kind}" if stem else f"{base}.{kind}")
    upload.file.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)
    return path, shown


# CLI flags named in the shared code's messages, and the form fields that carry them over HTTP;
# longer flags first: "--labels" is a prefix of "--labels-after"
FORM_FIELDS = {
    o.cli_flag: o.name for o in sorted(INGEST, key=lambda o: -len(o.cli_flag)) if o.cli and o.http
}
# words that follow a flag in a sentence, not as its value ("use a smaller --block-size so ...")
_WORDS = (
    "(?:or|and|in|to|with|for|first|instead|is|was|so|that|the|a|an|of|on|at|as|if|when|by|"
    "but|than|then|option|flag|value|alone|only|too|must|may|can|takes|needs|gives)"
)


def rename_in_message(message: str, names: dict[Path, str]) -> str:
    """A message of the shared code as an HTTP client needs it: the server's file paths and
    names replaced by the client's file names, CLI flags by the form fields."""
    for path, shown in sorted(names.items(), key=lambda kv: -len(str(kv[0]))):
        message = message.replace(str(path), shown).replace(path.name, shown)
    for flag, field in FORM_FIELDS.items():
        message = re.sub(
            rf"{flag} (?!{_WORDS}\b)([^\s,;]+?)(?=[.,;]?(\s|$))", rf"{field}=\1", message
        )
        message = re.sub(rf"{flag}\b", f"the {field} field", message)
    return message


@contextmanager
def upload_errors(names: dict[Path, str], folder: Path | None = None) -> Iterator[None]:
    """Checks of uploaded files as JSON 422s: too many pixels, or a user error whose message
    names the client's files and form fields (``names``: server path → client name, read when
    the error happens). Any failure first removes ``folder`` (the request's files), if given."""
    try:
        yield
    except BaseException as e:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(e, TooManyPixels):
            raise ApiError(422, "too_many_pixels", str(e), limit_pixels=e.limit) from None
        if isinstance(e, UserError):
            raise ApiError(422, "invalid_input", rename_in_message(str(e), names)) from None
        raise


MAX_JSON_BYTES = 16 * 1024 * 1024  # a body that is not multipart is parsed in memory whole


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than ``limit`` bytes (multipart uploads) or
    :data:`MAX_JSON_BYTES` (any other body) with 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        upload = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.limit if upload else min(self.limit, MAX_JSON_BYTES)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            err = PayloadTooLarge(limit, upload)
            response = JSONResponse(error_body(err.error, err.detail, **err.extra), status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(limit, upload)
            return message

        return await self.app(scope, counting_receive, send)
