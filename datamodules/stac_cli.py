"""The command-line glue for imagery by area and dates: ``geotune predict --aoi ... --start ...
--end ...`` and ``geotune data add --labels ... --start ... --end ... --sensor ...`` fetch a
composite (:func:`datamodules.composite.composite_for_aoi`) into a GeoTIFF, then hand it to the
predictor / ingestion unchanged. Imports stay light: the composite code loads when it is used.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from .errors import UserError

MARGIN_PX = 64  # imagery around the labels' extent, for training chips at its edges


def add_arguments(p: argparse.ArgumentParser, *, aoi: bool) -> None:
    """The STAC options of ``geotune predict`` (``aoi=True``) and ``geotune data add``."""
    from .stac import DEFAULT_MAX_AOI_KM2, DEFAULT_MAX_CLOUD, DEFAULT_MAX_ITEMS

    g = p.add_argument_group(
        "imagery by area and dates (STAC)",
        "fetch a cloud-masked composite from a STAC catalog instead of giving --image"
        + (" (--sensor defaults to the model's)" if aoi else " for the labels' extent"),
    )
    if aoi:
        g.add_argument("--aoi", help="area to predict: GeoJSON (CRS84) or any vector file")
    g.add_argument("--start", help="first acquisition date to use (YYYY-MM-DD)")
    g.add_argument("--end", help="last acquisition date to use (YYYY-MM-DD)")
    g.add_argument(
        "--catalog",
        default=None,
        help="STAC catalog: a preset (earth_search, planetary_computer, earthdata_lpcloud) or a "
        "YAML file like conf/stac/earth_search.yaml; unset: $GEOTUNE_STAC_CATALOG, else earth_search",
    )
    g.add_argument(
        "--catalog-url",
        default=None,
        help="the catalog at another URL: a mirror, a private STAC API or a static catalog.json "
        "with the preset's asset keys; unset: $GEOTUNE_STAC_URL, else the preset's",
    )
    g.add_argument(
        "--max-cloud", type=float, default=DEFAULT_MAX_CLOUD, help="scene cloud cover limit (%%)"
    )
    g.add_argument(
        "--max-items", type=int, default=DEFAULT_MAX_ITEMS, help="use at most this many scenes"
    )
    g.add_argument("--crs", default=None, help="output CRS; unset: the AOI's UTM zone")
    if not aoi:
        g.add_argument(
            "--resolution",
            type=float,
            default=None,
            help="pixel size in m; unset: the finest band's",
        )
        g.add_argument(
            "--frames",
            type=int,
            default=None,
            help="1: a per-band median composite; T > 1: the clearest date of each of T equal "
            "periods (multi-temporal datasets); unset: 2 for --task change (before, after), else 1",
        )
    g.add_argument(
        "--max-aoi-km2",
        type=float,
        default=DEFAULT_MAX_AOI_KM2,
        help="refuse larger areas",
    )
    g.add_argument(
        "--imagery-dir",
        default=None,
        help="where the composite goes; unset: OUT/imagery (predict), "
        "$GEOTUNE_HOME/imagery/NAME-TIME (data add)",
    )


def _fetch(args, aoi, out: Path, *, sensor, record=None, clip, margin_px, **kw):
    from .composite import composite_for_aoi, composite_for_model

    common = dict(
        max_cloud=args.max_cloud,
        max_items=args.max_items,
        crs=args.crs,
        max_aoi_km2=args.max_aoi_km2,
        catalog=args.catalog,
        catalog_url=args.catalog_url,
        clip=clip,
        margin_px=margin_px,
    )
    if record is not None:
        result = composite_for_model(
            aoi, args.start, args.end, record, out, sensor=sensor, **common
        )
    else:
        result = composite_for_aoi(aoi, args.start, args.end, sensor, out, **common, **kw)
    sensor = result.sensor
    p = result.provenance
    print(
        f"imagery: {len(p['items'])} {sensor} scene(s) from {p['catalog']} "
        f"({p['start']}..{p['end']}, {p['method']}), {p['shape'][1]}x{p['shape'][0]} px at "
        f"{p['resolution'][0]:g} m in {p['crs']}, {p['clear_fraction']:.0%} of the area clear "
        f"→ {out}",
        file=sys.stderr,
    )
    return result


def _dates_given(args) -> bool:
    return bool(args.start or args.end)


def _need_dates(args, sensor) -> None:
    missing = [f for f, v in (("--start", args.start), ("--end", args.end)) if not v]
    if not sensor:
        missing.append("--sensor")
    if missing:
        raise UserError(f"fetching imagery by area and dates also needs {', '.join(missing)}")


def imagery_for_predict(args, record: dict) -> tuple[list[str], dict | None]:
    """The images to predict and the provenance to record: ``--image`` as given, or a
    composite for ``--aoi`` on the model's bands, resolution and number of dates."""
    if not args.aoi:
        if _dates_given(args):
            raise UserError("--start/--end fetch imagery for an --aoi; give --aoi aoi.geojson too")
        if not args.image:
            raise UserError(
                "give the scene (--image scene.tif) or an area and dates "
                "(--aoi aoi.geojson --start YYYY-MM-DD --end YYYY-MM-DD)"
            )
        return args.image, None
    if args.image:
        raise UserError(
            "give either --image or --aoi (imagery fetched by area and dates), not both"
        )
    sensor = args.sensor or record.get("sensor")
    _need_dates(args, sensor)
    out = Path(args.imagery_dir) if args.imagery_dir else Path(args.out) / "imagery"
    result = _fetch(args, args.aoi, out, sensor=sensor, record=record, clip=True, margin_px=0)
    args.sensor = result.sensor
    return [str(p) for p in result.images], {"imagery": result.provenance}


