"""Clouds masked with the scene's own quality band (``--mask-clouds``), read with the rule
the STAC presets apply to the same band.

A Landsat scene's ``QA_PIXEL`` (bits: fill, dilated cloud, cirrus, cloud, cloud shadow), a
Sentinel-2 L2A product's scene classification (``SCL``: no data, saturated, cloud shadow,
clouds of medium and high probability, thin cirrus; in a SNAP product the band
``quality_scene_classification``), HLS's ``Fmask`` (cirrus, cloud, adjacent, shadow) and a
Level-1C product's ``MSK_CLASSI_B00.jp2`` (opaque clouds, cirrus) say where the ground is not
seen. A product as delivered (:mod:`datamodules.products`) brings its own; with image files,
the quality file is one more ``--image``, known by its provider's name for it. With
``--mask-clouds`` those pixels are read as nodata in every band
(:class:`~datamodules.scene_reader.SceneReader`): no label on them is trained on, and
prediction gives them no class. Without it the quality band is not read, and a note says so:
masking changes the pixels the user chose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from .errors import ImageryError

# what the presets' values mean, for the notes (conf/stac/*.yaml hold the values themselves)
_MEANING = {
    "qa_pixel": {0: "fill", 1: "dilated cloud", 2: "cirrus", 3: "cloud", 4: "cloud shadow"},
    "scl": {
        0: "no data",
        1: "saturated or defective",
        3: "cloud shadow",
        8: "cloud (medium probability)",
        9: "cloud (high probability)",
        10: "thin cirrus",
    },
    "fmask": {0: "cirrus", 1: "cloud", 2: "adjacent to cloud/shadow", 3: "cloud shadow"},
    "msk_classi": {1: "opaque clouds", 2: "cirrus"},  # its bands (3: snow and ice, kept)
}
# the bands of the file read (1-based): a Level-1C product's MSK_CLASSI_B00.jp2 holds one
# layer per mask, flagged pixels non-zero (processing baseline 04.00 and later)
_BANDS = {"msk_classi": (1, 2)}
# the preset (catalog, sensor) whose mask rule reads the same band
_PRESET = {
    "qa_pixel": ("earth_search", "landsat-c2-l2"),
    "scl": ("earth_search", "sentinel-2-l2a"),
    "fmask": ("earthdata_lpcloud", "hls"),
}
_EMPTY = {  # outside the swath (MSK_CLASSI does not say)
    "qa_pixel": lambda v: (v & 1) != 0,
    "scl": lambda v: v == 0,
    "fmask": lambda v: v == 255,
}
# a quality band file among band files, by its name: LC09_..._QA_PIXEL.TIF, SCL.tif (Earth
# Search's asset), T33UUP_..._SCL_20m.jp2 (ESA), HLS.S30.T33UUP.2023163T101021.v2.0.Fmask.tif
_NAMED = {"qa_pixel": "QA_PIXEL", "scl": "SCL", "fmask": "FMASK", "msk_classi": "MSK_CLASSI_B00"}


@dataclass(frozen=True)
class Quality:
    """A product's quality band and the rule of its values that mean "no clear view"."""

    path: Path
    kind: str  # a key of _MEANING
    spec: object = None  # datamodules.stac.MaskSpec, set by :func:`quality_of`
    share: float | None = None  # of the scene's pixels (inside the swath) masked (None: not read)

    @property
    def bands(self) -> tuple[int, ...]:
        return _BANDS.get(self.kind, (1,))

    def describe(self) -> str:
        spec, meaning = self.spec, _MEANING[self.kind]
        if len(self.bands) > 1:
            what = f"bands {', '.join(map(str, self.bands))}"
            names = [meaning[b] for b in self.bands]
        elif spec.bits:
            what = f"bits {', '.join(map(str, spec.bits))}"
            names = [meaning.get(b, f"bit {b}") for b in spec.bits]
        else:
            what = f"classes {', '.join(map(str, spec.classes))}"
            names = [meaning.get(c, f"class {c}") for c in spec.classes]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        return f"{self.path.name} marks {listed} ({what})"

    def invalid(self, values: np.ndarray) -> np.ndarray:
        """Where ``values`` (``[bands, h, w]``, its :attr:`bands`) mean no clear view."""
        return np.any([self.spec.invalid(v) for v in values], axis=0)

    def read_invalid(self, ds, **kw) -> np.ndarray:
        """:meth:`invalid` of a window of the open file ``ds`` (``kw``: of ``ds.read``)."""
        return self.invalid(ds.read(list(self.bands), **kw))


