"""STAC imagery sources: catalog presets (``conf/stac/*.yaml``) and item search by AOI + dates.

A catalog is a STAC API (searched with pystac-client) or a static catalog (a ``catalog.json``,
``collection.json``, item or ItemCollection file: :mod:`datamodules.stac_static`). Its config says, per geotune sensor id, which collection(s) to search, which
asset holds which band (geotune band names from :mod:`datamodules.sensors`), which asset is the
cloud/quality mask and which of its classes or bits mean "not a clear view", which radiometric
harmonisation applies, and how assets are accessed (:mod:`datamodules.stac_access`).

Presets: ``earth_search`` (Element 84, the default), ``planetary_computer`` (Microsoft) and
``earthdata_lpcloud`` (NASA LP DAAC, for HLS). ``--catalog`` takes a preset name or the path of a
YAML file of the same shape; ``--catalog-url`` (or ``GEOTUNE_STAC_URL``) points a preset at another
URL: a mirror, a private STAC API, or a static copy (on disk or at a URL) with the same asset keys.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from .errors import UserError
from .sensors import get_sensor
from .stac_access import Public

PRESETS_DIR = Path(__file__).resolve().parent.parent / "conf" / "stac"
DEFAULT_CATALOG = "earth_search"
DEFAULT_MAX_CLOUD = 40.0  # % scene cloud cover (pixels are masked too)
DEFAULT_MAX_ITEMS = 24  # the clearest scenes kept for a composite (per period with frames > 1)
DEFAULT_MAX_AOI_KM2 = 10_000.0


class StacError(UserError):
    """A catalog cannot be used or searched; the message says what to change."""


class NoImageryError(StacError):
    """The search found no usable imagery."""


@dataclass(frozen=True)
class MaskSpec:
    """The quality-mask asset and which of its values mean "no clear view of the ground"."""

    asset: str
    classes: tuple[int, ...] = ()  # class values (Sentinel-2 SCL)
    bits: tuple[int, ...] = ()  # bit positions, invalid when set (Landsat QA_PIXEL, HLS Fmask)
    nodata: int | None = None  # a mask value meaning "no data", besides the file's nodata

    def invalid(self, values: np.ndarray) -> np.ndarray:
        """``True`` where a pixel must not be used; ``values`` is float with NaN for no data."""
        bad = ~np.isfinite(values)
        v = np.where(bad, 0, values).astype(np.int64)
        if self.classes:
            bad |= np.isin(v, self.classes)
        if self.bits:
            bad |= (v & sum(1 << b for b in self.bits)) != 0
        if self.nodata is not None:
            bad |= v == self.nodata
        return bad


@dataclass(frozen=True)
class CollectionSpec:
    collection: str
    assets: dict[str, str]  # geotune band name → asset key
    mask: MaskSpec | None = None
    harmonize: str | None = None  # a rule of composite.HARMONIZE
    cloud_cover: bool = True  # items carry eo:cloud_cover
    platforms: tuple[str, ...] = ()  # only these platforms (e.g. Landsat 8/9 of Landsat 4-9)
    access: Callable | None = None  # overrides the catalog's access hook


@dataclass
class SensorSource:
    sensor: str
    collections: list[CollectionSpec]
    dtype: str = "uint16"  # the composite's data type
    nodata: float | None = 0  # the composite's nodata (None: NaN for float types)

    def bands(self) -> list[str]:
        """Bands every collection has, in the sensor table's order."""
        have = set.intersection(*(set(c.assets) for c in self.collections))
        return [b for b in get_sensor(self.sensor).band_names if b in have]


@dataclass
class Catalog:
    name: str
    url: str
    sensors: dict[str, SensorSource]
    access: Callable = field(default_factory=Public)
    description: str = ""

    def __post_init__(self):
        self.sensors = {k: _source(k, v) for k, v in self.sensors.items()}

    @property
    def is_static(self) -> bool:
        """A static catalog (a local path, ``file://``, a ``.json`` or ``.parquet`` URL) rather
        than an API."""
        u = self.url
        path = u.split("?")[0].lower()
        return "://" not in u or u.startswith("file://") or path.endswith((".json", ".parquet"))

    def source(self, sensor: str) -> SensorSource:
        get_sensor(sensor)
        if sensor not in self.sensors:
            others = [p for p in presets() if p != self.name and sensor in _preset_sensors(p)]
            hint = (
                f" Catalogs that have it: {', '.join(others)} (--catalog NAME)." if others else ""
            )
            raise StacError(
                f"catalog {self.name} has no {sensor} imagery; it has: "
                f"{', '.join(self.sensors)}.{hint}"
            )
        return self.sensors[sensor]

    def access_for(self, spec: CollectionSpec) -> Callable:
        return spec.access or self.access


