"""One acquisition indexed in two collections of a catalog: read once, from the preferred one.

A provider that reprocesses an archive indexes it again as a new collection, and keeps the old
one while the new has gaps: Earth Search's ``sentinel-2-c1-l2a`` (ESA's Collection 1, baseline
05.00 and later) is meant to replace its ``sentinel-2-l2a``, but lacks Nov 2016 to Nov 2019 and
2022. A sensor whose catalog config lists both searches both; an acquisition found in both is
kept from the collection listed first, so that it is not counted twice in a median or against
``--max-items``, and the gaps are filled from the other.
"""

from __future__ import annotations

import re
from datetime import timedelta

from .stac import Found, SensorSource

TWIN = "the same acquisition as"  # how a left-out twin's reason starts
SAME_ACQUISITION_S = 300  # a tile is seen again by its platform one orbit (~100 min) later


def tile(item) -> str | None:
    """The item's tile (MGRS for Sentinel-2, WRS-2 path/row for Landsat) where it says so, in
    one spelling: ``MGRS-5QKB`` whether a provider writes zone 5 as ``5`` or ``05``."""
    p = item.properties
    if p.get("grid:code"):
        code = str(p["grid:code"]).upper()
    elif p.get("s2:mgrs_tile"):
        code = f"MGRS-{p['s2:mgrs_tile']}".upper()
    elif all(
        p.get(k) is not None for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")
    ):
        code = f"MGRS-{p['mgrs:utm_zone']}{p['mgrs:latitude_band']}{p['mgrs:grid_square']}".upper()
    elif all(p.get(k) is not None for k in ("landsat:wrs_path", "landsat:wrs_row")):
        code = f"WRS2-{int(p['landsat:wrs_path']):03d}{int(p['landsat:wrs_row']):03d}"
    else:
        return None
    return re.sub(r"(?<=[-])0+(?=\d)", "", code)  # no zeros before a number


def same_acquisition(a: Found, b: Found) -> bool:
    """The same platform and tile, sensed within minutes. Without tile ids on both items:
    footprints that overlap by 90% or more (neighbouring tiles overlap by a tenth)."""
    if a.item.properties.get("platform") != b.item.properties.get("platform"):
        return False
    if abs((a.when - b.when).total_seconds()) > SAME_ACQUISITION_S:
        return False
    ta, tb = tile(a.item), tile(b.item)
    if ta is not None and tb is not None:
        return ta == tb
    from shapely.geometry import box, shape

    ga, gb = ((shape(f.item.geometry) if f.item.geometry else box(*f.item.bbox)) for f in (a, b))
    union = ga.union(gb).area
    return union > 0 and ga.intersection(gb).area / union >= 0.9


def one_per_acquisition(
    found: list[Found], source: SensorSource
) -> tuple[list[Found], dict[str, str]]:
    """``found`` (its order kept) without the items whose acquisition a collection listed
    earlier in the catalog config also holds (unless that one's item lacks assets its twin
    has); and those left out (item id → why). A sensor read from one collection keeps every
    item."""
    rank: dict[str, int] = {}
    for i, spec in enumerate(source.collections):
        rank.setdefault(spec.collection, i)
    if len(rank) < 2:
        return found, {}
    kept: dict[tuple, list[Found]] = {}  # (platform, day) → items kept
    twins: dict[str, str] = {}
    dropped: set[int] = set()

    def order(f: Found) -> tuple[int, int]:
        """Items holding more of the assets their collection's config names first (a
        provider's broken item gives way to its twin), then by collection; the sort is stable:
        clearest first."""
        keys = set(f.spec.assets.values()) | ({f.spec.mask.asset} if f.spec.mask else set())
        return -len(keys & set(f.item.assets)), rank[f.spec.collection]

    for f in sorted(found, key=order):
        platform, day = f.item.properties.get("platform"), f.when.date()
        near = [k for d in (-1, 0, 1) for k in kept.get((platform, day + timedelta(d)), [])]
        twin = next(
            (k for k in near if k.spec.collection != f.spec.collection and same_acquisition(k, f)),
            None,
        )
        if twin is None:
            kept.setdefault((platform, day), []).append(f)
        else:
            dropped.add(id(f))
            why = (
                f"the catalog config lists {twin.spec.collection} first"
                if order(f)[0] == order(twin)[0]
                else "this item lacks assets that one has"
            )
            twins[f.item.id] = (
                f"{TWIN} {twin.item.id} of {twin.spec.collection}, read from there ({why})"
            )
    return [f for f in found if id(f) not in dropped], twins


__all__ = ["TWIN", "one_per_acquisition", "same_acquisition", "tile"]