def quality_of(path: Path, kind: str) -> Quality:
    """The :class:`Quality` of band file ``path`` (``kind``: ``"qa_pixel"`` or ``"scl"``) with
    the presets' rule, and the share of the pixels inside the swath it masks (from a read
    reduced to about 1024 px)."""
    from .stac import MaskSpec, load_catalog  # import-light: only for --mask-clouds

    if kind in _PRESET:
        catalog, sensor = _PRESET[kind]
        spec = load_catalog(catalog).sensors[sensor].collections[0].mask
    else:  # a layer per mask: flagged where not 0
        spec = MaskSpec(kind.upper(), bits=tuple(range(8)))
    q = Quality(path, kind, spec)
    try:
        with rasterio.open(path) as ds:
            if ds.count < max(q.bands):
                raise ImageryError(
                    f"the quality band {path.name} has {ds.count} band(s); a "
                    f"{_NAMED.get(kind, kind)} file has {max(q.bands)} or more"
                )
            scale = max(1, max(ds.width, ds.height) // 1024)
            shape = (max(1, ds.height // scale), max(1, ds.width // scale))
            values = ds.read(list(q.bands), out_shape=(len(q.bands), *shape),
                             resampling=Resampling.nearest)  # fmt: skip
    except rasterio.errors.RasterioIOError as e:
        raise ImageryError(f"cannot read the quality band {path.name}: {e}") from None
    empty = _EMPTY.get(kind)
    inside = ~empty(values[0].astype(np.int64)) if empty else np.ones(shape, bool)
    share = float((q.invalid(values) & inside).sum() / max(int(inside.sum()), 1))
    return Quality(path, kind, spec, share)


def cloud_note(scene) -> str | None:
    """What was done about the clouds of a product's scene: masked (``--mask-clouds``), or its
    quality band left unread; None for a scene without one."""
    q = scene.quality
    if q is None:
        return None
    if q.spec is None:
        return (
            f"{q.path.name} not read: clouds and their shadows stay in the image; with "
            "--mask-clouds they are nodata"
        )
    where = "in the swath" if q.kind in _EMPTY else "of the tile"
    return (
        f"clouds masked (--mask-clouds): {q.share:.1%} of the pixels {where} are nodata, "
        f"where {q.describe()}"
    )


def mask_with(scene, path: Path, kind: str) -> None:
    """Make the clouds quality band ``path`` marks nodata in ``scene`` (``--mask-clouds``)."""
    from .image_masks import mask_fill

    _check_covers(path, scene.grid)
    scene.quality = quality_of(path, kind)
    if scene.nodata is None:  # the masked pixels need a value that means nodata
        scene.nodata = mask_fill(scene.dtype)
        scene.nodata_source = (
            f"{scene.nodata:g} where {path.name} masks clouds (--mask-clouds); the image files "
            "declare none"
        )


def _check_covers(path: Path, grid) -> None:
    """Refuse a quality band file that does not cover the scene (another scene's)."""
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(path) as ds:
            crs, bounds = ds.crs, ds.bounds
    except rasterio.errors.RasterioIOError as e:
        raise ImageryError(f"cannot read the quality band {path.name}: {e}") from None
    if crs is None:
        raise ImageryError(f"the quality band {path.name} has no CRS: give the scene's own file")
    left, bottom, right, top = transform_bounds(crs, grid.crs, *bounds)
    g = grid.bounds
    inside = max(0.0, min(right, g[2]) - max(left, g[0])) * max(
        0.0, min(top, g[3]) - max(bottom, g[1])
    )
    if inside < 0.99 * (g[2] - g[0]) * (g[3] - g[1]):
        raise ImageryError(
            f"the quality band {path.name} covers {inside / ((g[2] - g[0]) * (g[3] - g[1])):.0%} "
            "of the scene: give the quality file of the same scene as the image files"
        )


def quality_kind(path: Path) -> str | None:
    """``"qa_pixel"``, ``"scl"`` or ``"fmask"`` when the file's name says it is such a quality
    band; else None."""
    stem = Path(path).stem.upper()
    for kind, word in _NAMED.items():
        if re.search(rf"(^|[_\-.]){word}($|[_\-.])", stem):
            return kind
    return None


def quality_among(files: list[Path]) -> tuple[tuple[Path, str], list[Path]]:
    """The one quality band file among image files given with ``--mask-clouds``, and the rest."""
    found = [(f, k) for f in files if (k := quality_kind(f))]
    if len(found) == 1 and len(files) > 1:
        return found[0], [f for f in files if f != found[0][0]]
    if found and len(files) > 1:
        raise ImageryError(
            f"--mask-clouds takes one quality band file with the image files, got "
            f"{', '.join(f.name for f, _ in found)}: give one scene at a time"
        )
    raise ImageryError(
        "With --mask-clouds, geotune reads a quality band: a product's (a Landsat scene's folder: QA_PIXEL; a "
        "Sentinel-2 L2A .SAFE or SNAP product: its scene classification), or a quality file "
        "given with --image beside the scene's image files (..._QA_PIXEL.TIF, SCL.tif, HLS's "
        f"...Fmask.tif). {Path(files[0]).name} comes without one: add the scene's quality file "
        "with --image, or leave out --mask-clouds"
    )


def masked_scenes(files: list[Path], scenes_of) -> list:
    """The scene of image files given with their quality band file and ``--mask-clouds``
    (``scenes_of(files)`` makes the scenes of the others), its clouds masked."""
    (quality, kind), rest = quality_among(files)
    scenes = scenes_of(rest)
    if len(scenes) > 1:
        raise ImageryError(
            "--mask-clouds with image files takes one date: its band files (or one multi-band "
            "file) and its quality file"
        )
    mask_with(scenes[0], quality, kind)
    return scenes


def quality_hint(path: Path) -> str | None:
    """What to do with a quality band file given as an image band, when it is one."""
    kind = quality_kind(path)
    if kind is None:
        return None
    return (
        f"{path.name} is a quality band ({_NAMED[kind].replace('FMASK', 'Fmask')}), not an "
        "image band: add --mask-clouds to make the clouds it marks nodata, or leave it out"
    )


__all__ = [
    "Quality",
    "cloud_note",
    "mask_with",
    "masked_scenes",
    "quality_among",
    "quality_hint",
    "quality_kind",
    "quality_of",
]
