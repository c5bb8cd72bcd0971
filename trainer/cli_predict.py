"""``geotune predict``: a registered model over a scene (or an area and dates) → class COG,
confidence COG, polygons and class areas. The options are :data:`trainer.options.PREDICT`'s."""

from __future__ import annotations

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
    from .cluster import check_spec, connect_or_none
    from .loading import load_model
    from .predict import predict_scene

    if args.cluster:
        check_spec(args.cluster)

    model = load_model(args.model, version=args.version, alias=args.alias)
    from datamodules.stac_cli import imagery_for_predict  # --aoi: imagery by area and dates

    opts = predict_options(vars(args), polygons=not args.no_polygons)
    with connect_or_none(args.cluster) as cluster:
        images, provenance = imagery_for_predict(args, model.record, cluster)
        summary = predict_scene(
            model,
            images,
            args.out,
            bands=_csv(args.bands),
            sensor=args.sensor,
            dates=None if args.aoi else args.dates,
            options=opts,
            provenance=provenance,
            cluster=cluster,
        )
    print_summary(summary, args.out)
    return 0


def print_summary(summary: dict, out: str) -> None:
    from .inputs import describe

    what = f" in {summary['n_chips']} chips" if "n_chips" in summary else ""
    print(f"{summary['n_pixels']} pixels predicted{what} in {summary['seconds']} s → {out}")
    print(f"  {describe(summary['input'])}")
    if "cluster" in summary:
        c = summary["cluster"]
        again = f"; run again: strips {[r['strip'] for r in c['retried']]}" if c["retried"] else ""
        print(f"  on {c['address']}: {c['workers']} workers, {c['strips']} strips{again}")
    for row in summary["class_histogram"]:
        print(
            f"  {row['name']:20s} {row['pixels']:>10d} px  {row['area_m2'] / 1e6:10.3f} km²  {row['fraction']:7.2%}"
        )
    for k, v in summary["outputs"].items():
        print(f"  {k}: {out}/{v}")
