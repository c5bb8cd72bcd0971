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
    "qa60": {10: "opaque clouds", 11: "cirrus"},  # Earth Engine's Sentinel-2 QA60 bits
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
# (in this order of preference; a stack's band description may say the same: Earth Engine
# exports SCL, QA_PIXEL, QA60 as bands)
_NAMED = {
    "scl": "SCL",
    "qa_pixel": "QA_PIXEL",
    "fmask": "FMASK",
    "msk_classi": "MSK_CLASSI_B00",
    "qa60": "QA60",
}
_RULES = {"msk_classi": tuple(range(8)), "qa60": (10, 11)}  # bits; no preset reads these
# Earth Engine's Sentinel-2 bands of MSK_CLASSI's layers (1 where flagged); snow is kept
_CLASSI_BANDS = ("MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS", "MSK_CLASSI_SNOW_ICE")


@dataclass(frozen=True)
class Quality:
    """A scene's quality band (a file, or a band of its stack) and the rule of its values that
    mean "no clear view"; without a rule (``spec`` None) a band that was there but not read."""

    path: Path
    kind: str  # a key of _MEANING
    spec: object = None  # datamodules.stac.MaskSpec, set by :func:`quality_of`
    share: float | None = None  # of the scene's pixels (inside the swath) masked (None: not read)
    # the band(s) of a stack that are the quality band (1-based; Earth Engine's
    # MSK_CLASSI_OPAQUE and MSK_CLASSI_CIRRUS are two)
    band: int | tuple[int, ...] | None = None

    @property
    def bands(self) -> tuple[int, ...]:
        if isinstance(self.band, tuple):
            return self.band
        return (self.band,) if self.band else _BANDS.get(self.kind, (1,))

    @property
    def name(self) -> str:
        if self.band is None:
            return self.path.name
        what = f"bands {', '.join(map(str, self.bands))}" if len(self.bands) > 1 else "band"
        return f"{self.path.name} {what}" + ("" if len(self.bands) > 1 else f" {self.band}")

    def describe(self) -> str:
        spec, meaning = self.spec, _MEANING[self.kind]
        if len(self.bands) > 1:  # layers: MSK_CLASSI's opaque clouds, then cirrus
            what = "" if self.band else f" (bands {', '.join(map(str, self.bands))})"
            names = list(meaning.values())[: len(self.bands)]
            listed = " or ".join(names)
            return f"{self.name} marks {listed}{what}"
        if spec.bits:
            what = f"bits {', '.join(map(str, spec.bits))}"
            names = [meaning.get(b, f"bit {b}") for b in spec.bits]
        else:
            what = f"classes {', '.join(map(str, spec.classes))}"
            names = [meaning.get(c, f"class {c}") for c in spec.classes]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        return f"{self.name} marks {listed} ({what})"

    def invalid(self, values: np.ndarray) -> np.ndarray:
        """Where ``values`` (``[bands, h, w]``, its :attr:`bands`) mean no clear view."""
        return np.any([self.spec.invalid(v) for v in values], axis=0)

    def read_invalid(self, ds, **kw) -> np.ndarray:
        """:meth:`invalid` of a window of the open file ``ds`` (``kw``: of ``ds.read``)."""
        return self.invalid(ds.read(list(self.bands), **kw))


def quality_of(path: Path, kind: str, band: int | None = None, grid=None) -> Quality:
    """The :class:`Quality` of ``path`` (its ``band``, in a stack; ``kind``: a key of
    :data:`_NAMED`) with the presets' rule for the same band, and the share of the pixels inside
    the swath it masks (from a read reduced to about 1024 px). With ``grid``, a file that does
    not cover it (another scene's) is refused."""
    from .stac import MaskSpec, load_catalog  # import-light: only for --mask-clouds

    if kind in _PRESET:
        catalog, sensor = _PRESET[kind]
        spec = load_catalog(catalog).sensors[sensor].collections[0].mask
    else:  # MSK_CLASSI: a layer per mask, flagged where not 0; QA60: bits
        spec = MaskSpec(kind.upper(), bits=_RULES[kind])
    q = Quality(path, kind, spec, band=band)
    try:
        with rasterio.open(path) as ds:
            if grid is not None:
                _check_covers(ds, path, grid)
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
    return Quality(path, kind, spec, share, band)


def cloud_note(scene) -> str | None:
    """What was done about the clouds of a product's scene: masked (``--mask-clouds``), or its
    quality band left unread; None for a scene without one."""
    q = scene.quality
    if q is None:
        return None
    if q.spec is None:
        return (
            f"{q.name} not read: clouds and their shadows stay in the image; with "
            "--mask-clouds they are nodata"
        )
    where = "in the swath" if q.kind in _EMPTY else "of the scene"
    note = (
        f"clouds masked (--mask-clouds): {q.share:.1%} of the pixels {where} are nodata, "
        f"where {q.describe()}"
    )
    if q.kind == "qa60" and q.share < 0.0005:  # 0.0% as printed
        note += (
            "; QA60 marks next to no pixel: if the scene has clouds, it is from the years "
            "Earth Engine left QA60 empty (February 2022 to February 2024): export "
            "MSK_CLASSI_OPAQUE and MSK_CLASSI_CIRRUS with the bands (or SCL, from "
            "COPERNICUS/S2_SR_HARMONIZED)"
        )
    return note


