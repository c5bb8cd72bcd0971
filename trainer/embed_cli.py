"""``geotune embed`` (chip embeddings to GeoParquet), ``geotune embed search`` (similar chips as
GeoJSON) and ``geotune data suggest`` (where to label next). Parsers stay import-light; the
work imports torch only when it runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datamodules.errors import UserError
from datamodules.options import DescribedHelpFormatter, add_options
from datamodules.options import csv_list as _csv

from .options import EMBED, ENCODER


def add_embed_parser(sub) -> None:
    e = sub.add_parser(
        "embed",
        help="embed every chip of a scene or area → GeoParquet; `embed search` finds similar chips",
        formatter_class=DescribedHelpFormatter,
        description="geotune embed --backbone clay_v1_5 --weights clay-v1.5.ckpt --sensor "
        "sentinel-2-l2a --image scene.tif --out embeddings.parquet\n"
        "geotune embed search --index embeddings.parquet --near LON,LAT --k 20",
    )
    add_options(e.add_argument_group("encoder (one of --backbone, --model)"), ENCODER)
    add_options(e, EMBED)
    from datamodules.stac_cli import add_arguments as stac_arguments

    stac_arguments(e, aoi=True)
    esub = e.add_subparsers(dest="embed_cmd", metavar="search")
    s = esub.add_parser(
        "search",
        help="the chips most similar to a chip, place, area or vector, as GeoJSON with scores",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--index", required=True, help="an embeddings file (geotune embed --out)")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--near", help="LON,LAT: the chip holding this point")
    q.add_argument("--like", type=int, help="a chip_id of the file")
    q.add_argument("--vector", help="a .npy file holding one vector of the file's width")
    q.add_argument("--polygon", help="a GeoJSON polygon (lon, lat): the mean of its chips")
    s.add_argument("--k", type=int, default=20, help="how many chips to return")
    s.add_argument(
        "--method",
        choices=["auto", "exact", "approximate"],
        default="auto",
        help="exact: every vector; approximate: a FAISS index built once beside the file; "
        "auto: exact up to 2,000,000 chips",
    )
    s.add_argument("--out", help="write the GeoJSON here (default: standard output)")


def add_suggest_parser(dsub) -> None:
    s = dsub.add_parser(
        "suggest",
        help="chips where labelling next helps most (uncertain for the latest fine-tune, spread "
        "out in its embedding space), as GeoJSON",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("name", help="dataset name or id")
    s.add_argument("--n", type=int, default=20, help="how many chips")
    s.add_argument("--model", help="the fine-tune to ask (default: the latest of this dataset)")
    s.add_argument("--chip-size", type=int, help="chip edge in px (default: the training patch)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    s.add_argument("--device", default="auto")
    s.add_argument("--out", help="write the GeoJSON here (default: standard output)")


def run_embed(args) -> int:
    if args.embed_cmd == "search":
        return run_search(args)
    from .embed import EmbedOptions, EncoderSource, embed_images, embed_scene, encoder_for_area

    if not args.out:
        raise UserError("say where the embeddings go: --out embeddings.parquet")
    source = EncoderSource(
        backbone=args.backbone,
        weights=args.weights,
        size=args.size,
        model=args.model,
        version=args.version,
        alias=args.alias,
        pool=args.pool,
    )
    opts = EmbedOptions(
        chip_size=args.chip_size,
        stride=args.stride,
        dtype=args.dtype,
        min_valid=args.min_valid,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        mask_clouds=args.mask_clouds,
    )
    if args.aoi:
        from datamodules.stac_cli import imagery_for_predict

        encoder = encoder_for_area(source, args.sensor, args.chip_size, _csv(args.bands))
        if not args.imagery_dir:
            args.imagery_dir = str(Path(args.out).with_suffix("")) + "-imagery"
        images, prov = imagery_for_predict(args, encoder.record)
        items = [i["id"] for i in prov["imagery"]["items"]]
        prov["source"] = f"{prov['imagery']['catalog']}: {', '.join(items)}"
        chip = args.chip_size or encoder.record["patch_size"]
        opts.chip_size = chip
        opts.mask_clouds = False  # the composite is cloud-masked already
        summary = embed_scene(
            encoder, images, args.out, sensor=args.sensor, options=opts, provenance=prov
        )
    else:
        if args.start or args.end:
            raise UserError("--start/--end fetch imagery for an --aoi; give --aoi aoi.geojson too")
        if not args.image:
            raise UserError(
                "give the scene (--image scene.tif) or an area and dates "
                "(--aoi aoi.geojson --start YYYY-MM-DD --end YYYY-MM-DD --sensor ID)"
            )
        summary = embed_images(
            source,
            args.image,
            args.out,
            bands=_csv(args.bands),
            sensor=args.sensor,
            dates=args.dates,
            options=opts,
        )
    from .inputs import describe

    skipped = summary["skipped"]
    print(
        f"{summary['chips']} chips embedded ({summary['dim']} values, {summary['pool']} pooled, "
        f"{summary['chip_size']} px chips every {summary['stride']} px, {summary['precision']}) "
        f"in {summary['seconds']} s → {args.out}"
    )
    if skipped:
        print(
            f"  {skipped} chips with less than {args.min_valid:.0%} of their pixels valid: skipped"
        )
    for line in describe(summary["input"]):
        print(f"  {line}")
    return 0


def run_search(args) -> int:
    import numpy as np

    from .search import EmbeddingIndex, SearchError

    idx = EmbeddingIndex(args.index)
    if args.near:
        try:
            lon, lat = (float(v) for v in args.near.split(","))
        except ValueError:
            raise SearchError(
                f"--near takes LON,LAT in degrees, e.g. 12.49,41.89; got {args.near!r}"
            ) from None
        q = idx.near(lon, lat)
    elif args.like is not None:
        q = idx.like(args.like)
    elif args.vector:
        try:
            v = np.load(args.vector, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SearchError(f"cannot read {args.vector} as a .npy array: {e}") from None
        q = idx.vector(v)
    else:
        try:
            geom = json.loads(Path(args.polygon).read_text())
        except (OSError, ValueError) as e:
            raise SearchError(f"cannot read {args.polygon} as GeoJSON: {e}") from None
        if geom.get("type") == "FeatureCollection":
            if len(geom.get("features", [])) != 1:
                raise SearchError(f"{args.polygon} must hold one polygon")
            geom = geom["features"][0]
        q = idx.polygon(geom)
    answer = idx.answer(q, args.k, args.method)
    _write(answer, args.out)
    return 0


def run_suggest(args) -> int:
    from .suggest import suggest

    answer = suggest(
        args.name,
        n=args.n,
        model=args.model,
        chip_size=args.chip_size,
        precision=args.precision,
        device=args.device,
    )
    _write(answer, args.out)
    return 0


def _write(answer: dict, out: str | None) -> None:
    text = json.dumps(answer)
    if out:
        Path(out).write_text(text)
        print(f"{len(answer['features'])} chips → {out}", file=sys.stderr)
    else:
        print(text)
