"""Imagery as its providers deliver it, one product per date: a Sentinel-2 ``.SAFE`` folder
(:mod:`datamodules.s2_products`), a Landsat scene's folder (:mod:`datamodules.landsat_products`)
or a SNAP product (:mod:`datamodules.dimap`). Each reader finds the product's band files and
names their bands; a reader may also return what the product's document declares of them
(scale, offset, no-data), applied to the scene of its band files."""

from __future__ import annotations

from pathlib import Path

from . import dimap, landsat_products, s2_products
from .errors import ImageryError
from .product_quality import Quality, mask_with

READERS = (s2_products, landsat_products, dimap)


def product_of(path: Path):
    """(its reader, the product) when ``path`` names a product as delivered; else None."""
    for reader in READERS:
        if (where := reader.product_folder(path)) is not None:
            return reader, where
    return None


def product_scenes(
    products: list, sens, bands, scenes_of, mask_clouds: bool = False
) -> tuple[list, list[Path]]:
    """One scene per product (``scenes_of(band_files, names, sens)`` makes a scene of band
    files), and each product's first band file (to tell dates apart). Each scene knows its
    product's quality band (:mod:`.product_quality`), read as a cloud mask with
    ``mask_clouds``."""
    if not all(products):
        raise ImageryError(
            "mixing product folders (a Sentinel-2 .SAFE, a Landsat scene's, a SNAP .dim) and "
            "image files: give one product per date, or image files"
        )
    scenes, firsts = [], []
    for reader, where in products:
        files, names, *declared = reader.product_bands(where, sens, bands)
        scene = scenes_of(files, names, sens)[0]
        if declared:
            reader.apply(scene, declared[0])
        _quality(scene, reader, where, sens, mask_clouds)
        scenes.append(scene)
        firsts.append(files[0])
    return scenes, firsts


def _quality(scene, reader, where: Path, sens, mask_clouds: bool) -> None:
    """The product's quality band onto its scene: its cloud mask (``mask_clouds``; a product
    without one is refused), or only that it is there, for the note that it was not read."""
    try:
        path, kind = reader.quality_band(where, sens)
    except ImageryError:
        if mask_clouds:
            raise
        return
    if not mask_clouds:
        scene.quality = Quality(path, kind)
        return
    mask_with(scene, path, kind)
