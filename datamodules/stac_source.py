"""What the found STAC items offer: which bands they carry, and on which pixel grids.

A composite should sit on the source's pixels. Each item's band assets state their grid with the
projection extension (``proj:code``/``proj:epsg``/``proj:wkt2`` and ``proj:transform``, on the
asset or the item); where they do not, the asset's header is read. :func:`output_grid` then
picks the output CRS (``--crs``, else the CRS most items are in) and puts the grid's edges on the
items' lattice: their origin modulo the pixel size (Landsat and HLS: 15 m modulo 30).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS

from .aoi import grid_for, local_crs, pixel_size, to_crs
from .cog_read import ReadOptions, read_header
from .imagery import Grid
from .stac import Found, StacError


@dataclass(frozen=True)
class AssetGrid:
    crs: CRS
    transform: Affine

    @property
    def res(self) -> float:
        return abs(self.transform.a)

    def anchor(self, size: float) -> tuple[float, float]:
        """The lattice of pixels of ``size`` through this grid's origin: (x, y) modulo ``size``."""
        return (round(self.transform.c % size, 6) % size, round(self.transform.f % size, 6) % size)


# -- bands ----------------------------------------------------------------------------------------
LACKS = "lacks"  # how the reason of an item left out for a missing asset starts


def usable_bands(
    found: list[Found],
    sensor: str,
    configured: list[str],
    asked: list[str] | None,
    what: str,
    catalog: str | None = None,
) -> tuple[list[str], list[str], list[Found], dict[str, str]]:
    """The bands to composite, the configured bands left out, the items kept, and why others
    were skipped (item id → reason).

    Without ``asked`` the bands are :func:`_default_bands`; with ``asked`` (``--bands`` or a
    model's), items lacking one are skipped (so is an item without its quality mask, where other
    items of its collection have theirs), and when no item has them all
    the message names the missing assets and ``what`` to change; and, where the items' asset
    keys are another preset's than ``catalog``'s (a copy of Planetary Computer's items read
    with ``earth_search``), that preset."""

    def missing(f: Found, bands) -> list[str]:
        return [b for b in bands if f.spec.assets[b] not in f.item.assets]

    mask_less = [f for f in found if f.spec.mask and f.spec.mask.asset not in f.item.assets]
    n_of = Counter(f.spec.collection for f in found)
    lost = set(n_of) - {f.spec.collection for f in found if f not in mask_less}
    # no item of a collection has its mask: the config's key, not a broken item (unless it is
    # that collection's one item, and other items are left)
    lost = {c for c in lost if n_of[c] > 1 or len(mask_less) == len(found)}
    if lost:
        f = next(f for f in mask_less if f.spec.collection in lost)
        raise StacError(
            f"item {f.item.id} of {f.spec.collection} has no quality-mask asset "
            f"{f.spec.mask.asset!r} (its assets: {', '.join(f.item.assets)}). "
            + (_preset_of_keys(found, sensor, catalog) or "Set the mask's asset key in the "
               "catalog config (mask: {asset: KEY, ...})")
        )  # fmt: skip
    skipped = {
        f.item.id: f"{LACKS} its quality-mask asset {f.spec.mask.asset!r}" for f in mask_less
    }
    found = [f for f in found if f not in mask_less]
    default = not asked
    if default:
        asked = _default_bands(found, configured)
        if not asked:
            raise StacError(
                f"no {sensor} band is in every item found; {_lack_text(found, configured)}. "
                + (_preset_of_keys(found, sensor, catalog) or "Fix the asset keys of the catalog config.")
            )  # fmt: skip
    keep = [f for f in found if not missing(f, asked)]
    if not keep:
        have = [b for b in configured if any(not missing(f, [b]) for f in found)]
        other = _preset_of_keys(found, sensor, catalog)
        raise StacError(
            f"no item found has every band asked for: {_lack_text(found, asked)}. "
            + (other or f"{what} (bands the items have: {', '.join(have) or 'none'})")
        )
    skipped |= {
        f.item.id: f"{LACKS} the asset(s) "
        + ", ".join(repr(f.spec.assets[b]) for b in missing(f, asked))
        for f in found
        if missing(f, asked)
    }
    left_out = [b for b in configured if b not in asked] if default else []
    return list(asked), left_out, keep, skipped


def _default_bands(found: list[Found], configured: list[str]) -> list[str]:
    """The bands of a composite made without ``--bands``: of the sets of configured bands the
    items hold, the one that keeps the most band x item pairs. Items that lack a band everyone
    else has (a provider's broken item with two of its twelve assets) are left out rather than
    take the band from every other item; bands few items have are left out rather than the
    items."""
    held = [frozenset(b for b in configured if f.spec.assets[b] in f.item.assets) for f in found]
    candidates = set(held) | {frozenset.intersection(*held)}

    def score(bands: frozenset) -> tuple[int, int]:
        n = sum(bands <= h for h in held)
        return len(bands) * n, n

    best = max(candidates, key=lambda c: (*score(c), sorted(c)))
    return [b for b in configured if b in best]


