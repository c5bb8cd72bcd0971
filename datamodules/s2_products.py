"""Sentinel-2 band files as ESA delivers them: the radiometric offset of processing baseline
04.00 and later, read from the product, and subtracted as the STAC path does.

Since 25 January 2022 (processing baseline 04.00), and in the archive ESA reprocessed since
(Collection 1, baseline 05.00), Level-1C and Level-2A products store ``reflectance x 10000 -
offset`` with an offset of -1000 (``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET`` in the product's
``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``), so that negative reflectance survives. The sensor
table's Sentinel-2 values are those of the products before 04.00 (reflectance x 10000), which is
what the STAC path harmonises to (:mod:`datamodules.observe`); a band file of such a product
gets the same: ``max(value + offset, 1)``, its NODATA (0) and SATURATED (65535) values kept.

Where the offset comes from, most certain first:

- the product's metadata file (``MTD_MSIL2A.xml`` at the root of the ``.SAFE`` folder the band
  file lies in): the offset of each band, and its quantification value;
- the product folder's name (``S2B_MSIL2A_20230612T101021_N0509_...``): its processing baseline
  (04.00 or later: -1000 in every band);
- the band file's own name (``T33UUP_20230612T101021_B04_10m.jp2``): sensed from 25 January 2022
  on, every product has the offset. Sensed before, a product may be the original (no offset) or
  ESA's reprocessing (offset): unknown, said as a warning.

Only band files named as ESA names them are read so; a file the user wrote (a stack, a
``gdal_translate`` copy under another name) says nothing of its history, and is read as it is.
"""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np

from .band_names import product_band_names
from .errors import ImageryError

BASELINE_04_DATE = date(2022, 1, 25)  # ESA's switch to processing baseline 04.00
# the band ids of the products' metadata, in the order of their band_id attributes (0..12)
BAND_IDS = tuple("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12".split())
NODATA, SATURATED = 0, 65535  # the products' special values, kept as they are

# a product folder: S2B_MSIL2A_20230612T101021_N0509_R022_T33UUP_20230612T130000(.SAFE)
_PRODUCT = re.compile(
    r"^S2[A-D]_MSI(L1C|L2A)_(\d{8})T\d{6}_N(\d{2})(\d{2})_R\d{3}_T\d{2}[A-Z]{3}_\d{8}T\d{6}"
    r"(\.SAFE)?$"
)
# a band file in it: T33UUP_20230612T101021_B04_10m.jp2 (L2A), T33UUP_20230612T101021_B04.jp2
_BAND_FILE = re.compile(
    r"^T\d{2}[A-Z]{3}_(\d{8})T\d{6}_(B\d[\dA])(_\d{2}m)?\.(jp2|tif|tiff)$", re.I
)


def harmonised(values: np.ndarray, add: float, quantification: float = 10000.0) -> np.ndarray:
    """Values stored with ESA's offset ``add`` (over ``quantification``) as the sensor table's:
    reflectance x 10000, negative reflectance clamped to 1, as products before 04.00. The one
    rule of band files (:meth:`Offset.harmonise`) and of the STAC path
    (:mod:`datamodules.observe`)."""
    return np.maximum((values + add) * (10000.0 / quantification), 1.0)


@dataclass(frozen=True)
class Offset:
    """The offset (``add``, digital numbers) a band file of an ESA product stores its values
    with, over ``quantification`` (10000); ``source``: where that was read."""

    add: float
    quantification: float
    source: str

    def harmonise(self, band: np.ndarray, nodata: float | None = None) -> None:
        """``band``'s values (not NODATA, SATURATED or ``nodata``), in place, as the sensor
        table's: reflectance x 10000, negative reflectance clamped to 1 (as before 04.00)."""
        valid = (band != NODATA) & (band != SATURATED)
        if nodata is not None:
            valid &= band != nodata
        values = harmonised(band[valid].astype(np.float64), self.add, self.quantification)
        if np.issubdtype(band.dtype, np.integer):
            values = np.clip(np.rint(values), 1, SATURATED - 1)
        band[valid] = values.astype(band.dtype)

    def describe(self) -> str:
        scale = "" if self.quantification == 10000 else f", rescaled from {self.quantification:g}"
        return f"{self.add:+g}{scale} ({self.source})"


def esa_band_file(path: Path) -> bool:
    """Is this a band file named as ESA names them (whose 0 is the products' NODATA)?"""
    return _BAND_FILE.match(path.name) is not None


