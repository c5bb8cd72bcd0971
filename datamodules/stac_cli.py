"""The command-line glue for imagery by area and dates: ``geotune predict --aoi ... --start ...
--end ...`` and ``geotune data add --labels ... --start ... --end ... --sensor ...`` fetch a
composite (:func:`datamodules.composite.composite_for_aoi`) into a GeoTIFF, then hand it to the
predictor / ingestion unchanged. Imports stay light: the composite code loads when it is used.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from .errors import UserError

MARGIN_PX = 64  # imagery around the labels' extent, for training chips at its edges


def percent(text: str) -> float:
    """An argparse type: a number from 0 to 100 (``nan`` is not one)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"takes a percentage from 0 to 100, not {text!r}")
    return value


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
        help="the catalog at another URL: a mirror, a private STAC API or a static copy (a "
        "catalog.json, collection.json, item JSON, ItemCollection or stac-geoparquet file) with "
        "the preset's asset keys; unset: $GEOTUNE_STAC_URL, else the preset's",
    )
    g.add_argument(
        "--max-cloud",
        type=percent,
        default=DEFAULT_MAX_CLOUD,
        help="scene cloud cover limit (%%, 0..100)",
    )
    g.add_argument(
        "--max-items",
        type=int,
        default=DEFAULT_MAX_ITEMS,
        help="use at most this many scenes (the clearest) per period",
    )
    g.add_argument(
        "--crs",
        default=None,
        help="output CRS, projected (e.g. EPSG:32633, EPSG:3857); unset: the imagery's own CRS",
    )
    if not aoi:
        g.add_argument(
            "--resolution",
            type=float,
            default=None,
            help="pixel size in metres on the ground (converted to the CRS's units at the area's "
            "centre where the CRS is not true to scale there); unset: the finest band's",
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


def _fetch(args, aoi, out: Path, *, sensor, record=None, clip, margin_px, cluster=None, **kw):
    from .composite import composite_for_aoi, composite_for_model

    common = fetch_options(args) | dict(clip=clip, margin_px=margin_px, cluster=cluster)
    if record is not None:
        result = composite_for_model(
            aoi, args.start, args.end, record, out, sensor=sensor, **common
        )
    else:
        result = composite_for_aoi(aoi, args.start, args.end, sensor, out, **common, **kw)
    report_imagery(result.provenance, out)
    return result


def fetch_options(args) -> dict:
    """The search options of ``--aoi`` imagery (:func:`add_arguments`) as keywords of
    :func:`datamodules.composite.composite_for_aoi`."""
    return dict(
        max_cloud=args.max_cloud,
        max_items=args.max_items,
        crs=args.crs,
        max_aoi_km2=args.max_aoi_km2,
        catalog=args.catalog,
        catalog_url=args.catalog_url,
    )


def report_imagery(p: dict, out: Path) -> None:
    """One line on stderr: the imagery a composite's provenance ``p`` describes, in ``out``."""
    frames = p["frames"]
    usable = (
        f"{p['clear_fraction']:.0%} of the area clear"
        if frames == 1
        else f"{p['usable_fraction']:.0%} of the area clear in all {frames} frames (usable by the "
        f"model; {p['clear_fraction']:.0%} in at least one)"
    )
    print(
        f"imagery: {len(p['items'])} {p['sensor']} scene(s) from {p['catalog']} "
        f"({p['start']}..{p['end']}, {p['method']}), {p['shape'][1]}x{p['shape'][0]} px at "
        f"{p['grid']['resolution_m']:g} m in {p['crs']}, {usable} → {out}",
        file=sys.stderr,
    )
    if p["bands_left_out"]:
        print(
            f"note: the items have no {', '.join(p['bands_left_out'])}; the imagery has "
            f"{', '.join(p['bands'])}",
            file=sys.stderr,
        )
    from .stac_source import LACKS
    from .stac_twins import TWIN

    reasons = [u["reason"] for u in p["unused_items"]]
    twins = sum(r.startswith(TWIN) for r in reasons)
    lacking = sum(r.startswith(LACKS) for r in reasons)
    if twins or lacking:
        said = [f"{twins} found in two collections, read from one"] if twins else []
        said += [f"{lacking} lacking assets"] if lacking else []
        print(
            f"note: items left out: {' and '.join(said)} (each with why: unused_items in "
            f"{out / 'provenance.json'})",
            file=sys.stderr,
        )


def _dates_given(args) -> bool:
    return bool(args.start or args.end)


def _need_dates(args, sensor) -> None:
    missing = [f for f, v in (("--start", args.start), ("--end", args.end)) if not v]
    if not sensor:
        missing.append("--sensor")
    if missing:
        raise UserError(f"fetching imagery by area and dates also needs {', '.join(missing)}")


def imagery_for_predict(args, record: dict, cluster=None) -> tuple[list[str], dict | None]:
    """The images to predict and the provenance to record: ``--image`` as given, or a
    composite for ``--aoi`` on the model's bands, resolution and number of dates (read and
    reduced on ``cluster``'s workers when one is given)."""
    sensor = check_imagery_args(args, record)
    if not args.aoi:
        return args.image, None
    out = Path(args.imagery_dir) if args.imagery_dir else Path(args.out) / "imagery"
    result = _fetch(
        args, args.aoi, out, sensor=sensor, record=record, clip=True, margin_px=0, cluster=cluster
    )
    args.sensor = result.sensor
    return [str(p) for p in result.images], {"imagery": result.provenance}


def check_imagery_args(args, record: dict) -> str | None:
    """Check that ``args`` ask for a scene (``--image``) or for imagery by area and dates
    (``--aoi``, ``--start``, ``--end`` and a sensor: the model's unless ``--sensor``) before any
    work starts; returns the sensor of an ``--aoi`` (None for ``--image``)."""
    if not args.aoi:
        if _dates_given(args):
            raise UserError("--start/--end fetch imagery for an --aoi; give --aoi aoi.geojson too")
        if not args.image:
            raise UserError(
                "give the scene (--image scene.tif) or an area and dates "
                "(--aoi aoi.geojson --start YYYY-MM-DD --end YYYY-MM-DD)"
            )
        return None
    if args.image:
        raise UserError(
            "give either --image or --aoi (imagery fetched by area and dates), not both"
        )
    sensor = args.sensor or record.get("sensor")
    _need_dates(args, sensor)
    return sensor


@contextmanager
def imagery_for_labels(args):
    """The imagery of ``geotune data add`` for the body (the ingestion): ``(images, imagery)``,
    the ``--image`` files as given (``imagery`` None), or without ``--image`` the file(s) of a
    composite fetched for the labels' extent (plus a margin) and its provenance, after checking
    everything that can be checked without imagery (:func:`datamodules.stac_labels.check_dataset`).
    When the body fails the fetched imagery is removed."""
    if args.image:
        if _dates_given(args):
            raise UserError(
                "--start/--end fetch imagery for the labels' extent; drop them when you give --image"
            )
        yield args.image, None
        return
    if not _dates_given(args):
        raise UserError(
            "give the imagery (--image scene.tif), or fetch it for the labels' extent with "
            "--start YYYY-MM-DD --end YYYY-MM-DD --sensor ID"
        )
    from .stac_labels import check_dataset, report_unusable_labels

    _need_dates(args, args.sensor)
    frames = args.frames or (2 if args.task == "change" else 1)
    labels = check_dataset(args, frames)
    if args.imagery_dir:
        out = Path(args.imagery_dir)
    else:
        from .manifest import slugify
        from .paths import home

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = home() / "imagery" / f"{slugify(args.name)}-{stamp}"
    made = not out.exists()
    bands = [b.strip() for b in args.bands.split(",") if b.strip()] if args.bands else None
    result = _fetch(
        args,
        labels.extent,
        out,
        sensor=args.sensor,
        bands=bands,
        frames=frames,
        resolution=args.resolution,
        clip=False,
        margin_px=MARGIN_PX,
    )
    try:
        report_unusable_labels(labels, result)
        yield [str(p) for p in result.images], result.provenance
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for p in [*result.images, result.count, result.provenance_path]:
                Path(p).unlink(missing_ok=True)
        raise


__all__ = [
    "add_arguments",
    "check_imagery_args",
    "fetch_options",
    "imagery_for_labels",
    "imagery_for_predict",
    "report_imagery",
]
