"""``geotune data add|list|show|delete|suggest``: the parsers (``data add``'s options are
:data:`datamodules.options.INGEST`'s, as ``POST /v1/datasets``'s fields); the logic is
:mod:`datamodules.data_cli`'s."""

from __future__ import annotations

from datamodules.options import INGEST, HelpFormatter, add_options


def add_data_parser(sub) -> None:
    from datamodules.stac_cli import add_arguments as stac_arguments

    from .embed_cli import add_suggest_parser

    d = sub.add_parser("data", help="add, list, show and delete datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    a = dsub.add_parser(
        "add", help="ingest imagery + labels into a dataset folder", formatter_class=HelpFormatter
    )
    add_options(a, INGEST)
    stac_arguments(a, aoi=False)
    dsub.add_parser("list", help="list datasets")
    s = dsub.add_parser("show", help="classes, counts, bands, CRS and splits of a dataset")
    s.add_argument("id")
    s.add_argument("--json", action="store_true", help="print the whole manifest")
    s = dsub.add_parser("delete", help="delete a dataset")
    s.add_argument("id")
    add_suggest_parser(dsub)


def cmd_data(args) -> int:
    from datamodules.data_cli import run

    if args.data_cmd == "suggest":
        from .embed_cli import run_suggest

        return run_suggest(args)
    if args.data_cmd == "add":  # without --image: imagery by the labels' extent and dates (STAC)
        from datamodules.stac_cli import imagery_for_labels

        with imagery_for_labels(args) as (images, imagery):  # removed if the ingestion fails
            return run(args, images, imagery)
    return run(args)