def _source(sensor: str, v) -> SensorSource:
    if isinstance(v, SensorSource):
        return v
    get_sensor(sensor)
    cols = []
    for c in v["collections"]:
        c = dict(c)
        if c.get("mask"):
            m = dict(c["mask"])
            c["mask"] = MaskSpec(
                m["asset"], tuple(m.get("classes", ())), tuple(m.get("bits", ())), m.get("nodata")
            )
        unknown = set(c["assets"]) - set(get_sensor(sensor).band_names)
        if unknown:
            raise StacError(f"{sensor} in the catalog config names unknown bands {sorted(unknown)}")
        c["platforms"] = tuple(c.get("platforms", ()))
        cols.append(CollectionSpec(**c))
    return SensorSource(sensor, cols, v.get("dtype", "uint16"), v.get("nodata", 0))


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _preset_sensors(name: str) -> list[str]:
    from omegaconf import OmegaConf

    return list(OmegaConf.load(PRESETS_DIR / f"{name}.yaml").get("sensors", {}))


def load_catalog(catalog: str | None = None, url: str | None = None) -> Catalog:
    """A catalog from a preset name or a YAML path (default ``GEOTUNE_STAC_CATALOG``, else
    ``earth_search``), its URL replaced by ``url`` (default ``GEOTUNE_STAC_URL``) if given."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    catalog = catalog or os.environ.get("GEOTUNE_STAC_CATALOG") or DEFAULT_CATALOG
    url = url or os.environ.get("GEOTUNE_STAC_URL")
    path = Path(catalog).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise StacError(f"catalog config {path} does not exist")
    elif catalog in presets():
        path = PRESETS_DIR / f"{catalog}.yaml"
    else:
        raise StacError(
            f"unknown catalog {catalog!r}; presets: {', '.join(presets())}, or the path of a "
            "YAML file shaped like conf/stac/earth_search.yaml"
        )
    cfg = OmegaConf.load(path)
    if url:
        cfg.url = url
    try:
        return instantiate(cfg, _convert_="all")
    except Exception as e:
        raise StacError(f"catalog config {path} is not usable: {e}") from None


# -- search ---------------------------------------------------------------------------------------
@dataclass
class Found:
    item: object  # pystac.Item
    spec: CollectionSpec

    @property
    def when(self) -> datetime:
        return item_datetime(self.item)

    @property
    def cloud(self) -> float | None:
        """The scene's cloud cover (%), ``None`` when the item does not state it."""
        v = self.item.properties.get("eo:cloud_cover")
        return None if v is None else float(v)

    @property
    def href(self) -> str | None:
        """Where the item's JSON is: its ``self`` link (an API URL or the static file)."""
        return self.item.get_self_href()

    def record(self, **extra) -> dict:
        """The item as the provenance lists it."""
        return {
            "id": self.item.id,
            "collection": self.spec.collection,
            "datetime": self.when.isoformat().replace("+00:00", "Z"),
            "href": self.href,
            "cloud_cover": "unknown" if self.cloud is None else self.cloud,
            "platform": self.item.properties.get("platform"),
            **extra,
        }