def band_file_offset(path: Path) -> Offset | date | None:
    """The offset of a Sentinel-2 band file named as ESA names them. None: not such a file, or
    one without an offset; its sensing date where it cannot be told (sensed before 04.00, and
    outside its product folder)."""
    m = _BAND_FILE.match(path.name)
    if m is None:
        return None
    band = m[2].upper()
    for folder in list(path.resolve().parents)[:6]:  # IMG_DATA/R10m → GRANULE/... → the product
        if p := _PRODUCT.match(folder.name):
            return _product_offset(folder, p[1], p[3] + "." + p[4], band)
    try:
        sensed = date(int(m[1][:4]), int(m[1][4:6]), int(m[1][6:]))
    except ValueError:  # digits that are no calendar date
        return None
    if sensed >= BASELINE_04_DATE:
        return Offset(-1000.0, 10000.0, f"sensed {sensed}: every product since {BASELINE_04_DATE} "
                      "has processing baseline 04.00 or later")  # fmt: skip
    return sensed


def _product_offset(root: Path, level: str, baseline: str, band: str) -> Offset | None:
    meta = root / f"MTD_MSI{level}.xml"
    if meta.is_file():
        found = _metadata_offsets(meta, meta.stat().st_mtime_ns)
        if found is not None:
            offsets, quantification = found
            add = offsets.get(band, 0.0)
            if add == 0.0 and quantification == 10000.0:
                return None
            return Offset(add, quantification, f"{meta.name} of {root.name}")
    if float(baseline) >= 4.0:
        return Offset(-1000.0, 10000.0, f"processing baseline {baseline} in {root.name}")
    return None


@lru_cache(maxsize=8)
def _metadata_offsets(meta: Path, mtime_ns: int) -> tuple[dict[str, float], float] | None:
    """The per-band offsets and the quantification value in a product's metadata file (None:
    it cannot be read as one); parsed once per file and version, not once per band file."""
    try:
        root = ET.parse(meta).getroot()
    except (ET.ParseError, OSError):
        return None
    offsets, quantification = {}, 10000.0
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        text = (el.text or "").strip()
        try:
            if tag in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
                offsets[BAND_IDS[int(el.get("band_id", ""))]] = float(text)
            elif tag in ("BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE"):
                quantification = float(text)
        except (ValueError, IndexError):
            return None
    return offsets, quantification


def scene_offsets(files: list[Path]) -> list[Offset | None] | None:
    """One :class:`Offset` (or None) per band file; None when no file has one. Warns once when
    the product of ESA-named band files cannot tell."""
    found = [band_file_offset(f) for f in files]
    unknown = [(f, d) for f, d in zip(files, found, strict=True) if isinstance(d, date)]
    if unknown:
        f, sensed = unknown[0]
        more = f" (and {len(unknown) - 1} more band files)" if len(unknown) > 1 else ""
        warnings.warn(
            f"{f.name}{more} was sensed on {sensed}, before processing baseline 04.00, and lies "
            "outside its product folder: whether ESA reprocessed it (baseline 05.00: values "
            "offset by +1000) cannot be told, so its values are read as they are. Give the band "
            "files in their .SAFE folder as downloaded, where the folder's name and its "
            "MTD_MSIL*.xml say",
            stacklevel=3,
        )
    offsets = [d if isinstance(d, Offset) else None for d in found]
    return offsets if any(offsets) else None


# -- a product folder given as --image: its band files, each band at its finest resolution ----
def product_folder(path: Path) -> Path | None:
    """The product a ``--image`` path names: its ``.SAFE`` folder, or the metadata file in it."""
    if path.is_dir() and _PRODUCT.match(path.name):
        return path
    zipped = path.name.removesuffix(".zip")
    if zipped != path.name and _PRODUCT.match(zipped.removesuffix(".SAFE")):
        raise ImageryError(
            f"{path.name} is a zipped Sentinel-2 product: unzip it (unzip {path.name}) and give "
            "the .SAFE folder with --image"
        )
    if path.name in ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml") and _PRODUCT.match(path.parent.name):
        return path.parent
    return None


