"""Cloud-masked composites for an AOI and a date range, from STAC imagery.

``composite_for_aoi`` searches the catalog (:mod:`datamodules.stac`), groups the items into
observations (one per date, collection and platform; neighbouring tiles of one overpass are
mosaicked), and builds the output block by block (bounded memory): for every block it reads the
quality masks of the observations that reach it, then the bands of those with clear pixels
(windowed reads, in parallel: :mod:`datamodules.cog_read`), harmonises known radiometric offsets,
masks clouds, shadows and nodata, and takes the per-band median over the observations (or keeps
``frames`` best dates, one per equal period of the range, for multi-temporal models). It writes

- ``composite.tif`` (or ``frame_1_<date>.tif`` ... ``frame_T_<date>.tif``): the bands, named in
  the band descriptions, nodata where no clear observation exists (and outside the AOI);
- ``count.tif``: per pixel, the number of clear observations used;
- ``provenance.json``: catalog, search, grid, and the items used (ids, dates, cloud cover).

Files appear only when complete: they are written under a temporary name first.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import rasterio

from .aoi import check_area, grid_for, parse_aoi
from .cog_read import ReadOptions
from .imagery import Grid, iter_windows, parse_date
from .observe import BlockReader
from .sensors import get_sensor
from .stac import (
    DEFAULT_MAX_AOI_KM2,
    DEFAULT_MAX_CLOUD,
    DEFAULT_MAX_ITEMS,
    Found,
    NoImageryError,
    Observation,
    StacError,
    load_catalog,
    observations,
    periods,
    search_items,
)


# -- result ---------------------------------------------------------------------------------------
@dataclass
class CompositeResult:
    images: list[Path]  # one composite, or one file per frame in time order
    count: Path  # clear observations per pixel
    provenance_path: Path
    provenance: dict
    sensor: str
    bands: list[str]
    dates: list[str]  # the date recorded in each image (a composite: the median date used)
    grid: Grid


def composite_for_aoi(
    aoi,
    start: str | date,
    end: str | date,
    sensor: str,
    out_dir: str | Path,
    *,
    bands: list[str] | None = None,
    frames: int = 1,
    max_cloud: float | None = DEFAULT_MAX_CLOUD,
    max_items: int = DEFAULT_MAX_ITEMS,
    resolution: float | None = None,
    crs=None,
    max_aoi_km2: float | None = DEFAULT_MAX_AOI_KM2,
    catalog: str | None = None,
    catalog_url: str | None = None,
    clip: bool = True,
    margin_px: int = 0,
    block_size: int = 512,
    read: ReadOptions | None = None,
    progress: bool = True,
) -> CompositeResult:
    """Search ``catalog`` for ``sensor`` imagery over ``aoi`` (GeoJSON / shapely / vector file,
    CRS84) between ``start`` and ``end`` and write a cloud-masked composite into ``out_dir``.

    ``frames=T > 1`` keeps the clearest date of each of T equal periods instead of a median.
    ``clip`` sets pixels outside the AOI polygon to nodata (else the whole bounding box is kept,
    widened by ``margin_px``). An AOI over ``max_aoi_km2`` raises ``AoiTooLargeError``.
    """
    geom = parse_aoi(aoi)
    km2 = check_area(geom, max_aoi_km2)
    start_d, end_d = _date(start, "start"), _date(end, "end")
    if start_d > end_d:
        raise StacError(f"the start date {start_d} is after the end date {end_d}")
    if frames < 1 or max_items < 1:
        raise StacError("frames and max_items must be at least 1")
    cat = load_catalog(catalog, catalog_url)
    source = cat.source(sensor)
    bands = _bands(source, bands)
    sens = get_sensor(sensor)
    res = resolution or min(sens.band(b).gsd for b in bands)
    grid = grid_for(geom, res, crs, margin_px=0 if clip else margin_px)
    found, n_found = search_items(
        cat, source, geom, start_d, end_d, max_cloud=max_cloud, max_items=max_items,
        timeout=(read or ReadOptions()).timeout,
    )  # fmt: skip
    if not found:
        cloud = f" with cloud cover at most {max_cloud:g}%" if max_cloud is not None else ""
        raise NoImageryError(
            f"no {sensor} items in {cat.name} ({cat.url}) over the AOI between {start_d} and "
            f"{end_d}{cloud}. Widen the dates or raise --max-cloud."
        )
    reader = BlockReader(cat, source, bands, grid, geom if clip else None, read or ReadOptions())
    builder = _Writer(reader)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=out, prefix=".composite-") as tmp,
        warnings.catch_warnings(),
    ):
        # rasterio's reproject builds in-memory datasets that warn before their transform is
        # set; its own suppression of that warning is not thread-safe
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        obs = observations(found)
        if frames == 1:
            names, used, dates = ["composite.tif"], obs, [_median_date(obs)]
            builder.write_median(obs, Path(tmp), block_size, progress)
        else:
            used = builder.best_dates(obs, periods(start_d, end_d, frames), block_size, progress)
            dates = [o.date.isoformat() for o in used]
            names = [f"frame_{i + 1}_{d}.tif" for i, d in enumerate(dates)]
            builder.write_frames(used, names, Path(tmp), block_size, progress)
        if builder.n_clear == 0:
            raise NoImageryError(
                f"the {len(found)} {sensor} scene(s) found have no clear view of the area (clouds, "
                "shadows or no data everywhere). Widen the dates or raise --max-cloud."
            )
        _tag_dates(Path(tmp), names, dates, start_d, end_d)
        provenance = {
            "catalog": cat.name, "url": cat.url, "sensor": sensor, "bands": bands,
            "collections": [c.collection for c in source.collections],
            "start": start_d.isoformat(), "end": end_d.isoformat(), "max_cloud": max_cloud,
            "method": "median" if frames == 1 else "best-dates", "frames": frames,
            "aoi_km2": round(km2, 4), "crs": grid.crs.to_string(), "resolution": [res, res],
            "shape": [grid.height, grid.width], "bounds": list(grid.bounds),
            "n_items_found": n_found, "dates": dates,
            "items": [_item_record(f, reader.notes.get(f.item.id)) for o in used for f in o.found],
            "clear_fraction": builder.clear_fraction(),
            "outputs": {"images": names, "count": "count.tif"},
        }  # fmt: skip
        (Path(tmp) / "provenance.json").write_text(json.dumps(provenance, indent=2))
        for name in [*names, "count.tif", "provenance.json"]:
            shutil.move(Path(tmp) / name, out / name)
    return CompositeResult(
        [out / n for n in names], out / "count.tif", out / "provenance.json", provenance,
        sensor, bands, dates, grid,
    )  # fmt: skip


def composite_for_model(
    aoi, start, end, record: dict, out_dir, *, sensor: str | None = None, **kwargs
) -> CompositeResult:
    """The imagery a registered model needs over ``aoi``: its sensor (unless ``sensor`` is
    given), its bands, its training resolution and its number of dates (``record`` is
    ``model.record``). ``kwargs`` go to :func:`composite_for_aoi`."""
    sensor = sensor or record.get("sensor")
    if not sensor:
        raise StacError("the model records no sensor; name the imagery's sensor (--sensor ID)")
    return composite_for_aoi(
        aoi, start, end, sensor, out_dir, bands=list(record["bands"]),
        frames=int(record.get("num_frames", 1)), resolution=float(record["resolution"][0]),
        **kwargs,
    )  # fmt: skip


def _date(value, what: str) -> date:
    d = value if isinstance(value, date) else parse_date(str(value))
    if d is None:
        raise StacError(f"the {what} date is missing; give it as YYYY-MM-DD")
    return d


def _bands(source, bands):
    have = source.bands()
    if not bands:
        return have
    missing = [b for b in bands if b not in have]
    if missing:
        raise StacError(
            f"bands {missing} are not available for {source.sensor} in this catalog; "
            f"it has: {', '.join(have)}"
        )
    return list(bands)


def _median_date(obs: list[Observation]) -> str:
    ds = sorted(o.date for o in obs)
    return ds[len(ds) // 2].isoformat()


def _item_record(f: Found, notes) -> dict:
    return {
        "id": f.item.id,
        "collection": f.spec.collection,
        "datetime": f.when.isoformat(),
        "cloud_cover": f.cloud,
        "platform": f.item.properties.get("platform"),
        "harmonized": notes,
    }


def _tag_dates(folder: Path, names, dates, start, end) -> None:
    for name, d in zip(names, dates, strict=True):
        with rasterio.open(folder / name, "r+") as dst:
            dst.update_tags(
                ACQUISITION_DATE=d, STAC_START=start.isoformat(), STAC_END=end.isoformat()
            )


class _Writer:
    """Writes the outputs block by block from a :class:`BlockReader`."""

    def __init__(self, reader: BlockReader):
        self.reader, self.source, self.bands = reader, reader.source, reader.bands
        self.grid, self.read = reader.grid, reader.read
        self._clear = [0, 0]  # pixels with >= 1 clear observation, pixels in the AOI

    # outputs -----------------------------------------------------------------------------------
    def _open(self, path: Path, count: int, dtype: str, nodata):
        g = self.grid
        return rasterio.open(
            path, "w", driver="GTiff", crs=g.crs, transform=g.transform, width=g.width,
            height=g.height, count=count, dtype=dtype, nodata=nodata, tiled=True,
            blockxsize=256, blockysize=256, compress="DEFLATE", bigtiff="IF_SAFER",
        )  # fmt: skip

    def _image_nodata(self):
        nd = self.source.nodata
        return float("nan") if nd is None else nd

    def _to_dtype(self, x: np.ndarray) -> np.ndarray:
        dtype, nd = np.dtype(self.source.dtype), self._image_nodata()
        bad = ~np.isfinite(x)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            y = np.clip(np.rint(np.where(bad, 0, x)), info.min, info.max).astype(dtype)
            y[(y == nd) & ~bad] += 1 if nd < info.max else -1  # a clear pixel is never nodata
            y[bad] = nd
            return y
        return np.where(bad, nd, x).astype(dtype)

    def _blocks(self, size: int, progress: bool, desc: str):
        from tqdm.auto import tqdm

        wins = list(iter_windows(self.grid.width, self.grid.height, size))
        return tqdm(wins, desc=desc, unit="block", disable=not progress)

    def write_median(self, obs, folder: Path, size: int, progress: bool) -> None:
        img = self._open(
            folder / "composite.tif", len(self.bands), self.source.dtype, self._image_nodata()
        )
        img.descriptions = tuple(self.bands)
        cnt = self._open(folder / "count.tif", 1, "uint16", None)
        with img, cnt, ThreadPoolExecutor(self.read.workers) as pool:
            for win in self._blocks(size, progress, "composite"):
                aoi = self.reader.aoi_mask(win)
                views = self.reader.observe(pool, obs, win, aoi) if aoi.any() else []
                stack = [np.where(c, d, np.nan) for d, c in views if d is not None]
                count = sum((c for _d, c in views), np.zeros(aoi.shape, dtype=np.uint16))
                if stack:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
                        med = np.nanmedian(np.stack(stack), axis=0)
                else:
                    med = np.full((len(self.bands), *aoi.shape), np.nan, dtype=np.float32)
                img.write(self._to_dtype(med), window=win)
                cnt.write(count.astype(np.uint16), 1, window=win)
                self._clear[0] += int(((count > 0) & aoi).sum())
                self._clear[1] += int(aoi.sum())

    def best_dates(self, obs, spans, size: int, progress: bool) -> list[Observation]:
        """The observation with the most clear AOI pixels in each period (masks only)."""
        clear = np.zeros(len(obs), dtype=np.int64)
        with ThreadPoolExecutor(self.read.workers) as pool:
            for win in self._blocks(size, progress, "rank dates"):
                aoi = self.reader.aoi_mask(win)
                if aoi.any():
                    for i, (_d, c) in enumerate(
                        self.reader.observe(pool, obs, win, aoi, bands=False)
                    ):
                        clear[i] += int(c.sum())
        chosen = []
        for k, (a, b) in enumerate(spans, 1):
            cands = [i for i, o in enumerate(obs) if a <= o.date <= b and clear[i] > 0]
            if not cands:
                raise NoImageryError(
                    f"no clear observation between {a} and {b} (period {k} of {len(spans)}): "
                    "widen the date range, raise --max-cloud or ask for fewer dates"
                )
            chosen.append(obs[max(cands, key=lambda i: (clear[i], -i))])
        return chosen

    def write_frames(self, obs, names, folder: Path, size: int, progress: bool) -> None:
        files = [
            self._open(folder / n, len(self.bands), self.source.dtype, self._image_nodata())
            for n in names
        ]
        for f in files:
            f.descriptions = tuple(self.bands)
        cnt = self._open(folder / "count.tif", 1, "uint16", None)
        with ThreadPoolExecutor(self.read.workers) as pool:
            for win in self._blocks(size, progress, "frames"):
                aoi = self.reader.aoi_mask(win)
                views = (
                    self.reader.observe(pool, obs, win, aoi)
                    if aoi.any()
                    else [(None, np.zeros(aoi.shape, bool))] * len(obs)
                )
                count = np.zeros(aoi.shape, dtype=np.uint16)
                for f, (d, c) in zip(files, views, strict=True):
                    x = (
                        np.full((len(self.bands), *aoi.shape), np.nan, np.float32)
                        if d is None
                        else np.where(c, d, np.nan)
                    )
                    f.write(self._to_dtype(x), window=win)
                    count += c
                cnt.write(count, 1, window=win)
                self._clear[0] += int(((count > 0) & aoi).sum())
                self._clear[1] += int(aoi.sum())
        for f in [*files, cnt]:
            f.close()

    @property
    def n_clear(self) -> int:
        return self._clear[0]

    def clear_fraction(self) -> float:
        return round(self._clear[0] / self._clear[1], 4) if self._clear[1] else 0.0


__all__ = ["CompositeResult", "composite_for_aoi", "composite_for_model"]