def imagery_for_labels(args) -> None:
    """``geotune data add`` without ``--image``: fetch a composite for the labels' extent (plus a
    margin) and put its file(s) in ``args.image``. Does nothing when ``--image`` is given."""
    if args.image:
        if _dates_given(args):
            raise UserError(
                "--start/--end fetch imagery for the labels' extent; drop them when you give --image"
            )
        return
    if not _dates_given(args):
        raise UserError(
            "give the imagery (--image scene.tif), or fetch it for the labels' extent with "
            "--start YYYY-MM-DD --end YYYY-MM-DD --sensor ID"
        )
    _need_dates(args, args.sensor)
    extent = labels_extent(Path(args.labels))
    if args.imagery_dir:
        out = Path(args.imagery_dir)
    else:
        from .manifest import slugify
        from .paths import home

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = home() / "imagery" / f"{slugify(args.name)}-{stamp}"
    bands = [b.strip() for b in args.bands.split(",") if b.strip()] if args.bands else None
    frames = args.frames or (2 if args.task == "change" else 1)
    result = _fetch(
        args, extent, out, sensor=args.sensor, bands=bands, frames=frames,
        resolution=args.resolution, clip=False, margin_px=MARGIN_PX,
    )  # fmt: skip
    args.image = [str(p) for p in result.images]


def labels_extent(path: Path):
    """The labels' bounding box as a CRS84 polygon (vector labels or a mask raster)."""
    from shapely.geometry import box

    from .labels import RASTER_SUFFIXES

    if not path.is_file():
        raise UserError(f"labels file {path} does not exist")
    if path.suffix.lower() in RASTER_SUFFIXES:
        import rasterio
        from rasterio.warp import transform_bounds

        with rasterio.open(path) as src:
            if src.crs is None:
                raise UserError(f"{path.name} has no CRS; its extent cannot be located")
            return box(*transform_bounds(src.crs, "OGC:CRS84", *src.bounds))
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as e:
        raise UserError(f"cannot read the labels {path}: {e}") from None
    if gdf.crs is None:
        raise UserError(f"{path.name} has no CRS; its extent cannot be located")
    if gdf.empty:
        raise UserError(f"{path.name} holds no labels")
    return box(*gdf.to_crs("OGC:CRS84").total_bounds)


__all__ = ["add_arguments", "imagery_for_labels", "imagery_for_predict", "labels_extent"]
