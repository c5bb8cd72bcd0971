"""``geotune predict``: a registered model over a scene (or an area and dates) → class COG,
confidence COG, polygons and class areas. The options are :data:`trainer.options.PREDICT`'s."""

from __future__ import annotations

from pathlib import Path

from datamodules.options import HelpFormatter, add_options
from datamodules.options import csv_list as _csv

from .options import PREDICT, predict_options


def add_predict_parser(sub) -> None:
    from datamodules.stac_cli import add_arguments as stac_arguments

    p = sub.add_parser(
        "predict",
        help="predict a scene → class COG, confidence COG, polygons, areas",
        formatter_class=HelpFormatter,
    )
    add_options(p, PREDICT)
    stac_arguments(p, aoi=True)


def cmd_predict(args) -> int:
    from datamodules.stac_cli import check_imagery_args, fetch_options, report_imagery

    from .cluster import check_spec, connect_or_none
    from .loading import load_model
    from .predict import predict_aoi, predict_scene

    if args.cluster:
        check_spec(args.cluster)
    model = load_model(args.model, version=args.version, alias=args.alias)
    sensor = check_imagery_args(args, model.record)  # before a cluster starts
    opts = predict_options(vars(args), polygons=not args.no_polygons)
    with connect_or_none(args.cluster) as cluster:
        common = dict(bands=_csv(args.bands), options=opts, cluster=cluster)
        if args.aoi:  # imagery by area and dates, as the service does it
            imagery = Path(args.imagery_dir or Path(args.out) / "imagery")
            fetch = fetch_options(args) | {"clip": True, "margin_px": 0}
            summary = predict_aoi(
                model,
                args.aoi,
                args.start,
                args.end,
                args.out,
                imagery_dir=imagery,
                sensor=sensor,
                fetch=fetch,
                **common,
            )
            report_imagery(summary["provenance"]["imagery"], imagery)
        else:
            summary = predict_scene(
                model, args.image, args.out, sensor=args.sensor, dates=args.dates, **common
            )
    print_summary(summary, args.out)
    return 0


def print_summary(summary: dict, out: str) -> None:
    from .inputs import describe

    what = f" in {summary['n_chips']} chips" if "n_chips" in summary else ""
    print(f"{summary['n_pixels']} pixels predicted{what} in {summary['seconds']} s → {out}")
    for line in describe(summary["input"]):
        print(f"  {line}")
    if "cluster" in summary:
        c = summary["cluster"]
        again = f"; run again: strips {[r['strip'] for r in c['retried']]}" if c["retried"] else ""
        print(f"  on {c['address']}: {c['workers']} workers, {c['strips']} strips{again}")
    for row in summary["class_histogram"]:
        print(
            f"  {row['name']:20s} {row['pixels']:>10d} px  {row['area_m2'] / 1e6:10.3f} km²  {row['fraction']:7.2%}"
        )
    for k, v in summary["outputs"].items():
        print(f"  {k}: {Path(out) / v}")  # results/ + classes.tif: results/classes.tif
