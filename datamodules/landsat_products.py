"""Landsat Collection 2 scenes as USGS delivers them: the folder a scene's ``.tar`` unpacks to.

EarthExplorer and the M2M API deliver a scene as ``LC09_L2SP_191026_20230612_20230620_02_T1.tar``
holding one GeoTIFF per band (``..._SR_B4.TIF``, ``..._ST_B10.TIF``), the quality bands
(``QA_PIXEL``, ``QA_RADSAT``, ...) and the metadata (``..._MTL.txt``/``.json``/``.xml``). Given the
unpacked folder (or its MTL file) with ``--image``, geotune reads its band files: every band of
the sensor it holds, or those of ``--bands``, named by the numbers of the mission that wrote them
(:func:`datamodules.band_names.band_ids`: Landsat 4-7's ``SR_B3`` is red). Their values are the
products' stored values, the units of the sensor table (Level-2: reflectance = value x 0.0000275
- 0.2), so nothing is converted. ``QA_PIXEL`` is read with ``--mask-clouds`` only
(:mod:`datamodules.product_quality`): without it, clouds stay in the image.
"""

from __future__ import annotations

import re
from pathlib import Path

from .band_names import band_ids, product_band_names
from .errors import ImageryError

# LC09_L2SP_191026_20230612_20230620_02_T1: mission, level, path/row, acquired, processed
_PRODUCT = re.compile(r"^(L[COTEM]0\d)_(L1TP|L1GT|L1GS|L2SP|L2SR)_\d{6}_\d{8}_\d{8}_02_(T1|T2|RT)$")
_METADATA = re.compile(r"^(.+)_MTL\.(txt|json|xml)$", re.I)


def product_folder(path: Path) -> Path | None:
    """The scene a ``--image`` path names: its unpacked folder (named as the scene, or holding
    one scene's MTL file: USGS's ``.tar`` has no folder of its own), or the MTL file in it."""
    if path.is_dir():
        if _PRODUCT.match(path.name):
            return path
        scenes = _scenes_in(path)
        if len(scenes) > 1:
            raise ImageryError(
                f"{path.name} holds {len(scenes)} Landsat scenes ({', '.join(scenes[:3])}); give "
                f"one scene's MTL file with --image (e.g. {path.name}/{scenes[0]}_MTL.txt)"
            )
        return path if scenes else None
    packed = re.sub(r"\.(tar|tar\.gz|tgz)$", "", path.name, flags=re.I)
    if packed != path.name and _PRODUCT.match(packed):
        raise ImageryError(
            f"{path.name} is a packed Landsat scene: unpack it (mkdir {packed} && tar xf "
            f"{path.name} -C {packed}) and give the folder with --image"
        )
    m = _METADATA.match(path.name)
    if m and _PRODUCT.match(m[1]) and path.is_file():
        return path  # the MTL file names the scene, in a folder that may hold several
    return None


def _scenes_in(folder: Path) -> list[str]:
    return sorted(
        {m[1] for f in folder.iterdir() if (m := _METADATA.match(f.name)) and _PRODUCT.match(m[1])}
    )


def product_bands(where: Path, sensor, bands: list[str] | None) -> tuple[list[Path], list[str]]:
    """The band files of the scene ``where`` names (:func:`product_folder`) for ``bands``
    (default: every band of ``sensor`` it holds, in the sensor table's order) and their names."""
    folder, scene = _locate(where)
    level = "landsat-c2-l2" if _PRODUCT.match(scene)[2].startswith("L2") else "landsat-c2-l1"
    if sensor is None or sensor.id != level:
        said = f", not {sensor.id}" if sensor is not None else ""
        raise ImageryError(f"{scene} is a {level} scene{said}: pass --sensor {level}")
    ids = band_ids(sensor, f"{scene}_")  # the mission's numbers; refuses what cannot be read
    files = {f.name.upper(): f for f in folder.iterdir() if f.suffix.upper() in (".TIF", ".TIFF")}
    found = {}
    for band_id, name in ids.items():
        for ext in (".TIF", ".TIFF"):
            if f"{scene}_{band_id}{ext}".upper() in files:
                found[name] = files[f"{scene}_{band_id}{ext}".upper()]
    if not found:
        raise ImageryError(
            f"{folder.name} holds no band files of {scene} ({scene}_SR_B4.TIF or {scene}_B4.TIF): "
            "is the download complete and unpacked?"
        )
    names = product_band_names(folder.name, [b for b in sensor.band_names if b in found], bands)
    return [found[n] for n in names], names


def _locate(where: Path) -> tuple[Path, str]:
    """The folder and the scene id of what :func:`product_folder` returned."""
    if where.is_file():  # its MTL file
        return where.parent, _METADATA.match(where.name)[1]
    return where, where.name if _PRODUCT.match(where.name) else _scenes_in(where)[0]


def quality_band(where: Path, sensor) -> tuple[Path, str]:
    """The scene's ``QA_PIXEL`` file (Level-1 and Level-2 share its bits), for --mask-clouds."""
    folder, scene = _locate(where)
    for f in folder.iterdir():
        if f.name.upper() in (f"{scene}_QA_PIXEL.TIF".upper(), f"{scene}_QA_PIXEL.TIFF".upper()):
            return f, "qa_pixel"
    raise ImageryError(
        f"{folder.name} holds no {scene}_QA_PIXEL.TIF to mask clouds with (--mask-clouds): "
        "unpack the whole scene's .tar, or leave out --mask-clouds"
    )


__all__ = ["product_bands", "product_folder", "quality_band"]