def _preset_of_keys(found: list[Found], sensor: str, catalog: str | None) -> str:
    """'these are PRESET's asset keys: pass --catalog PRESET' where another preset's collection
    of ``sensor`` names more of the first item's assets than the one searched; else ''."""
    from .stac import _preset_sensors, load_catalog, presets

    item, spec = found[0].item, found[0].spec

    def named(s) -> int:
        keys = set(s.assets.values()) | ({s.mask.asset} if s.mask else set())
        return len(keys & set(item.assets))

    best, most = None, named(spec)
    for name in presets():
        if name == catalog or sensor not in _preset_sensors(name):
            continue
        for other in load_catalog(name).source(sensor).collections:
            if named(other) > most:
                best, most = name, named(other)
    if best is None:
        return ""
    return (
        f"The items' asset keys are the {best} preset's: pass --catalog {best} (keeping "
        "--catalog-url), or set the asset keys in your catalog config"
    )


def _lack_text(found: list[Found], bands: list[str]) -> str:
    lacking: dict[str, str] = {}
    for f in found:
        for b in bands:
            key = f.spec.assets[b]
            if key not in f.item.assets:
                lacking.setdefault(b, f"{b} (asset {key!r}, e.g. in {f.item.id})")
    return "the items lack " + "; ".join(lacking.values())


# -- grids ----------------------------------------------------------------------------------------
def _stated_grid(item, asset) -> AssetGrid | None:
    """The grid an asset states with the projection extension (asset fields before item's)."""

    def field(*keys):
        for where in (asset.extra_fields, item.properties):
            for k in keys:
                if where.get(k) is not None:
                    return k, where[k]
        return None, None

    key, value = field("proj:code", "proj:epsg", "proj:wkt2")
    _, transform = field("proj:transform")
    if value is None or not transform or len(transform) < 6:
        return None
    try:
        crs = CRS.from_epsg(int(value)) if key == "proj:epsg" else CRS.from_user_input(value)
    except Exception:  # a value GDAL cannot read: the header decides
        return None
    return AssetGrid(crs, Affine(*[float(v) for v in transform[:6]]))


def item_grids(
    found: list[Found], bands: list[str], access_for, options: ReadOptions
) -> dict[tuple[str, str], AssetGrid]:
    """(item id, band) → the band asset's grid; headers are read where items state none."""
    grids, todo = {}, []
    for f in found:
        for b in bands:
            asset = f.item.assets[f.spec.assets[b]]
            g = _stated_grid(f.item, asset)
            if g is None:
                todo.append((f, b, asset))
            else:
                grids[(f.item.id, b)] = g

    def header(task):
        f, b, asset = task
        return AssetGrid(
            *read_header(access_for(f.spec)(asset.get_absolute_href(), f.spec.collection), options)
        )

    with ThreadPoolExecutor(max(1, options.workers)) as pool:
        for (f, b, _a), g in zip(todo, pool.map(header, todo), strict=True):
            grids[(f.item.id, b)] = g
    return grids


def output_grid(
    geom, grids: dict, resolution_m: float, crs=None, margin_px: int = 0
) -> tuple[Grid, dict]:
    """The composite's grid and how it was chosen (for the provenance).

    CRS: ``crs``, else the one most items are in (ties: the AOI's UTM zone if among them).
    Pixels: ``resolution_m`` metres on the ground (:func:`datamodules.aoi.pixel_size`). Lattice:
    the origin modulo the pixel size of the items' assets of that CRS and pixel size, else of
    their finest assets; multiples of the pixel size when no item is in that CRS."""
    by_item: dict[str, CRS] = {}
    for (item_id, _b), g in grids.items():
        by_item.setdefault(item_id, g.crs)
    if crs:
        dst, crs_from = to_crs(crs), "--crs"
    elif by_item:
        counts = Counter(c.to_string() for c in by_item.values())
        best = max(counts.values())
        tied = sorted(c for c, n in counts.items() if n == best)
        local = local_crs(geom).to_string()
        dst, crs_from = to_crs(local if local in tied else tied[0]), "the items"
    else:
        dst, crs_from = local_crs(geom), "the AOI's UTM zone"
    size, scale = pixel_size(dst, resolution_m, geom)
    same = [g for g in grids.values() if g.crs == dst]
    exact = [g for g in same if abs(g.res - size) <= 1e-6 * size]
    finest = min((g.res for g in same), default=None)
    pool = exact or [g for g in same if g.res == finest]
    anchor = Counter(g.anchor(size) for g in pool).most_common(1)[0][0] if pool else (0.0, 0.0)
    grid = grid_for(geom, size, dst, margin_px=margin_px, anchor=anchor)
    info = {
        "crs": dst.to_string(),
        "crs_from": crs_from,
        "resolution_m": resolution_m,
        "pixel_size": size,
        "scale_at_centre": round(scale, 6),
        "lattice": (
            f"the items' grid (origin modulo {size:g}: {anchor[0]:g}, {anchor[1]:g})"
            if pool
            else f"multiples of {size:g} (no item is in {dst.to_string()})"
        ),
        "transform": list(grid.transform)[:6],
    }
    return grid, info


__all__ = ["LACKS", "AssetGrid", "item_grids", "output_grid", "usable_bands"]
