"""Cloud-masked composites for an AOI and a date range, from STAC imagery.

``composite_for_aoi`` checks the request (AOI, area, dates, bands) before touching the network,
searches the catalog (:mod:`datamodules.stac`), keeps the clearest items of each period (one
period, or ``frames`` equal periods for multi-temporal models), groups them into observations
(one per date, collection and platform; neighbouring tiles of one overpass are mosaicked), and
builds the output on the items' own pixel grid (:mod:`datamodules.stac_source`) block by block
(bounded memory): for every block it reads the quality masks of the observations that reach it,
then the bands of those with clear pixels (windowed reads, in parallel:
:mod:`datamodules.cog_read`), harmonises known radiometric offsets, masks clouds, shadows and
nodata, and takes the per-band median over the observations (or keeps the clearest date of each
period). Pixels whose centres fall outside the AOI are nodata. It writes

- ``composite.tif`` (or ``frame_1_<date>.tif`` ... ``frame_T_<date>.tif``): the bands, named in
  the band descriptions, nodata where no clear observation exists (and outside the AOI); the
  ``ACQUISITION_DATE`` tag is the median acquisition time of the scenes that gave pixels;
- ``count.tif``: per pixel, the number of clear observations used (frames: clear frames);
- ``provenance.json``: catalog, search, grid (and how each band was resampled onto it), the items
  that gave pixels (with how many, and the href of each item's JSON) and those searched but unused.

Files appear only when complete: they are written under a temporary name first, and a failed
composite leaves no file (nor a folder it created) behind.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import rasterio

from .aoi import check_area, parse_aoi, pixel_size
from .cog_read import ReadOptions
from .composite_write import Writer
from .imagery import Grid, parse_date
from .observe import BlockReader
from .sensors import get_sensor
from .stac import (
    DEFAULT_MAX_AOI_KM2,
    DEFAULT_MAX_CLOUD,
    DEFAULT_MAX_ITEMS,
    Catalog,
    Found,
    NoImageryError,
    Observation,
    SensorSource,
    StacError,
    choose,
    load_catalog,
    observations,
    periods,
    search_items,
)
from .stac_source import item_grids, output_grid, usable_bands
from .stac_twins import one_per_acquisition


@dataclass
class CompositeResult:
    images: list[Path]  # one composite, or one file per frame in time order
    count: Path  # clear observations per pixel
    provenance_path: Path
    provenance: dict
    sensor: str
    bands: list[str]
    dates: list[str]  # each image's acquisition time (ISO): the median of the scenes used
    grid: Grid


@dataclass
class Request:
    """A checked request: everything that can be checked before the catalog is searched."""

    geom: object
    km2: float
    start: date
    end: date
    spans: list[tuple[date, date]]


def widened(geom, metres: float):
    """A CRS84 geometry's bounding box in its UTM zone (:func:`~datamodules.aoi.local_crs`, as
    the output grid's), widened by ``metres`` on the ground, in CRS84 (its edges densified,
    straight in that zone)."""
    import shapely
    from pyproj import Transformer

    from .aoi import _xy, local_crs, project

    crs = local_crs(geom)
    wide = shapely.box(*project(geom, crs).bounds).buffer(metres, join_style="mitre")
    back = Transformer.from_crs(crs.to_wkt(), "OGC:CRS84", always_xy=True)
    return shapely.transform(shapely.segmentize(wide, 1000.0), _xy(back))


def check_request(
    aoi, start, end, *, frames=1, max_items=1, max_aoi_km2=DEFAULT_MAX_AOI_KM2, crs=None
):
    """Parse and check the AOI, its area, the dates, the number of frames and the output CRS
    (no network)."""
    geom = parse_aoi(aoi)
    km2 = check_area(geom, max_aoi_km2)
    if crs:
        pixel_size(crs, 1.0, geom)  # a projected CRS defined over the AOI
    start_d, end_d = _date(start, "start"), _date(end, "end")
    if start_d > end_d:
        raise StacError(f"the start date {start_d} is after the end date {end_d}")
    if frames < 1 or max_items < 1:
        raise StacError("frames and max_items must be at least 1")
    return Request(geom, km2, start_d, end_d, periods(start_d, end_d, frames))


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
    bands_hint: str = "Pick bands the items have with --bands.",
    cluster=None,
    report=None,
) -> CompositeResult:
    """Search ``catalog`` for ``sensor`` imagery over ``aoi`` (GeoJSON / shapely / vector file,
    CRS84) between ``start`` and ``end`` and write a cloud-masked composite into ``out_dir``.

    ``frames=T > 1`` keeps the clearest date of each of T equal periods instead of a median;
    ``max_items`` caps the scenes of each period. ``resolution`` is metres on the ground (default:
    the finest band's); ``crs`` the output CRS (default: the items'). ``clip`` sets pixels
    outside the AOI polygon to nodata (else the whole bounding box is kept, widened by
    ``margin_px``). An AOI over ``max_aoi_km2`` raises ``AoiTooLargeError``; ``bands_hint``
    ends the message when the items lack bands asked for. ``cluster`` (a
    :class:`trainer.cluster.Cluster`): its workers read and reduce strips of blocks, the same
    files (:mod:`datamodules.composite_cluster`). ``report(blocks_done, blocks_total)`` is
    called as blocks are done (a service job's progress)."""
    req = check_request(
        aoi, start, end, frames=frames, max_items=max_items, max_aoi_km2=max_aoi_km2, crs=crs
    )
    read = read or ReadOptions()
    # the margin around an unclipped area is imagery too: search over it (at the finest
    # resolution of the bands asked for, the output grid's)
    sens = get_sensor(sensor)
    asked = [b for b in bands or [] if b in sens.band_names] or sens.band_names
    finest = float(resolution or min(sens.band(b).gsd for b in asked))
    search = (
        req if clip or not margin_px else replace(req, geom=widened(req.geom, margin_px * finest))
    )
    plan = _plan(
        search,
        sensor,
        bands,
        max_cloud,
        max_items,
        load_catalog(catalog, catalog_url),
        read,
        bands_hint,
    )
    res = float(resolution or min(sens.band(b).gsd for b in plan.bands))
    grids = item_grids(plan.picked, plan.bands, plan.cat.access_for, read)
    grid, plan.grid = output_grid(req.geom, grids, res, crs, margin_px=0 if clip else margin_px)
    reader = BlockReader(plan.cat, plan.source, plan.bands, grid, req.geom if clip else None, read)
    writer = Writer(reader, frames, cluster, report)
    out = Path(out_dir)
    names, dates, provenance = _write_into(out, writer, plan, req, sensor, block_size, progress)
    images = [out / n for n in names]
    return CompositeResult(
        images,
        out / "count.tif",
        out / "provenance.json",
        provenance,
        sensor,
        plan.bands,
        dates,
        grid,
    )


def _write_into(out: Path, writer: Writer, plan, req: Request, sensor, block_size, progress):
    """Write the composite, ``count.tif`` and ``provenance.json`` under a temporary name in
    ``out`` and move them in once complete (``out`` is removed again if this made it and
    failed); returns the image names, their dates and the provenance."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out, prefix=".composite-")
    try:
        names, used, dates = _write(writer, plan.chosen, req, Path(tmp), block_size, progress)
        if writer.n_clear == 0:
            raise NoImageryError(
                f"the {len(plan.picked)} {sensor} scene(s) found have no clear view of the "
                "area (clouds, shadows or no data everywhere). Widen the dates or raise "
                "--max-cloud."
            )
        _tag_dates(Path(tmp), names, dates, req.start, req.end)
        provenance = _provenance(plan, writer, used, names, dates)
        (Path(tmp) / "provenance.json").write_text(json.dumps(provenance, indent=2))
        for name in [*names, "count.tif", "provenance.json"]:
            shutil.move(Path(tmp) / name, out / name)
    except BaseException:
        _remove(Path(out) if made else Path(tmp))
        raise
    _remove(Path(tmp))
    return names, dates, provenance


def _remove(folder: Path, tries: int = 20) -> None:
    """Remove ``folder``, again while it fills: a cluster strip cancelled after another failed
    for good may still be running on its worker and write its blocks while this removes them."""
    for _ in range(tries):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.25)


@dataclass
class Plan:
    """What the search gave and what will be used."""

    req: Request
    cat: Catalog
    source: SensorSource
    max_cloud: float | None
    max_items: int
    bands: list[str]
    left_out: list[str]  # configured bands the items do not have
    searched: list[Found]
    skipped: dict[str, str]  # item id → why it cannot be used
    chosen: list[list[Found]]  # per period, its clearest items
    over_cap: list[Found]
    grid: dict | None = None  # how the output grid was chosen

    @property
    def picked(self) -> list[Found]:
        return [f for fs in self.chosen for f in fs]


def _plan(req, sensor, bands, max_cloud, max_items, cat, read, bands_hint) -> Plan:
    source = cat.source(sensor)
    configured = source.bands()
    unknown = [b for b in bands or [] if b not in configured]
    if unknown:
        raise StacError(
            f"bands {unknown} are not available for {sensor} in catalog {cat.name}; "
            f"it has: {', '.join(configured)}"
        )
    searched = search_items(
        cat, source, req.geom, req.start, req.end, max_cloud=max_cloud, timeout=read.timeout
    )
    if not searched:
        raise NoImageryError(
            f"no {sensor} items in {cat.name} ({cat.url}) over the AOI between {req.start} and "
            f"{req.end}{_cloud_text(max_cloud)}. Widen the dates or raise --max-cloud."
        )
    found, twins = one_per_acquisition(searched, source)
    bands, left_out, found, skipped = usable_bands(
        found, sensor, configured, bands, bands_hint, cat.name
    )
    skipped |= twins
    chosen, over_cap = choose(found, req.spans, max_items)
    _check_periods(chosen, req.spans, sensor, max_cloud)
    return Plan(
        req,
        cat,
        source,
        max_cloud,
        max_items,
        bands,
        left_out,
        searched,
        skipped,
        chosen,
        over_cap,
    )


def _provenance(plan: Plan, writer: Writer, used, names, dates) -> dict:
    req, grid, reader = plan.req, writer.grid, writer.reader
    return {
        "catalog": plan.cat.name,
        "url": plan.cat.url,
        "sensor": plan.source.sensor,
        "bands": plan.bands,
        "bands_left_out": plan.left_out,
        "collections": [c.collection for c in plan.source.collections],
        "start": req.start.isoformat(),
        "end": req.end.isoformat(),
        "max_cloud": plan.max_cloud,
        "max_items": plan.max_items,
        "method": "median" if writer.frames == 1 else "best-dates",
        "frames": writer.frames,
        "aoi_km2": round(req.km2, 4),
        "crs": grid.crs.to_string(),
        "resolution": list(grid.res),
        "shape": [grid.height, grid.width],
        "bounds": list(grid.bounds),
        "grid": plan.grid,
        "resampling": {k: sorted(v) for k, v in reader.resampling.items()},
        "n_items_found": len(plan.searched),
        "dates": dates,
        **_items(reader, plan, used),
        "clear_fraction": writer.clear_fraction(),
        "usable_fraction": writer.usable_fraction(),
        "outputs": {"images": names, "count": "count.tif"},
    }


def _write(writer: Writer, chosen, req: Request, tmp: Path, block_size: int, progress: bool):
    """Write the images; returns their names, the observations used and their dates."""
    with warnings.catch_warnings():
        # rasterio's reproject builds in-memory datasets that warn before their transform is
        # set; its own suppression of that warning is not thread-safe
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        if len(req.spans) == 1:
            obs = observations(chosen[0])
            writer.write_median(obs, tmp, block_size, progress)
            contributed = [o for o in obs if any(writer.reader.pixels[f.item.id] for f in o.found)]
            return ["composite.tif"], obs, [_median_time(contributed or obs)]
        per_period = [observations(fs) for fs in chosen]
        used = writer.best_dates(per_period, req.spans, tmp, block_size, progress)
        dates = [_median_time([o]) for o in used]
        names = [f"frame_{i + 1}_{d[:10]}.tif" for i, d in enumerate(dates)]
        writer.write_frames(used, names, tmp, block_size, progress)
        return names, used, dates


def composite_for_model(
    aoi, start, end, record: dict, out_dir, *, sensor: str | None = None, **kwargs
) -> CompositeResult:
    """The imagery a registered model needs over ``aoi``: its sensor (unless ``sensor`` is
    given), its bands, its training resolution and its number of dates (``record`` is
    ``model.record``). ``kwargs`` go to :func:`composite_for_aoi`."""
    sensor = sensor or record.get("sensor")
    if not sensor:
        raise StacError("the model records no sensor; name the imagery's sensor (--sensor ID)")
    hint = "The model needs these bands: use a catalog whose items have them (--catalog)."
    return composite_for_aoi(
        aoi,
        start,
        end,
        sensor,
        out_dir,
        bands=list(record["bands"]),
        frames=int(record.get("num_frames", 1)),
        resolution=float(record["resolution"][0]),
        bands_hint=hint,
        **kwargs,
    )


def _date(value, what: str) -> date:
    d = value if isinstance(value, date) else parse_date(str(value))
    if d is None:
        raise StacError(f"the {what} date is missing; give it as YYYY-MM-DD")
    return d


def _cloud_text(max_cloud) -> str:
    return f" with cloud cover at most {max_cloud:g}%" if max_cloud is not None else ""


def _check_periods(chosen, spans, sensor: str, max_cloud) -> None:
    """With several periods, each needs at least one scene (checked before any pixel is read)."""
    if len(spans) == 1:
        return
    for k, ((a, b), fs) in enumerate(zip(spans, chosen, strict=True), 1):
        if not fs:
            raise NoImageryError(
                f"no {sensor} scene between {a} and {b} (period {k} of {len(spans)})"
                f"{_cloud_text(max_cloud)}: widen the date range, raise --max-cloud or ask for "
                "fewer dates"
            )


def _median_time(obs: list[Observation]) -> str:
    """The median acquisition time of the observations (the earlier of the middle two)."""
    when = statistics.median_low(o.when for o in obs)
    return when.isoformat().replace("+00:00", "Z")


def _items(reader: BlockReader, plan: Plan, used) -> dict:
    """The items that gave pixels (with how many), and those searched but unused (and why)."""
    in_used = {f.item.id for o in used for f in o.found}
    items, unused = [], []
    for f in plan.picked:
        n = reader.pixels[f.item.id]
        if n:
            items.append(f.record(pixels=n, harmonized=reader.notes.get(f.item.id)))
        elif f.item.id in in_used:
            unused.append(f.record(reason="no clear pixel over the AOI"))
        else:
            unused.append(f.record(reason="not the clearest date of its period"))
    unused += [f.record(reason="over --max-items in its period") for f in plan.over_cap]
    by_id = {f.item.id: f for f in plan.searched}
    unused += [by_id[i].record(reason=why) for i, why in plan.skipped.items()]
    return {"items": items, "unused_items": unused}


def _tag_dates(folder: Path, names, dates, start, end) -> None:
    for name, d in zip(names, dates, strict=True):
        with rasterio.open(folder / name, "r+") as dst:
            dst.update_tags(
                ACQUISITION_DATE=d, STAC_START=start.isoformat(), STAC_END=end.isoformat()
            )


__all__ = ["CompositeResult", "check_request", "composite_for_aoi", "composite_for_model"]
