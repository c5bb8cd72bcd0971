"""User imagery in: name its bands, check it, stack band files on the finest grid, copy it tiled.

Rules for ``--image`` files:
- one multi-band file is one scene; several multi-band files with the same bands are several
  dates of one area (multi-temporal / change detection);
- several single-band files are the bands of one scene (as Sentinel-2 delivers them), stacked
  onto the grid of the finest band, coarser bands resampled bilinearly;
- a Sentinel-2 product folder (``S2B_MSIL2A_....SAFE``) is one scene: its band files, each band
  at its finest resolution; ESA's offset of baseline >= 04.00 is taken off its band files'
  values (:mod:`datamodules.s2_products`).

Band names come from ``--bands`` (in file/band order), else from the files' band descriptions,
else from the sensor's asset ids in the file names (``..._B8A.tif`` → ``nir08``), else from the
sensor when the band count equals the sensor's full band list. Otherwise it is an error that says
how to name them.

Nodata is the value a file declares, else the sensor's fill value (a pixel is nodata when all
its bands equal it); ``Scene.nodata_source`` says which. A band scale/offset a file declares
(GDAL metadata, e.g. from STAC ``raster:bands``) is kept in ``Scene.scales``/``offsets``.
Several dates must be different images (not the same file twice, not byte-identical copies).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .band_names import colour_names, name_from_filename, names_for_sensor, names_from_descriptions
from .dates import check_distinct, day_number, file_date, parse_date
from .errors import ImageryError
from .image_checks import check_file, check_local, check_one_unit
from .image_masks import mask_fill, mask_of
from .product_quality import masked_scenes, quality_hint, quality_kind
from .products import product_of, product_scenes
from .s2_products import esa_band_file, scene_offsets
from .sensors import get_sensor


@dataclass
class Grid:
    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return _bounds(self)


def _bounds(g: Grid) -> tuple[float, float, float, float]:
    left, top = g.transform.c, g.transform.f
    right = left + g.transform.a * g.width
    bottom = top + g.transform.e * g.height
    return (min(left, right), min(top, bottom), max(left, right), max(top, bottom))


@dataclass
class Scene:
    """One date: its source files (one per band, or one multi-band file) on a common grid."""

    files: list[Path]
    bands: list[str]
    grid: Grid
    dtype: str
    nodata: float | None
    date: date | None = None
    band_sources: list[tuple[Path, int]] = field(default_factory=list)  # (file, 1-based band)
    nodata_source: str = "none declared"  # "the file's", or the sensor's fill value
    scales: list[float] | None = None  # per band, as the file declares them (1.0 / 0.0: none)
    offsets: list[float] | None = None
    masked: bool = False  # nodata is the file's alpha band or internal mask, read as ``nodata``
    alpha_band: int | None = None  # the file's alpha band (1-based) when it is the mask
    # per band: the offset of an ESA product's band file, subtracted when read (s2_products)
    product_offsets: list | None = None
    quality: object = None  # its quality band (product_quality.Quality; masks when it has a rule)
    # (n, size) and the valid pixels sampled from it (scene_reader.sample_pixels), read once
    pixel_sample: tuple | None = field(default=None, repr=False, compare=False)

    def offset_note(self) -> str | None:
        """What was done to the values of ESA band files with the offset of baseline >= 04.00."""
        if not self.product_offsets:
            return None
        done = [(b, o) for b, o in zip(self.bands, self.product_offsets, strict=True) if o]
        how = sorted({o.describe() for _, o in done})
        return (
            f"values of {', '.join(b for b, _ in done)}: ESA's offset {'; '.join(how)} taken "
            "off, as reflectance x 10000 like products before processing baseline 04.00"
        )

    def fill_value_note(self) -> str | None:
        """What is nodata when the file declares none and the sensor's fill value stands in."""
        if "fill value" not in self.nodata_source:
            return None
        where = "any band file" if len(set(self.files)) > 1 else "every band"
        return (
            f"{self.files[0].name} declares no nodata; pixels where {where} equals "
            f"{self.nodata:g} ({self.nodata_source}) are nodata"
        )

    @property
    def nodata_json(self) -> float | str | None:
        """The nodata value as JSON can hold it: NaN as ``"nan"`` (as ``gdalinfo -json``)."""
        if self.nodata is not None and not math.isfinite(self.nodata):
            return str(self.nodata).lower()
        return self.nodata