def product_bands(folder: Path, sensor, bands: list[str] | None) -> tuple[list[Path], list[str]]:
    """The band files of a product for ``bands`` (default: every band of ``sensor`` it holds),
    each at its finest resolution (an L2A product holds B02 at 10, 20 and 60 m), and their
    names. ``sensor`` must be the product's level (a :class:`~datamodules.sensors.Sensor`)."""
    level = _PRODUCT.match(folder.name)[1]
    want = "sentinel-2-l1c" if level == "L1C" else "sentinel-2-l2a"
    if sensor is None or sensor.id != want:
        said = f", not {sensor.id}" if sensor is not None else ""
        raise ImageryError(
            f"{folder.name} is a Sentinel-2 {level} product{said}: pass --sensor {want}"
        )
    found: dict[str, tuple[int, Path]] = {}
    for f in sorted(folder.glob("GRANULE/*/IMG_DATA/**/*.jp2")):
        m = _BAND_FILE.match(f.name)
        if m is None:
            continue  # TCI, SCL, AOT, WVP: not reflectance bands
        asset, res = m[2].upper(), int(m[3][1:3]) if m[3] else 0  # L1C: one file per band
        if asset in found and found[asset][0] == res:
            raise ImageryError(
                f"{folder.name} holds {asset} more than once at {res} m (several granules): give "
                "one granule's band files with --image, one per band"
            )
        if asset not in found or res < found[asset][0]:
            found[asset] = (res, f)
    if not found:
        raise ImageryError(
            f"{folder.name} holds no band files under GRANULE/*/IMG_DATA (T..._B02_10m.jp2): is "
            "the download complete and unzipped?"
        )
    have = [b.name for b in sensor.bands if b.asset in found]
    names = product_band_names(folder.name, have, bands)
    return [found[sensor.band(n).asset][1] for n in names], names


def quality_band(folder: Path, sensor) -> tuple[Path, str]:
    """The product's cloud mask, for --mask-clouds: an L2A product's scene classification
    (``SCL``, 20 m), an L1C product's ``MSK_CLASSI_B00.jp2`` (60 m; baseline 04.00 and later)."""
    if _PRODUCT.match(folder.name)[1] == "L1C":
        pattern, what, kind = (
            "GRANULE/*/QI_DATA/MSK_CLASSI_B00.jp2",
            "cloud mask files",
            "msk_classi",
        )
        if not list(folder.glob(pattern)) and list(folder.glob("GRANULE/*/QI_DATA/*.gml")):
            raise ImageryError(
                f"{folder.name} keeps its cloud mask as GML (processing baseline before 04.00), "
                "which geotune does not read (--mask-clouds): give its Level-2A product, or "
                "leave out --mask-clouds"
            )
    else:
        pattern, what, kind = (
            "GRANULE/*/IMG_DATA/R20m/*_SCL_20m.jp2",
            "scene classification files",
            "scl",
        )
    files = sorted(folder.glob(pattern))
    if len(files) != 1:
        raise ImageryError(
            f"{folder.name} holds {len(files) or 'no'} {what} ({pattern}) where "
            "--mask-clouds needs one: is the download complete and unzipped?"
        )
    return files[0], kind


# -- a file the user wrote from such a product, offset and all -----------------------------------
DARKEST_WITH_OFFSET = 950  # reflectance x 10000 + 1000: a scene's darkest values sit near 1000


def offset_suspect(scene, sensor: str | None) -> str | None:
    """A warning for a Sentinel-2 file that says nothing of its history (no product, no
    declared scale/offset) whose darkest values look offset by +1000: every band's darkest 1%
    of valid pixels (in the scene's sample, :func:`~datamodules.scene_reader.sample_pixels`)
    at 950 or above, where reflectance x 10000 of a scene with water, shadow or vegetation in
    it reaches far lower in some band. None when it does not look so."""
    from .scene_reader import sample_pixels

    if not (sensor or "").startswith("sentinel-2") or scene.product_offsets:
        return None
    declared = zip(scene.scales or [], scene.offsets or [], strict=True)
    if not np.issubdtype(np.dtype(scene.dtype), np.integer) or any(
        (s, o) != (1.0, 0.0) for s, o in declared
    ):
        return None
    values = sample_pixels(scene)
    if values.shape[1] < 1000:
        return None
    darkest = np.percentile(values, 1, axis=1)
    if darkest.min() < DARKEST_WITH_OFFSET:
        return None
    name = scene.files[0].name
    return (
        f"{name}: the darkest 1% of every band is above {DARKEST_WITH_OFFSET} "
        f"({', '.join(f'{b} {v:.0f}' for b, v in zip(scene.bands, darkest, strict=True))}), as in "
        "Sentinel-2 products of processing baseline 04.00 and later, which store reflectance "
        "x 10000 + 1000; geotune reads the values as reflectance x 10000 (as before 04.00). If "
        "they carry ESA's offset, give the product's .SAFE folder instead (the offset is taken "
        f"off), or declare it in the file (gdal_edit.py -scale 0.0001 -offset -0.1 {name}), so "
        "that it is converted exactly. Very bright scenes (snow, sand, cloud) look so too"
    )
