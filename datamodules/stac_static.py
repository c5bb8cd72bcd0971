"""Static STAC catalogs: the file a catalog's ``--catalog-url`` names, on disk or at a URL.

What people keep of a public catalog comes in five shapes, all read here: a ``catalog.json`` or
a ``collection.json`` (walked with pystac, children and items), one item's JSON, an
ItemCollection (a GeoJSON FeatureCollection of items, as STAC APIs answer searches and as
``stac-client search --save`` and ``stac-asset download`` write them; its items' relative asset
hrefs are relative to that file), and a stac-geoparquet file (the bulk copies Planetary Computer
publishes of whole collections; read with pyarrow, from disk only). A local catalog's JSON is
read from this machine only: a link out of it (``https://``, ``s3://``) is refused, not fetched.

Items are matched to the catalog config's collections by their ``collection`` field. A file
whose items are all of other collections (a copy of Earth Search v0's ``sentinel-s2-l2a-cogs``
read with the preset that searches v1's ``sentinel-2-c1-l2a`` and ``sentinel-2-l2a``) is said,
with the collections it holds and the config to change, rather than answered "no items, widen
the dates".
"""

from __future__ import annotations

import functools
from collections import Counter
from datetime import date

from .stac import PRESETS_DIR, Catalog, SensorSource, StacError, item_datetime


def static_search(
    catalog: Catalog, source: SensorSource, aoi, start: date, end: date
) -> dict[str, list]:
    """Per collection of ``source``, the catalog's items over ``aoi`` between ``start`` and
    ``end`` (inclusive)."""
    from shapely.geometry import box, shape

    items = static_items(str(catalog.url))
    wanted = {spec.collection for spec in source.collections}
    held = Counter(item.collection_id for item in items)
    if items and not wanted & set(held):
        raise StacError(_other_collections(catalog, source, held))
    out: dict[str, list] = {c: [] for c in wanted}
    for item in items:
        if item.collection_id not in wanted:
            continue
        geom = shape(item.geometry) if item.geometry else box(*item.bbox)
        if geom.intersects(aoi) and start <= item_datetime(item).date() <= end:
            out[item.collection_id].append(item)
    return out


def static_items(url: str) -> list:
    """Every item of the static catalog, collection, item or ItemCollection file at ``url``."""
    import pystac
    from pystac.stac_io import DefaultStacIO

    io = _local_stac_io()() if _is_local(url) else DefaultStacIO()
    try:
        if url.split("?")[0].lower().endswith(GEOPARQUET):
            d = {"type": "FeatureCollection", "features": _geoparquet_items(url)}
        else:
            d = io.read_json(url)
        kind = d.get("type") if isinstance(d, dict) else None
        # an item's relative asset hrefs are relative to the file that holds it: its href
        # replaces whatever self link the item kept from where it was copied
        if kind in ("FeatureCollection", "Feature"):
            features = (d.get("features") or []) if kind == "FeatureCollection" else [d]
            if not all(isinstance(f, dict) and "stac_version" in f for f in features):
                raise ValueError("it is GeoJSON, but its features are not STAC items")
            return [pystac.Item.from_dict(f, href=url) for f in features]
        obj = pystac.read_dict(d, href=url, stac_io=io)
        if not isinstance(obj, pystac.Catalog):  # a Collection is a Catalog
            raise ValueError(f"it is a STAC {type(obj).__name__}, not a catalog or items")
        return list(obj.get_items(recursive=True))
    except StacError:
        raise
    except Exception as e:  # pystac, JSON and OS errors of a catalog, its links and items
        cause = e
        while cause is not None and not isinstance(cause, StacError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # a refused link, wrapped by pystac
            raise cause from None
        raise StacError(
            f"cannot read the static catalog {url}: {e}. Give a STAC catalog.json, "
            "collection.json, item JSON or ItemCollection (a FeatureCollection of items), and "
            "check the files its links name"
        ) from None


GEOPARQUET = (".parquet", ".geoparquet")
_CORE = {"type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links", "assets",
         "collection"}  # fmt: skip


def _geoparquet_items(url: str) -> list[dict]:
    """The items of a stac-geoparquet file (one row per item; its properties are columns,
    ``geometry`` WKB, ``bbox`` a struct, unset fields null), as item dicts. Read from this
    machine only."""
    import pyarrow.parquet as pq
    import shapely
    from shapely.geometry import mapping

    if not _is_local(url):
        raise StacError(
            f"{url} is a stac-geoparquet file on another machine; a stac-geoparquet copy is read "
            "from disk: download it and give its path"
        )
    rows = pq.read_table(url.removeprefix("file://")).to_pylist()
    items = []
    for row in rows:
        row = _without_nulls(row)
        bbox = row.get("bbox")
        if isinstance(bbox, dict):
            keys = ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")
            row["bbox"] = [bbox[k] for k in keys if k in bbox]
        if isinstance(row.get("geometry"), bytes):
            row["geometry"] = mapping(shapely.from_wkb(row["geometry"]))
        props = {k: _json_value(v) for k, v in row.items() if k not in _CORE}
        core = {"type": "Feature", "stac_version": "1.0.0", "links": [], "assets": {}}
        items.append(core | {k: v for k, v in row.items() if k in _CORE} | {"properties": props})
    return items


def _without_nulls(value):
    """Struct columns unify their fields over all rows: a field an item does not have is null."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _json_value(value):
    from datetime import datetime

    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _other_collections(catalog: Catalog, source: SensorSource, held: Counter) -> str:
    collections = sorted({s.collection for s in source.collections})
    wanted = ", ".join(collections)
    named = [(c, n) for c, n in held.most_common() if c is not None]
    found = ", ".join(f"{c} ({n})" for c, n in named)
    unnamed = held.get(None, 0)
    preset = PRESETS_DIR / f"{catalog.name}.yaml"
    config = str(preset) if preset.is_file() else "your catalog YAML"
    text = (
        f"the static catalog {catalog.url} holds {sum(held.values())} items, none of collection "
        f"{wanted}, where the {catalog.name} catalog finds {source.sensor} imagery"
    )
    if found:
        text += (
            f". It holds {found}: if that is {source.sensor} imagery, copy {config} to a file of "
            f"your own, set a `collection:` under `{source.sensor}:` to {named[0][0]} "
            "(and its `assets:` to the items' asset keys), and pass --catalog that-file.yaml"
        )
    if unnamed:
        text += (
            f'. {unnamed} items name no collection: add "collection": "{collections[0]}" '
            "to each item's JSON"
        )
    return text


def _is_local(href: str) -> bool:
    from urllib.parse import urlparse

    scheme = urlparse(href).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a Windows drive letter


@functools.cache
def _local_stac_io():
    """The StacIO class of a local static catalog (made once, on first use: pystac is imported
    lazily)."""
    from pystac.stac_io import DefaultStacIO

    class LocalStacIO(DefaultStacIO):
        """A local static catalog's JSON is read from this machine only: a link out of it
        (``https://``, ``s3://``) is refused, not fetched."""

        def read_text(self, source, *args, **kwargs) -> str:
            href = str(source)
            if not _is_local(href):
                raise StacError(
                    f"the local static catalog links to {href}, which is not on this machine; "
                    "a local catalog is read from its own files only: mirror that part too, or "
                    "remove the link"
                )
            return super().read_text(source, *args, **kwargs)

    return LocalStacIO


__all__ = ["static_items", "static_search"]
