"""A file's bands named: from its band descriptions (alpha bands, the mask, left out), for a
sensor from its asset ids in the descriptions (``B04``, ``SR_B4``, Earth Engine's ``B4``) or in
the file names (``..._B8A.jp2``).

A band id means what the mission that wrote the file means by it. The sensor table follows
Landsat 8/9 (OLI) and HLS S30; Landsat 4-7 (TM, ETM+) number their bands otherwise (``SR_B3`` is
red, ``SR_B4`` near infrared) and so does HLS L30 (``B05`` near infrared, ``B10``/``B11``
thermal). The product id at the start of a file name (``LE07_L2SP_...``, ``HLS.L30....``) says
which; files whose values are not in the sensor's units at all (Landsat 4-7 Level-1: 8-bit
radiance) or whose bands the table lacks (MSS) are refused with what to give instead."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from rasterio.enums import ColorInterp

from .errors import ImageryError
from .product_quality import quality_kind
from .sensors import Sensor


def colour_names(ds) -> list[str] | None:
    """``red, green, blue`` for a file whose bands but its alpha band are interpreted as red,
    green and blue (an orthophoto; GDAL's default for any 3-band 8-bit file), else None."""
    interp = [ci for ci in ds.colorinterp if ci != ColorInterp.alpha]
    if interp == [ColorInterp.red, ColorInterp.green, ColorInterp.blue]:
        return ["red", "green", "blue"]
    return None


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
    ids = band_ids(sensor, file_name)
    _check_tm_descriptions(desc, sensor, file_name, ids)
    for band_id, name in ids.items():
        if not band_id.isdigit():
            lookup |= {band_id.lower(): name, _unpadded(band_id): name}
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
    left = [(d, quality_kind(d) is not None) for d, n in zip(desc, names, strict=True) if n is None]
    unknown = [d for d, quality in left if not quality]
    for d in (d for d, quality in left if quality):
        warnings.warn(
            f"{file_name}: band {d!r} is a quality band, not an image band: left out of the "
            "image bands (--mask-clouds reads the clouds from the quality bands)",
            stacklevel=4,
        )
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
    stem = _unpadded(path.stem)  # B2 (Earth Engine, SNAP) is B02 (ESA), in any case
    hits = [
        name
        for band_id, name in band_ids(sensor, path.name).items()
        # Landsat's SR_B5/ST_B10 are not another sensor's B5/B10
        if re.search(rf"(^|[_\-.])(?<!sr_)(?<!st_){re.escape(_unpadded(band_id))}($|[_\-.])", stem)
    ]
    if not hits:  # named by the band's name itself, whole or last: red.tif, T33UUP_2023_nir08.tif
        last = re.split(r"[_\-.]", path.stem.lower())[-1]
        hits = [b for b in sensor.band_names if b.lower() in (path.stem.lower(), last)]
    return hits[0] if len(hits) == 1 else None


@dataclass(frozen=True)
class Mission:
    """Products of one mission, known by the product id their file names start with, whose band
    ids mean other bands of ``sensor`` than the table's (``ids``), or that ``refused`` says
    cannot be read as any of ``sensors``."""

    name: str
    pattern: re.Pattern
    sensors: tuple[str, ...]
    ids: dict[str, str] | None = None  # the mission's band id → the table's band name
    refused: str = ""


_TM_L2 = {"SR_B1": "blue", "SR_B2": "green", "SR_B3": "red", "SR_B4": "nir08", "SR_B5": "swir16",
          "SR_B7": "swir22", "ST_B6": "lwir11"}  # fmt: skip
_LANDSAT = ("landsat-c2-l1", "landsat-c2-l2")
# a product id starts the name, or follows the server's prefix (image1-LE07_...; dots as _)
_START = r"(?:^|[-_.])"
MISSIONS = (
    Mission(
        "Landsat 4-7 (TM/ETM+) Level-2",
        re.compile(rf"{_START}L[TE]0[4-7]_L2S[PR]_"),
        _LANDSAT[1:],
        _TM_L2,
    ),  # fmt: skip
    Mission(
        "Landsat 4-7 (TM/ETM+) Level-1",
        re.compile(rf"{_START}L[TE]0[4-7]_L1"),
        _LANDSAT,
        refused="stores 8-bit calibrated radiance in TM/ETM+ band numbers, not the 16-bit "
        "reflectance of Landsat 8/9 that {sensor} is: give the scene's Level-2 files "
        "(L?0?_L2SP_..._SR_B*.TIF, from the same USGS download) with --sensor landsat-c2-l2",
    ),
    Mission(
        "Landsat MSS",
        re.compile(rf"{_START}LM0[1-5]_L1"),
        _LANDSAT,
        refused="holds MSS bands (green, red and two near-infrared bands at 60 m), which {sensor} "
        "does not have: name the bands in file order with --bands and leave out --sensor",
    ),
    Mission(
        "HLS L30 (Landsat OLI)",
        re.compile(rf"{_START}HLS[._]L30[._]"),
        ("hls",),
        {
            "B01": "coastal",
            "B02": "blue",
            "B03": "green",
            "B04": "red",
            "B05": "nir08",
            "B06": "swir16",
            "B07": "swir22",
            "B09": "cirrus",
        },
    ),  # fmt: skip
)


def band_ids(sensor: Sensor, file_name: str) -> dict[str, str]:
    """The provider's band id → the sensor table's band name, for the mission that wrote
    ``file_name`` (the table's own asset ids unless :data:`MISSIONS` says otherwise)."""
    name = Path(file_name).name
    for m in MISSIONS:
        if sensor.id in m.sensors and m.pattern.search(name):
            if m.refused:
                raise ImageryError(f"{name} is {m.name}: it {m.refused.format(sensor=sensor.id)}")
            return dict(m.ids)
    return {b.asset: b.name for b in sensor.bands if b.asset}


def _check_tm_descriptions(desc, sensor: Sensor, file_name: str, ids: dict[str, str]) -> None:
    """A stack whose band descriptions are Landsat Level-2 ids but whose name does not say the
    mission (an Earth Engine export): with ``ST_B6``, or ``SR_B7`` without ``SR_B6``, it is
    Landsat 4-7's numbering, which reads as Landsat 8/9's with every band shifted."""
    if sensor.id != "landsat-c2-l2" or ids == _TM_L2:
        return
    have = {d.strip().upper() for d in desc}
    if "ST_B6" in have or ("SR_B7" in have and "SR_B6" not in have):
        raise ImageryError(
            f"{Path(file_name).name}: its band descriptions ({', '.join(d.strip() for d in desc)}) "
            "look like Landsat 4-7's (TM/ETM+: SR_B3 red, SR_B4 near infrared, no SR_B6), not "
            "Landsat 8/9's that the name SR_B4 means red in. Start the file name with the "
            "product id (LE07_L2SP_..., LT05_L2SP_... or LC08_L2SP_...), or name the bands in "
            "order with --bands"
        )


def product_band_names(product: str, have: list[str], bands: list[str] | None) -> list[str]:
    """The bands to read of a product folder that holds ``have``: ``bands`` (``--bands``),
    each of which it must hold, else all it holds."""
    names = list(bands) if bands else have
    missing = [n for n in names if n not in have]
    if missing:
        raise ImageryError(
            f"{product} holds no band file of {', '.join(missing)}; its bands: "
            f"{', '.join(have)}. Fix --bands"
        )
    return names
