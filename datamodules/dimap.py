"""SNAP's products (BEAM-DIMAP): a ``.dim`` file and the ``.data`` folder beside it.

ESA's SNAP saves every product it processes (a Sentinel-2 scene resampled to 10 m and cut to
an area is the common case) as ``scene.dim``, an XML document, and ``scene.data/``, one ENVI
file per band (``B2.img`` + ``B2.hdr``). The band files hold the stored values; the ``.dim``
holds what they mean: per band its name, ``SCALING_FACTOR`` and ``SCALING_OFFSET`` (Sentinel-2
from processing baseline 04.00: 0.0001 and -0.1) and its no-data value. GDAL reads the band
files but not the ``.dim``, so given with ``--image scene.dim``, geotune reads the document for
the scale, offset and no-data value of each band and the band files from its ``.data`` folder
only, and converts the values exactly into the sensor table's units, as for any file that
declares its scale and offset. Bands that are no band of the sensor (SNAP's masks, angles,
``quality_*``, ``scl_*``) are left out unless ``--bands`` names them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .band_names import _unpadded, band_ids, product_band_names
from .errors import ImageryError


def product_folder(path: Path) -> Path | None:
    """The ``.dim`` file of a SNAP product (given as the ``.dim`` or its ``.data`` folder)."""
    if path.is_dir() and path.suffix.lower() == ".data" and path.with_suffix(".dim").is_file():
        return path.with_suffix(".dim")
    if path.suffix.lower() == ".dim" and path.is_file():
        return path
    return None


def product_bands(dim: Path, sensor, bands: list[str] | None):
    """The band files of the product for ``bands`` (default: each band of ``sensor`` it holds),
    their names, and what the ``.dim`` declares of each: ``(files, names, declared)``."""
    info = _bands_of(dim)
    if sensor is None and not bands:
        raise ImageryError(
            f"{dim.name} is a SNAP product; name its sensor (--sensor sentinel-2-l2a) or the "
            f"bands to read (--bands, from its bands: {', '.join(info)})"
        )
    lookup = _sensor_lookup(sensor) if sensor is not None else {}
    by_name = {}
    for snap_name, band in info.items():
        if bands and snap_name in bands:
            by_name[snap_name] = band
        elif name := lookup.get(_unpadded(snap_name)) or lookup.get(snap_name.lower()):
            by_name.setdefault(name, band)
    have = [b for b in (sensor.band_names if sensor else []) if b in by_name]
    have += [b for b in by_name if b not in have]
    names = product_band_names(dim.name, have, bands)
    chosen = [by_name[n] for n in names]
    declared = {
        "scales": [b["scale"] for b in chosen],
        "offsets": [b["offset"] for b in chosen],
        "nodata": {b["nodata"] for b in chosen},
        "source": dim.name,
    }
    return [b["file"] for b in chosen], names, declared


def apply(scene, declared: dict) -> None:
    """What the ``.dim`` declares, onto the scene of its band files (ENVI files declare none)."""
    scene.scales, scene.offsets = declared["scales"], declared["offsets"]
    nodata = declared["nodata"] - {None}
    if len(nodata) > 1:
        raise ImageryError(
            f"{declared['source']} declares different no-data values for the bands it gives "
            f"({', '.join(f'{v:g}' for v in sorted(nodata))}); pick bands that share one (--bands)"
        )
    if nodata:  # the product's own word, over the sensor's usual fill value
        scene.nodata = nodata.pop()
        scene.nodata_source = f"{declared['source']}'s NO_DATA_VALUE"


def quality_band(dim: Path, sensor) -> tuple[Path, str]:
    """A Sentinel-2 L2A product's scene classification band, as SNAP names it, for
    --mask-clouds."""
    info = _bands_of(dim)
    scl = info.get("quality_scene_classification")
    if scl is None or sensor is None or sensor.id != "sentinel-2-l2a":
        raise ImageryError(
            f"{dim.name} has no band quality_scene_classification (a Sentinel-2 L2A product's "
            "scene classification, as SNAP names it) to mask clouds with (--mask-clouds): keep "
            "that band when you resample or subset in SNAP, or leave out --mask-clouds"
        )
    return scl["file"], "scl"


def _sensor_lookup(sensor) -> dict[str, str]:
    """A SNAP band name (``B2``, ``B8A``, or a common name) in lower case → the table's band."""
    lookup = {_unpadded(i): n for i, n in band_ids(sensor, "").items()}
    return lookup | {n.lower(): n for n in sensor.band_names}


def _bands_of(dim: Path) -> dict[str, dict]:
    """Each band of the document: its file in the ``.data`` folder, scale, offset, no-data."""
    try:
        root = ET.parse(dim).getroot()
    except (ET.ParseError, OSError) as e:
        raise ImageryError(f"cannot read {dim.name}: {e}") from None
    if root.tag != "Dimap_Document" or root.find("Image_Interpretation") is None:
        raise ImageryError(f"{dim.name} is not a SNAP (BEAM-DIMAP) product document")
    data = dim.with_suffix(".data").resolve()
    files = {}
    for entry in root.iter("Data_File"):
        path = entry.find("DATA_FILE_PATH")
        href = (path.get("href") if path is not None else None) or ""
        target = (dim.parent / href).with_suffix(".img").resolve()
        if data not in target.parents:  # the document names files in its own folder only
            raise ImageryError(
                f"{dim.name} names a band file outside {data.name} ({href}); geotune reads a "
                "SNAP product's bands from its .data folder only"
            )
        files[_text(entry, "BAND_INDEX")] = target
    out = {}
    for band in root.iter("Spectral_Band_Info"):
        index, name = _text(band, "BAND_INDEX"), _text(band, "BAND_NAME")
        if index not in files:
            continue  # a virtual band (an expression): no file
        if not files[index].is_file():
            raise ImageryError(
                f"{dim.name}: the file of band {name} ({files[index].name}) is missing from "
                f"{data.name}; copy the whole product (the .dim and its .data folder)"
            )
        used = (_text(band, "NO_DATA_VALUE_USED") or "false").lower() == "true"
        out[name] = {
            "file": files[index],
            "scale": float(_text(band, "SCALING_FACTOR") or 1.0),
            "offset": float(_text(band, "SCALING_OFFSET") or 0.0),
            "nodata": float(_text(band, "NO_DATA_VALUE")) if used else None,
        }
    if not out:
        raise ImageryError(f"{dim.name} lists no band with a file in {data.name}")
    return out


def _text(node, tag: str) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else None


__all__ = ["apply", "product_bands", "product_folder", "quality_band"]