def is_nodata(data: np.ndarray, nodata: float) -> np.ndarray:
    """``data == nodata`` as GDAL compares them: in the data's type (a float32 file's nodata
    -0.2 is the float32 nearest -0.2, which the double -0.2 never equals); NaN is NaN."""
    if np.isnan(nodata):
        return np.isnan(data)
    if np.issubdtype(data.dtype, np.floating):
        return data == data.dtype.type(nodata)
    return data == nodata


def _open(path: Path):
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise ImageryError(f"cannot read image {path}: {e}. Give a GeoTIFF/COG file.") from None


def open_scenes(
    paths: list[str | Path],
    *,
    bands: list[str] | None = None,
    sensor: str | None = None,
    dates: list[str | date | None] | None = None,
    mask_clouds: bool = False,
) -> list[Scene]:
    """Inspect the files (or products as delivered: :mod:`datamodules.products`), name their
    bands, and return one :class:`Scene` per date. ``mask_clouds``: the scene's quality band
    (a product's, a quality file among ``paths``, a stack's own) makes its clouds nodata
    (:mod:`datamodules.product_quality`)."""
    if not paths:
        raise ImageryError(
            "no imagery given: pass --image scene.tif (repeat for band files or dates)"
        )
    sens = get_sensor(sensor) if sensor else None
    check_local(paths)
    files = [Path(p).expanduser() for p in paths]
    products = [product_of(f) for f in files]
    if any(products):  # one product (.SAFE, a Landsat scene, a SNAP .dim) per date
        scenes, files = product_scenes(products, sens, bands, _scenes, mask_clouds)
    elif mask_clouds:  # image files and their quality band file
        scenes = masked_scenes(files, lambda rest: _scenes(rest, bands, sens))
    else:
        scenes = _scenes(files, bands, sens)
    if dates:
        if len(dates) != len(scenes):
            raise ImageryError(f"{len(dates)} date(s) given for {len(scenes)} scene(s)")
        for s, d in zip(scenes, dates, strict=True):
            s.date = d if isinstance(d, date) else parse_date(d)
    if sens is not None:
        unknown = [b for b in scenes[0].bands if b not in sens.band_names]
        if unknown:
            raise ImageryError(
                f"bands {unknown} are not bands of sensor {sens.id} ({', '.join(sens.band_names)}). "
                "Fix --bands or --sensor."
            )
    if len(scenes) > 1:
        check_distinct(files)
        check_one_unit(scenes)
        g0 = scenes[0].grid
        for s in scenes[1:]:
            if s.grid.crs != g0.crs or s.grid.res != g0.res:
                raise ImageryError(
                    "all dates must share CRS and resolution; reproject them to one grid first"
                )
    return scenes


def _scenes(files: list[Path], bands, sens) -> list[Scene]:
    """The scenes of ``files``: one of band files, or one per multi-band file."""
    for f in files:
        if not f.is_file():
            what = "is a folder, not an image file" if f.is_dir() else "does not exist"
            raise ImageryError(f"image file {f} {what}")
    infos = []
    for f in files:
        with _open(f) as ds:
            check_file(ds, f)
            infos.append(
                (
                    f,
                    ds.count,
                    ds.crs,
                    ds.transform,
                    ds.width,
                    ds.height,
                    ds.dtypes[0],
                    ds.nodata,
                    names_from_descriptions(ds),
                    file_date(ds),
                    list(ds.scales),
                    list(ds.offsets),
                    mask_of(ds),
                    colour_names(ds),
                )
            )
    counts = {i[1] for i in infos}
    if len(files) > 1 and counts == {1}:
        scenes = [_band_files_scene(infos, bands, sens)]
    elif len(files) == 1 or 1 not in counts:
        scenes = [_multiband_scene(info, bands, sens) for info in infos]
        names = {tuple(s.bands) for s in scenes}
        if len(names) > 1:
            raise ImageryError(
                f"the dates have different bands: {sorted(names)}; every date needs the same bands"
            )
    else:
        raise ImageryError(
            "mixing single-band and multi-band files: give either one multi-band file per date, "
            "or one single-band file per band of a single scene"
        )
    for s in scenes:
        band_files = [f for f, _ in s.band_sources]
        if len(set(band_files)) == len(band_files):  # ESA's products come as band files
            s.product_offsets = scene_offsets(band_files)
            if s.nodata is None and all(esa_band_file(f) for f in band_files):
                s.nodata = 0  # outside the swath; ESA's files do not declare it
                s.nodata_source = "Sentinel-2 products' NODATA fill value; the files declare none"
    return scenes


