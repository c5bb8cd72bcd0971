"""Nodata marked by a mask instead of a value: which files do (an alpha band, GDAL's internal
per-dataset mask) and the value their masked pixels are read as. :class:`SceneReader
<datamodules.scene_reader.SceneReader>` writes that value into the masked pixels of every band.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window


def mask_of(ds) -> tuple[str | None, list[int]]:
    """How a file marks nodata pixels by a mask, if it does: ``"alpha band"`` (an orthomosaic's
    RGBA, as OpenDroneMap writes it; read whether or not a nodata value is declared too) or,
    without a nodata value, ``"internal mask"`` (GDAL's per-dataset mask: ``.msk``, or inside a
    JPEG-compressed GeoTIFF); and the 0-based indexes of its alpha bands (not image bands)."""
    marked = [i for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
    alpha = [i for i in marked if _holds_a_mask(ds, i + 1)]
    for i in sorted(set(marked) - set(alpha)):
        warnings.warn(
            f"band {i + 1} of {Path(ds.name).name} is marked alpha but holds image values, not "
            "a mask: read as an image band",
            stacklevel=4,
        )
    if alpha:
        return "alpha band", alpha
    flags = ds.mask_flag_enums[0]
    if ds.nodata is None and MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
        return "internal mask", alpha
    return None, alpha


def _holds_a_mask(ds, band: int, size: int = 256) -> bool:
    """Whether a band marked alpha holds a mask: in five windows (the centre and the centres
    of the quarters), 95% of pixels or more are 0 or the band's top value. GDAL marks the 4th
    band of a 4-band 8-bit GeoTIFF alpha unless told otherwise, so an 8-bit R, G, B, NIR file
    can carry a near-infrared band marked alpha: it holds image values, and stays an image
    band."""
    h, w = ds.height, ds.width
    centres = [(h // 2, w // 2)] + [(h * i // 4, w * j // 4) for i in (1, 3) for j in (1, 3)]
    values = []
    for r, c in centres:
        win = Window(max(0, c - size // 2), max(0, r - size // 2), min(size, w), min(size, h))
        values.append(ds.read(band, window=win).ravel())
    v = np.concatenate(values)
    return bool(np.isin(v, [0, v.max()]).mean() >= 0.95)


def mask_fill(dtype: str) -> float:
    """The nodata value a masked file's masked pixels are read as: NaN for floats, else 0."""
    return float("nan") if np.issubdtype(np.dtype(dtype), np.floating) else 0.0