def item_datetime(item) -> datetime:
    dt = item.datetime
    if dt is None:
        dt = datetime.fromisoformat(item.properties["start_datetime"].replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def search_items(
    catalog: Catalog,
    source: SensorSource,
    aoi,
    start: date,
    end: date,
    *,
    max_cloud: float | None,
    timeout: float = 30.0,
) -> list[Found]:
    """Items over the AOI between ``start`` and ``end`` (inclusive) with cloud cover at most
    ``max_cloud``, clearest first (items that do not state their cover after those that do: their
    pixels are masked like any other's), then earliest."""
    found: list[Found] = []
    others: Counter = Counter()  # items of platforms the catalog config does not read
    if catalog.is_static:
        from .stac_static import static_search

        held = static_search(catalog, source, aoi, start, end)
    for spec in source.collections:
        if catalog.is_static:
            items = held[spec.collection]
        else:
            items = _api_search(catalog, spec, aoi, start, end, max_cloud, timeout)
        for it in items:
            if it.collection_id not in (None, spec.collection):
                continue  # a server that answers with other collections' items too
            f = Found(it, spec)
            if not (start <= f.when.date() <= end):
                continue  # APIs differ on inclusive ends and time zones: one rule here
            if spec.platforms and it.properties.get("platform") not in spec.platforms:
                others[str(it.properties.get("platform"))] += 1
                continue
            if max_cloud is not None and f.cloud is not None and f.cloud > max_cloud:
                continue
            found.append(f)
    if not found and others:
        took = sorted({p for spec in source.collections for p in spec.platforms})
        raise NoImageryError(
            f"the {sum(others.values())} {source.sensor} items over the AOI in these dates are "
            f"from {', '.join(sorted(others))}; catalog {catalog.name} reads {source.sensor} "
            f"from {', '.join(took)} only (the sensor table's bands). Choose dates those cover, "
            "or give the other scenes as files with --image (a Landsat 4-7 scene folder is "
            "read by its own band numbers)"
        )
    found.sort(key=lambda f: (f.cloud is None, f.cloud or 0.0, f.when, f.item.id))
    return found


def choose(
    found: list[Found], spans: list[tuple[date, date]], max_items: int
) -> tuple[list[list[Found]], list[Found]]:
    """Per period, its ``max_items`` clearest items (``found`` is clearest first); and the items
    left out by that cap."""
    chosen: list[list[Found]] = [[] for _ in spans]
    left = []
    for f in found:
        d = f.when.date()
        k = next((i for i, (a, b) in enumerate(spans) if a <= d <= b), None)
        if k is None:
            continue
        if len(chosen[k]) < max_items:
            chosen[k].append(f)
        else:
            left.append(f)
    return chosen, left


def _api_search(catalog, spec, aoi, start, end, max_cloud, timeout):
    import pystac_client
    from pystac_client.conformance import ConformanceClasses
    from pystac_client.stac_api_io import StacApiIO
    from shapely.geometry import mapping
    from urllib3.util.retry import Retry

    retry = Retry(
        total=3,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
    )
    try:
        client = pystac_client.Client.open(
            catalog.url, stac_io=StacApiIO(timeout=timeout, max_retries=retry)
        )
        kwargs = dict(
            collections=[spec.collection],
            intersects=mapping(aoi),
            datetime=f"{start.isoformat()}/{end.isoformat()}",
            max_items=2000,
        )
        if max_cloud is not None and max_cloud < 100 and spec.cloud_cover:
            # items that do not state their cover are kept; the query extension cannot say
            # "or unknown", so without CQL2 the cover is filtered here, not by the server
            if client.conforms_to(ConformanceClasses.FILTER):
                cover = {"property": "eo:cloud_cover"}
                kwargs["filter"] = {
                    "op": "or",
                    "args": [
                        {"op": "<=", "args": [cover, max_cloud]},
                        {"op": "isNull", "args": [cover]},
                    ],
                }
                kwargs["filter_lang"] = "cql2-json"
        return list(client.search(**kwargs).items())
    except Exception as e:  # requests / pystac-client errors: connection, HTTP status, JSON
        raise StacError(
            f"searching {catalog.url} ({spec.collection}) failed: {e}. Check the catalog URL "
            "(--catalog-url / GEOTUNE_STAC_URL) and the network."
        ) from None


@dataclass
class Observation:
    """One acquisition: the items of one date, collection and platform (neighbouring tiles of one
    overpass), mosaicked clearest first."""

    key: tuple[str, str, str]  # (date, collection, platform)
    found: list[Found]

    @property
    def when(self) -> datetime:
        """The acquisition time: the earliest of its items' (the overpass reaching the area)."""
        return min(f.when for f in self.found)

    @property
    def date(self) -> date:
        return self.when.date()


def observations(found: list[Found]) -> list[Observation]:
    groups: dict[tuple[str, str, str], list[Found]] = {}
    for f in found:
        key = (f.when.date().isoformat(), f.spec.collection, str(f.item.properties.get("platform")))
        groups.setdefault(key, []).append(f)
    return [Observation(k, v) for k, v in sorted(groups.items())]


def periods(start: date, end: date, n: int) -> list[tuple[date, date]]:
    """``n`` consecutive, equal periods covering ``start``..``end`` (inclusive)."""
    days = (end - start).days + 1
    if n > days:
        raise StacError(f"{n} dates asked for a range of {days} day(s); widen the date range")
    edges = [start + timedelta(days=round(i * days / n)) for i in range(n + 1)]
    return [(edges[i], edges[i + 1] - timedelta(days=1)) for i in range(n)]


__all__ = [
    "Catalog",
    "CollectionSpec",
    "Found",
    "MaskSpec",
    "NoImageryError",
    "Observation",
    "SensorSource",
    "StacError",
    "choose",
    "load_catalog",
    "observations",
    "periods",
    "presets",
    "search_items",
]