def _take(values, keep: list[int]):
    return None if values is None else [values[i] for i in keep]


def _nodata(declared, sens) -> tuple[float | None, str]:
    if declared is not None:
        return declared, "the file's"
    if sens is not None and sens.nodata is not None:
        return sens.nodata, f"{sens.id} fill value; the file declares none"
    return None, "none declared"


def _multiband_scene(info, bands, sens) -> Scene:
    f, count, crs, transform, w, h, dtype, nodata, desc, fdate, scales, offsets, mask, rgb = info
    kind, alpha = mask
    if alpha:  # the mask, not an image band: named and counted without it
        count -= len(alpha)
        scales, offsets = _without(scales, alpha), _without(offsets, alpha)
    what = f"{count} bands" + (" besides its alpha band" if alpha else "")
    if bands:
        if len(bands) != count:
            raise ImageryError(
                f"{f.name} has {what} but --bands names {len(bands)}: {','.join(bands)}"
            )
        names = list(bands)
    elif desc and sens is None:  # a quality band (SCL, QA_PIXEL) is no image band
        names = [None if quality_kind(d) else d for d in desc]
    elif desc and (named := names_for_sensor(desc, sens, f.name)):
        names = named
    elif sens is not None:
        if count != len(sens.bands):
            raise ImageryError(
                f"{f.name} has {what} but sensor {sens.id} has {len(sens.bands)} "
                f"({', '.join(sens.band_names)}). Name the file's bands in order with --bands, "
                f"e.g. --bands {','.join(sens.band_names[:count])}"
            )
        names = sens.band_names
    elif rgb:  # GDAL's default for 3 bytes: an orthophoto, or a colour-infrared one
        raise ImageryError(
            f"cannot tell the bands of {f.name} ({what}, no band descriptions; its colour "
            "interpretation says red, green, blue, which GDAL gives every 3-band 8-bit file). "
            "An RGB photo: pass --sensor rgb (8-bit) or --bands red,green,blue; a "
            "colour-infrared one: --bands nir,red,green"
        )
    else:
        raise ImageryError(
            f"cannot tell the bands of {f.name} ({what}, no band descriptions). "
            "Pass --sensor ID (e.g. sentinel-2-l2a) or --bands blue,green,red,..."
        )
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise ImageryError(
            f"{f.name}: its band descriptions name {', '.join(twice)} more than once; fix the "
            "descriptions, or name the file's bands in order with --bands"
        )
    keep = [i for i, n in enumerate(names) if n is not None]  # quality bands left out
    names, scales, offsets = [names[i] for i in keep], _take(scales, keep), _take(offsets, keep)
    if kind is not None and nodata is not None:  # masked pixels written as its nodata value
        source = f"the file's, and its {kind}"
    elif kind is not None:
        nodata, source = mask_fill(dtype), f"the file's {kind}"
    else:
        nodata, source = _nodata(nodata, sens)
    grid = Grid(crs, transform, w, h)
    bands_of_file = [i for i in range(count + len(alpha)) if i not in alpha]
    sources = [(f, bands_of_file[i] + 1) for i in keep]
    alpha_band = alpha[0] + 1 if kind == "alpha band" else None
    return Scene(
        [f], names, grid, dtype, nodata, fdate, sources, source, scales, offsets,
        kind is not None, alpha_band,
    )  # fmt: skip


def _without(values, drop: list[int]):
    return None if values is None else [v for i, v in enumerate(values) if i not in drop]