def mask_with(scene, path: Path, kind: str, band: int | None = None) -> None:
    """Make the clouds quality band ``path`` (its ``band``, in a stack) marks nodata in
    ``scene`` (``--mask-clouds``)."""
    from .image_masks import mask_fill

    scene.quality = quality_of(path, kind, band, scene.grid if band is None else None)
    if scene.nodata is None:  # the masked pixels need a value that means nodata
        scene.nodata = mask_fill(scene.dtype)
        scene.nodata_source = (
            f"{scene.nodata:g} where {path.name} masks clouds (--mask-clouds); the image files "
            "declare none"
        )


def _check_covers(ds, path: Path, grid) -> None:
    """Refuse a quality band file (open as ``ds``) that does not cover the scene (another
    scene's)."""
    from rasterio.warp import transform_bounds

    crs, bounds = ds.crs, ds.bounds
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


def quality_kind(path: Path | str) -> str | None:
    """The kind of quality band (a key of :data:`_NAMED`) a file's name, or a band's
    description, says it is; else None."""
    stem = Path(path).stem.upper() if isinstance(path, Path) else path.strip().upper()
    for kind, word in _NAMED.items():
        if re.search(rf"(^|[_\-.]){word}($|[_\-.])", stem):
            return kind
    if stem in _CLASSI_BANDS:  # Earth Engine's Sentinel-2 bands of the same layers
        return "msk_classi"
    return None


def _quality_file(files: list[Path]) -> tuple[Path, str] | None:
    """The one quality band file among image files given with ``--mask-clouds``: named so, and
    holding as many bands as such a file (a stack named ``s2_qa60.tif`` is a stack)."""
    found = [
        (f, k) for f in files if (k := quality_kind(f)) and _count(f) == max(_BANDS.get(k, (1,)))
    ]
    if len(found) > 1 or (found and len(files) == 1):
        raise ImageryError(
            f"--mask-clouds takes one quality band file with the image files of one scene, got "
            f"{', '.join(f.name for f, _ in found)} with {len(files) - len(found)} image file(s)"
        )
    return found[0] if found else None


def _count(path: Path) -> int | None:
    try:
        with rasterio.open(path) as ds:
            return ds.count
    except rasterio.errors.RasterioIOError:
        return None  # said where the file is opened as an image


def _quality_band(path: Path) -> tuple[int | tuple[int, ...], str] | None:
    """A stack's band that is a quality band, by its description (preferred as :data:`_NAMED`
    orders them): ``(band, kind)``; Earth Engine's ``MSK_CLASSI_OPAQUE`` and
    ``MSK_CLASSI_CIRRUS`` are read together (before ``QA60``, which Earth Engine made from them
    from February 2024 and left empty before that since February 2022)."""
    with rasterio.open(path) as ds:
        desc = [(d or "").strip().upper() for d in ds.descriptions]
    if all(b in desc for b in _CLASSI_BANDS[:2]):
        return tuple(desc.index(b) + 1 for b in _CLASSI_BANDS[:2]), "msk_classi"
    found = {k: i for i, d in enumerate(desc, 1) if (k := quality_kind(d)) and k != "msk_classi"}
    kind = next((k for k in _NAMED if k in found), None)
    return (found[kind], kind) if kind else None


def masked_scenes(files: list[Path], scenes_of) -> list:
    """The scenes of image files with ``--mask-clouds`` (``scenes_of(files)`` makes them), their
    clouds masked by the quality file given beside them (one scene), or by a quality band each
    stack holds (an Earth Engine export's ``SCL``, ``QA_PIXEL``, ``MSK_CLASSI_*``, ``QA60``)."""
    given = _quality_file(files)
    if given is not None:
        scenes = scenes_of([f for f in files if f != given[0]])
        if len(scenes) > 1:
            raise ImageryError(
                "--mask-clouds with image files takes one date: its band files (or one "
                "multi-band file) and its quality file"
            )
        mask_with(scenes[0], *given)
        return scenes
    scenes = scenes_of(files)
    inside = [_quality_band(s.files[0]) if len(set(s.files)) == 1 else None for s in scenes]
    if not all(inside):
        raise ImageryError(
            "With --mask-clouds, geotune reads a quality band: a product's (a Landsat scene's "
            "folder: QA_PIXEL; a Sentinel-2 .SAFE or SNAP product: its cloud mask), a quality "
            "file given with --image beside the scene's image files (..._QA_PIXEL.TIF, SCL.tif, "
            "HLS's ...Fmask.tif), or a band of the stack described as SCL, QA_PIXEL, QA60 or "
            "MSK_CLASSI_OPAQUE and MSK_CLASSI_CIRRUS. "
            f"{Path(files[0]).name} comes without one: add the scene's quality file with "
            "--image, or leave out --mask-clouds"
        )
    for scene, (band, kind) in zip(scenes, inside, strict=True):
        mask_with(scene, scene.files[0], kind, band)
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
    "quality_hint",
    "quality_kind",
    "quality_of",
]
