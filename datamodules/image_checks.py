"""Checks of user imagery that refuse what geotune cannot read right, saying how to fix it."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ImageryError


def check_local(paths) -> None:
    """``--image`` names files on this machine: a URL is said to be one, with how to get it."""
    for p in map(str, paths):
        m = re.match(r"^([a-z][a-z0-9+.-]*)://", p, re.I)
        if m is None:
            continue
        get = (
            f"download it first (curl -LO {p}) and give the file"
            if m[1].lower() in ("http", "https")
            else "copy it to this machine first and give the file"
        )
        raise ImageryError(
            f"--image takes files on this machine, not URLs ({p}): {get}, or let geotune fetch "
            "imagery from a STAC catalog by dates (--start and --end; predict also --aoi)"
        )


def check_file(ds, f: Path) -> None:
    """Refuse what geotune cannot place: no CRS (or only ground control points), a rotated or
    sheared pixel grid (outputs are north-up on the source grid)."""
    if ds.crs is None and ds.gcps[0]:
        raise ImageryError(
            f"{f.name} is georeferenced by ground control points (GCPs), not a pixel grid; warp "
            "it onto one first, e.g. gdalwarp -t_srs EPSG:32633 in.tif out.tif"
        )
    if ds.crs is None:
        raise ImageryError(
            f"{f.name} has no CRS (coordinate reference system). Georeference it first, e.g. "
            "gdal_translate -a_srs EPSG:32633 in.tif out.tif"
        )
    t = ds.transform
    if t.b != 0 or t.d != 0:
        raise ImageryError(
            f"{f.name} has a rotated pixel grid (geotransform terms {t.b:g}, {t.d:g}); outputs "
            "sit on a north-up grid: warp it first, e.g. gdalwarp in.tif north_up.tif"
        )


def check_one_unit(scenes: list) -> None:
    """Every date's files declare the same scale/offset: one unit for every date."""
    declared = [(s.scales, s.offsets) for s in scenes]
    if all(d == declared[0] for d in declared):
        return
    said = "; ".join(
        f"{s.files[0].name}: " + ("scale " + ", ".join(f"{v:g}" for v in s.scales or [1.0])
        + ", offset " + ", ".join(f"{v:g}" for v in s.offsets or [0.0]))
        for s in scenes
    )  # fmt: skip
    raise ImageryError(
        f"the dates declare different scales/offsets of their values ({said}); every date is "
        "read in one unit. Write them in one unit first (for Sentinel-2 products as ESA delivers "
        "them, give their .SAFE folders: geotune takes ESA's offset off)"
    )