def _band_files_scene(infos, bands, sens) -> Scene:
    files = [i[0] for i in infos]
    for i in infos:
        if i[12][0] is not None:
            raise ImageryError(
                f"{i[0].name} marks its nodata with an {i[12][0]}, which geotune reads in a "
                "multi-band file, not in band files. Stack the bands into one file (e.g. "
                "gdalbuildvrt -separate stack.vrt B*.tif && gdal_translate stack.vrt stack.tif), "
                "or write the masked pixels as a nodata value (gdalwarp -dstnodata 0 in.tif out.tif)"
            )
    if bands:
        if len(bands) != len(files):
            raise ImageryError(f"{len(files)} band files but --bands names {len(bands)}")
        names = list(bands)
    else:
        names = []
        for f, *_rest in infos:
            desc = _rest[7]
            named = names_for_sensor(desc, sens, f.name) if desc and sens else None
            if named:
                name = named[0]
            else:  # a description that names no band of the sensor ("Band 1": ENVI, SNAP)
                name = name_from_filename(f, sens) if sens else (desc or [None])[0]
            if name is None and (hint := quality_hint(f)):
                raise ImageryError(hint)
            if name is None and sens is not None:
                raise ImageryError(
                    f"{f.name} names no band of sensor {sens.id} ({', '.join(sens.band_names)}) "
                    "that geotune can tell (a thermal or quality band, or no band id in its "
                    "name): leave the file out, or name the bands in file order with --bands"
                )
            if name is None:
                raise ImageryError(
                    f"cannot tell which band {f.name} holds. Pass --sensor ID so band ids in file "
                    "names are recognised (e.g. _B8A → nir08), or --bands in file order."
                )
            names.append(name)
    if len(set(names)) != len(names):
        raise ImageryError(f"band names repeat: {names}")
    crss = {i[2].to_string() for i in infos}
    if len(crss) > 1:
        raise ImageryError(
            f"band files are in different CRSs ({', '.join(crss)}); reproject them to one CRS"
        )
    finest = min(infos, key=lambda i: abs(i[3].a))
    grid = Grid(finest[2], finest[3], finest[4], finest[5])
    dtypes = {i[6] for i in infos}
    nodata, source = _nodata(finest[7], sens)
    fdate = next((i[9] for i in infos if i[9]), None)
    dtype = np.result_type(*dtypes).name
    sources = [(f, 1) for f in files]
    scales, offsets = [i[10][0] for i in infos], [i[11][0] for i in infos]
    return Scene(files, names, grid, dtype, nodata, fdate, sources, source, scales, offsets)


def date_order(scenes: list[Scene]) -> list[int] | None:
    """The scenes' indices oldest first, or None when a date is unknown."""
    if any(s.date is None for s in scenes):
        return None
    return sorted(range(len(scenes)), key=lambda i: day_number(scenes[i].date))


def iter_windows(width: int, height: int, size: int = 1024):
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def warp_to_grid(src, grid: Grid, resampling: Resampling, **kw) -> WarpedVRT:
    """A virtual view of ``src`` on ``grid`` (read window by window, never whole)."""
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=resampling,
        **kw,
    )


# GDAL's block cache, in bytes: by default 5% of RAM, which a large scene's decoded blocks fill
BLOCK_CACHE_BYTES = 64 * 2**20


@cache
def bound_block_cache() -> None:
    """Bound GDAL's block cache to :data:`BLOCK_CACHE_BYTES`, so memory stays flat however
    large the scene; unless the user set ``GDAL_CACHEMAX`` in the environment (kept as set).

    The cache is one per process, shared by every thread: this sets it for the process, on the
    first call (later calls, one per prediction or map tile, do nothing), never toggled back,
    not around one call. Not ``rasterio.Env(
    GDAL_CACHEMAX=64)``: rasterio passes that number to ``GDALSetCacheMax64``, in bytes, and a
    cache of 64 bytes evicts every block at once, the written blocks of another thread's open
    outputs too (a lost tile; GDAL OSGeo/gdal#2011)."""
    if "GDAL_CACHEMAX" not in os.environ:
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", BLOCK_CACHE_BYTES)


def gtiff_profile(grid: Grid, count: int, dtype: str, nodata, *, layout: str = "labels") -> dict:
    """Creation options of the dataset folder's GeoTIFFs, tiled 256 x 256.

    ``layout="image"``: uncompressed, band-interleaved: training reads random windows, and a
    window of a compressed pixel-interleaved file costs a decompression of four whole tiles of
    every band (measured in experiments/dataloading: about 3-9x slower per chip once the scene
    outgrows GDAL's block cache; Sentinel-2 values only compress about 1.6x anyway).
    ``layout="labels"``: ZSTD without predictor, for class and unit rasters (long runs of one
    value: tiny files, fast to decode).
    """
    profile = {
        "driver": "GTiff",
        "crs": grid.crs,
        "transform": grid.transform,
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "bigtiff": "IF_SAFER",
    }
    if layout == "image":
        return profile | {"interleave": "band"}
    if layout == "labels":
        return profile | {"compress": "ZSTD", "zstd_level": 1, "interleave": "band"}
    raise ValueError(f"unknown layout {layout!r}")
