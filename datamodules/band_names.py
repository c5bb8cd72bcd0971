"""A file's bands named: from its band descriptions (alpha bands, the mask, left out), for a
sensor from its asset ids in the descriptions (``B04``, ``SR_B4``, Earth Engine's ``B4``) or in
the file names (``..._B8A.jp2``)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from rasterio.enums import ColorInterp

from .errors import ImageryError
from .sensors import Sensor


def names_from_descriptions(ds) -> list[str] | None:
    """The band descriptions, alpha bands left out (they are the mask), when every band has one."""
    desc = [
        d for d, ci in zip(ds.descriptions, ds.colorinterp, strict=True) if ci != ColorInterp.alpha
    ]
    if all(desc):  # repeated names are refused where they are used, saying which
        return [d.strip() for d in desc]
    return None


def names_for_sensor(desc: list[str], sensor: Sensor, file_name: str) -> list[str | None] | None:
    """Band names from a file's band descriptions for ``sensor``: its STAC common names or its
    asset ids (``B04``, ``SR_B4``; ``B4`` as Google Earth Engine writes it), in any case, order
    and subset; None for a description that names no band of the sensor (a quality or index
    band: ``QA60``, ``SCL``, ``NDVI``), which the caller leaves out. None when no description
    names a band of the sensor (then the descriptions are not band names); an error when two
    name the same band."""
    lookup = {b.name.lower(): b.name for b in sensor.bands}
    for b in sensor.bands:
        if b.asset and not b.asset.isdigit():
            lookup |= {b.asset.lower(): b.name, _unpadded(b.asset): b.name}
    names = [lookup.get(_unpadded(d.strip())) or lookup.get(d.strip().lower()) for d in desc]
    if not any(names):
        return None
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise ImageryError(
            f"{file_name}: band descriptions name {', '.join(twice)} more than once; the "
            f"sensor's bands are: {', '.join(sensor.band_names)}. Fix the band descriptions, or "
            "name the file's bands in order with --bands"
        )
    unknown = [d for d, n in zip(desc, names, strict=True) if n is None]
    if unknown:
        warnings.warn(
            f"{file_name}: band description{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} name{'' if len(unknown) > 1 else 's'} no band of "
            f"sensor {sensor.id} ({', '.join(sensor.band_names)}): "
            f"{'those bands are' if len(unknown) > 1 else 'that band is'} left out",
            stacklevel=4,
        )
    return names


def _unpadded(band_id: str) -> str:
    """A band id in lower case without the zeros before its number: ``B02``, ``b2`` → ``b2``;
    ``B8A`` → ``b8a``; ``SR_B04`` → ``sr_b4`` (Google Earth Engine names Sentinel-2's bands
    ``B2``, ESA ``B02``)."""
    return re.sub(r"(?<=[a-z_])0+(?=\d)", "", band_id.lower())


def name_from_filename(path: Path, sensor: Sensor | None) -> str | None:
    if sensor is None:
        return None
    stem = path.stem.upper()
    hits = [
        b.name
        for b in sensor.bands
        if b.asset and re.search(rf"(^|[_\-.]){re.escape(b.asset.upper())}($|[_\-.])", stem)
    ]
    return hits[0] if len(hits) == 1 else None
