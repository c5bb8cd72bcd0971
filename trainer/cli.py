"""The ``geotune`` command. One dispatcher; every subcommand imports what it needs lazily, so
``geotune --help`` and ``geotune data ...`` never import lightning, timm or torchgeo.models.

``geotune train`` / ``geotune benchmark`` hand their arguments to Hydra unchanged, and keep
``sys.argv`` intact: Lightning's DDP launcher re-executes the command line for every rank.
"""

from __future__ import annotations

import argparse
import sys

from datamodules.errors import UserError
from datamodules.options import csv_list as _csv

from .console import plain_warnings

DESCRIPTION = """geotune: fine-tune Clay, Prithvi-EO and ResNet on your labels, track and register
models in MLflow, predict scenes to COGs and polygons, serve models over HTTP.

  geotune demo                                   the whole path on a real Sentinel-2 sample
  geotune data add --name NAME --image scene.tif --labels labels.geojson --class-column class
  geotune train data.dataset=NAME backbone=resnet18 trainer.max_epochs=5 register.name=NAME
  geotune benchmark data.dataset=NAME 'backbones=[resnet18,prithvi_eo_v2_300,clay_v1_5]' backbone.size=tiny
  geotune predict --model NAME@champion --image scene.tif --out results/
  geotune predict --model NAME@champion --aoi aoi.geojson --start 2024-05-01 --end 2024-08-31 --out results/
  geotune embed --backbone clay_v1_5 --sensor sentinel-2-l2a --image scene.tif --out embeddings.parquet
  geotune embed search --index embeddings.parquet --near LON,LAT --k 20
  geotune models list
"""


# -- data -----------------------------------------------------------------------------------------
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


# -- hydra apps -----------------------------------------------------------------------------------
def run_hydra(config_name: str, task) -> int:
    """Run ``task(cfg)`` as a Hydra app on the arguments after the subcommand.

    An error in the user's data, config or overrides is one line ``error: ...`` on stderr and
    exit code 2, no traceback (``--verbose`` or ``HYDRA_FULL_ERROR=1`` prints it too); other
    errors keep their traceback."""
    import os

    import hydra

    from .config import CONFIG_PATH, register_resolvers

    register_resolvers()
    original = list(sys.argv)
    args = [a for a in original[2:] if a != "--verbose"]
    verbose = len(args) < len(original) - 2 or os.environ.get("HYDRA_FULL_ERROR") == "1"
    status = {"code": 0}

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
    def _app(cfg):
        sys.argv = original  # Lightning's DDP launcher re-executes this exact command line
        try:
            task(cfg)
        except Exception as e:
            if not report_error(e, original[1], verbose):
                raise
            status["code"] = 2

    sys.argv = [original[0], *args]
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing: reported below
    try:
        _app()
    except Exception as e:
        if not report_error(e, original[1], verbose):
            raise
        status["code"] = 2
    finally:
        sys.argv = original
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return status["code"]


def report_error(e: BaseException, command: str, verbose: bool) -> bool:
    """Print ``error: <message>`` for an error of the user's data or config; False if ``e`` is
    not one (a bug: its traceback is the report)."""
    from .config import config_error

    user = _user_error(e)
    message = str(user) if user is not None else config_error(e, command)
    if message is None:
        return False
    if verbose:
        import traceback

        traceback.print_exception(e)
    print(f"error: {message}", file=sys.stderr)
    return True


def _user_error(e: BaseException | None) -> UserError | None:
    """The user error behind ``e``, also when Hydra's instantiate or Lightning wrapped it."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, UserError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _benchmark_and_report(cfg) -> None:
    from .benchmark import benchmark, print_summary

    print_summary(benchmark(cfg))


def _train_and_report(cfg) -> None:
    from .train import train

    result = train(cfg)
    if result.get("global_rank", 0) == 0:  # DDP: the other ranks' processes stay quiet
        print_result(result)


def print_result(result: dict) -> None:
    test = result.get("test", {})
    keys = [k for k in test if k.count("/") == 1] + sorted(
        k for k in test if k.startswith("test/IoU/")
    )
    width = max((len(k) for k in keys), default=10)
    if keys:
        print("\n" + "metric".ljust(width) + "   value")
    for k in keys:
        print(f"{k.ljust(width)}   {test[k]:.4f}")
    note = result.get("evaluation", {}).get("note")
    if note:
        print(f"\n{note}")
    print(f"\nMLflow run: {result['run_id']}")
    if result.get("model_version"):
        print(f"registered: {result['registered_name']} version {result['model_version']}")
    elif result.get("model_uri"):
        print(f"model: {result['model_uri']} (not registered: add register.name=NAME)")


# -- predict --------------------------------------------------------------------------------------
def cmd_predict(args) -> int:
    from .cluster import check_spec, connect_or_none
    from .predict import PredictOptions, predict_scene
    from .registry import load_model

    if args.cluster:
        check_spec(args.cluster)

    model = load_model(args.model, version=args.version, alias=args.alias)
    from datamodules.stac_cli import imagery_for_predict  # --aoi: imagery by area and dates

    opts = PredictOptions(
        chip_size=args.chip_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        tile_size=args.tile_size,
        precision=args.precision,
        device=args.device,
        polygons=not args.no_polygons,
        min_area_m2=args.min_area,
        simplify=args.simplify,
        sieve_pixels=args.sieve,
        confidence_threshold=args.confidence_threshold,
        threads=args.threads,
    )
    with connect_or_none(args.cluster) as cluster:
        images, provenance = imagery_for_predict(args, model.record, cluster)
        summary = predict_scene(
            model,
            images,
            args.out,
            bands=_csv(args.bands),
            sensor=args.sensor,
            dates=None if args.aoi else args.date,
            options=opts,
            provenance=provenance,
            cluster=cluster,
        )
    what = f" in {summary['n_chips']} chips" if "n_chips" in summary else ""
    print(f"{summary['n_pixels']} pixels predicted{what} in {summary['seconds']} s → {args.out}")
    from .inputs import describe

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
        print(f"  {k}: {args.out}/{v}")
    return 0


# -- models ---------------------------------------------------------------------------------------
VERSION_COLUMNS = (
    "model",
    "version",
    "aliases",
    "task",
    "backbone",
    "dataset",
    "test/mIoU",
    "created",
)


def _version_cells(name: str, row: dict) -> list[str]:
    miou = row["metrics"].get("test/mIoU")
    return [
        name,
        str(row["version"]),
        ",".join(row["aliases"]) or "-",
        row["task"] or "-",
        row["backbone"] or "-",
        row["dataset_id"] or "-",
        "-" if miou is None else f"{miou:.4f}",
        row["created"] or "-",
    ]


def _table(header, rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def _model_or_explain(client, name: str):
    from .models import ModelNotFoundError, find, names, not_found_message

    rm = find(client, name)
    if rm is None:
        hint = "Train one with: geotune train ... register.name=NAME"
        raise ModelNotFoundError(not_found_message(name, names(client), hint))
    return rm


def cmd_models(args) -> int:
    import json

    from . import models
    from .registry import setup_mlflow

    client = setup_mlflow()
    if args.models_cmd == "list":
        found = models.list_models(client)
        if args.json:
            print(json.dumps(found, indent=2))
        elif not found:
            print("no registered models yet: geotune train ... register.name=NAME")
        else:
            rows = [_version_cells(m["registered_name"], r) for m in found for r in m["versions"]]
            print(_table(VERSION_COLUMNS, rows))
    elif args.models_cmd == "show":
        info = models.detail(client, _model_or_explain(client, args.name))
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        norm = info["normalization"]
        print(
            f"{info['registered_name']}: {info['task']} with {info['backbone']} "
            f"(described: version {info['described_version']})"
        )
        print(
            f"  sensor {info['sensor']}, bands {','.join(info['bands'])}, "
            f"resolution {info['resolution']}"
        )
        print(f"  classes {', '.join(c['name'] for c in info['classes'])}")
        print(f"  normalisation: {norm.get('source')} ({norm.get('conversion')})\n")
        rows = [_version_cells(info["registered_name"], r) for r in info["versions"]]
        print(_table(VERSION_COLUMNS, rows))
        for r in info["versions"]:
            test = {
                k: v for k, v in r["metrics"].items() if k.startswith("test/") and k.count("/") == 1
            }
            if test:
                print(f"  v{r['version']} " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
    elif args.models_cmd == "alias":
        models.set_alias(client, _model_or_explain(client, args.name), args.alias, args.version)
        print(f"{args.name}@{args.alias} → version {args.version}")
    return 0


# -- backbones ------------------------------------------------------------------------------------
def cmd_backbones(args) -> int:
    from datamodules.paths import weights_dir

    from .backbones import weights_status

    if args.backbones_cmd == "list":
        print(f"weights directory: {weights_dir()}  (GEOTUNE_WEIGHTS_DIR)")
        for r in weights_status():
            mark = "present" if r["present"] else "absent"
            print(
                f"{r['name']:22s} sizes {','.join(r['sizes']):18s} {r['weights_file']:44s} {mark:8s} {r['description']}"
            )
    elif args.backbones_cmd == "extract":
        from .backbones.checkpoints import extract

        out = extract(args.name, args.checkpoint, args.out)
        print(f"encoder weights of {args.name} written to {out}")
    return 0


def cmd_embed(args) -> int:
    from .embed_cli import run_embed

    return run_embed(args)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(epochs=args.epochs, workdir=args.workdir, name=args.name)
    return 0


def cmd_serve(args) -> int:
    from serve.cli import run_serve

    return run_serve(args)


def cmd_keys(args) -> int:
    from serve.cli import run_keys

    return run_keys(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geotune",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    d = sub.add_parser("data", help="add, list, show and delete datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    a = dsub.add_parser(
        "add",
        help="ingest imagery + labels into a dataset folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a.add_argument("--name", required=True, help="dataset name (its id is the name's slug)")
    a.add_argument(
        "--image",
        action="append",
        default=None,
        help="GeoTIFF/COG; repeat for band files of one scene, or one multi-band file per date "
        "(or fetch imagery for the labels' extent: --start, --end, --sensor)",
    )
    a.add_argument(
        "--labels",
        required=True,
        help="polygons (GeoJSON, GPKG, zipped Shapefile, GeoParquet, FlatGeobuf) or a mask raster",
    )
    a.add_argument(
        "--class-column", default=None, help="the labels' class column (default: 'class')"
    )
    a.add_argument(
        "--sensor",
        default=None,
        help="sensor id: sentinel-2-l1c, sentinel-2-l2a, landsat-c2-l1, landsat-c2-l2, hls, sentinel-1-rtc, naip, rgb",
    )
    a.add_argument(
        "--bands", default=None, help="band names in file order, e.g. blue,green,red,nir08"
    )
    a.add_argument(
        "--date",
        action="append",
        default=None,
        help="acquisition date (YYYY-MM-DD) per scene, when the files do not say",
    )
    a.add_argument("--classes", default=None, help="class table JSON: [{id, name, color, value}]")
    a.add_argument(
        "--ignore-values", default=None, help="mask values that mean 'unlabelled' (comma-separated)"
    )
    a.add_argument(
        "--block-size", type=int, default=256, help="edge of the spatial split blocks, in pixels"
    )
    a.add_argument(
        "--split-fractions", default=None, help="train,val,test shares (default 0.7,0.15,0.15)"
    )
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--min-class-pixels",
        type=int,
        default=20,
        help="labelled pixels a class needs in val or test to count there (a held-out metric for it)",
    )
    a.add_argument(
        "--task",
        default="segmentation",
        choices=["segmentation", "classification", "change"],
        help="change: two --image dates + change polygons; classification: points/polygons, one chip each",
    )
    a.add_argument(
        "--chip-size", type=int, default=None, help="classification chip edge in px (default 64)"
    )
    a.add_argument(
        "--multi-label",
        action="store_true",
        help="classification: the class column holds ';'-separated class names",
    )
    a.add_argument(
        "--background",
        default=None,
        help="class name given to every valid unlabelled pixel (segmentation, change)",
    )
    a.add_argument(
        "--split-column",
        default=None,
        help="the labels' column of train/val/test per label, instead of spatial block splits",
    )
    a.add_argument(
        "--labels-after",
        default=None,
        help="change: class polygons of the second date (--labels: of the first); the change "
        "labels are derived where both dates are labelled",
    )
    a.add_argument(
        "--change-classes",
        choices=["binary", "transitions"],
        default="binary",
        help="with --labels-after: no_change/change, or one class per transition (forest→cropland)",
    )
    from datamodules.stac_cli import add_arguments as stac_arguments

    stac_arguments(a, aoi=False)
    dsub.add_parser("list", help="list datasets")
    s = dsub.add_parser("show", help="classes, counts, bands, CRS and splits of a dataset")
    s.add_argument("id")
    s.add_argument("--json", action="store_true", help="print the whole manifest")
    s = dsub.add_parser("delete", help="delete a dataset")
    s.add_argument("id")
    from .embed_cli import add_embed_parser, add_suggest_parser

    add_suggest_parser(dsub)

    sub.add_parser(
        "train",
        help="fine-tune (a Hydra app: geotune train --help shows the config groups)",
        add_help=False,
    )
    sub.add_parser(
        "benchmark",
        help="backbones x label budgets x seeds on one dataset → experiments/<name>/ (a Hydra app)",
        add_help=False,
    )

    pr = sub.add_parser(
        "predict",
        help="predict a scene → class COG, confidence COG, polygons, areas",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pr.add_argument(
        "--model", required=True, help="NAME@ALIAS, NAME with --version, or a models:/ URI"
    )
    pr.add_argument("--version", default=None, help="model version number")
    pr.add_argument("--alias", default=None, help="model alias (same as NAME@ALIAS)")
    pr.add_argument(
        "--image",
        action="append",
        default=None,
        help="GeoTIFF/COG (repeat for band files, or dates); or --aoi with --start, --end",
    )
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--bands", default=None, help="band names in file order when the file has none")
    pr.add_argument("--sensor", default=None, help="sensor id, to name bands from the sensor table")
    pr.add_argument(
        "--date",
        action="append",
        default=None,
        help="acquisition date (YYYY-MM-DD) per --image date, when the files do not say",
    )
    pr.add_argument(
        "--chip-size",
        type=int,
        default=None,
        help="chip edge in px (default: CNNs: chips of at most 512 px fitted to the scene; "
        "ViTs: the training patch)",
    )
    pr.add_argument(
        "--overlap", type=int, default=None, help="chip overlap in px (default: the model's)"
    )
    pr.add_argument(
        "--batch-size", type=int, default=None, help="chips per forward pass (default: ~512² px)"
    )
    pr.add_argument(
        "--tile-size", type=int, default=1024, help="output tile edge in px; bounds memory"
    )
    pr.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="forward pass precision; auto: bfloat16 where the CPU computes it natively "
        "(about 2x faster, >99.9%% of pixels in the same class as float32), else float32",
    )
    pr.add_argument(
        "--device",
        default="auto",
        help="where the model runs: auto (the first CUDA GPU torch sees, else the CPU), cpu, "
        "cuda, cuda:N",
    )
    pr.add_argument(
        "--min-area", type=float, default=0.0, help="drop polygons smaller than this (m²)"
    )
    pr.add_argument(
        "--simplify", type=float, default=0.0, help="polygon simplification tolerance (CRS units)"
    )
    pr.add_argument(
        "--sieve", type=int, default=0, help="remove class patches smaller than this many pixels"
    )
    pr.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="pixels below this confidence (0..1) become nodata",
    )
    pr.add_argument("--no-polygons", action="store_true", help="skip the GeoJSON polygons")
    pr.add_argument(
        "--cluster",
        default=None,
        help="predict on a Dask cluster, in strips of tile rows: local:N (N worker processes "
        "here) or tcp://HOST:8786 (needs geotune[cluster]); the files are the same",
    )
    pr.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per forward pass (default: all cores; on a cluster, each "
        "worker's share); runs with the same count give bit-identical files",
    )
    stac_arguments(pr, aoi=True)

    add_embed_parser(sub)

    m = sub.add_parser("models", help="registered models: list, show, alias")
    msub = m.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    s = msub.add_parser(
        "list", help="every version of every registered model: aliases, task, backbone, ..."
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = msub.add_parser("show", help="a model: what it predicts, its versions and test metrics")
    s.add_argument("name")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = msub.add_parser(
        "alias", help="point an alias at a version: geotune models alias NAME champion 3"
    )
    s.add_argument("name")
    s.add_argument("alias")
    s.add_argument("version", type=int)

    b = sub.add_parser("backbones", help="list backbones and weights; extract encoder weights")
    bsub = b.add_subparsers(dest="backbones_cmd", required=True, metavar="ACTION")
    bsub.add_parser(
        "list", help="every backbone, its sizes, and whether its official weights file is present"
    )
    s = bsub.add_parser("extract", help="write the encoder-only weights of an official checkpoint")
    s.add_argument("name", help="backbone name, e.g. clay_v1_5")
    s.add_argument("checkpoint", help="the official file")
    s.add_argument("out", help="output .pt file")

    dm = sub.add_parser(
        "demo",
        help="ingest, fine-tune, register, reload and predict a real Sentinel-2 sample",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    dm.add_argument("--epochs", type=int, default=12)
    dm.add_argument("--name", default="demo", help="dataset and registered model name")
    dm.add_argument(
        "--workdir",
        default=None,
        help="where labels and predictions go (default: $GEOTUNE_HOME/demo)",
    )

    sv = sub.add_parser(
        "serve",
        help="the HTTP API: datasets, fine-tune jobs, models, predictions (OpenAPI at /docs)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sv.add_argument(
        "--dev", action="store_true", help="single user 'local', no API keys; 127.0.0.1 only"
    )
    sv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (without --dev, keys are required)",
    )
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument(
        "--max-jobs", type=int, default=1, help="training jobs running at once; the rest queue"
    )
    sv.add_argument(
        "--max-predict-jobs", type=int, default=1, help="asynchronous predictions running at once"
    )
    sv.add_argument(
        "--max-upload-mb", type=float, default=2048.0, help="request body limit (413 above)"
    )
    sv.add_argument(
        "--sync-pixels", type=int, default=4_000_000, help="larger predictions become jobs (202)"
    )
    sv.add_argument(
        "--max-pixels", type=int, default=400_000_000, help="larger scenes are refused (422)"
    )
    sv.add_argument(
        "--max-aoi-km2", type=float, default=10_000.0, help="larger AOIs are refused (422)"
    )
    sv.add_argument("--model-cache", type=int, default=2, help="models kept loaded for predictions")
    sv.add_argument(
        "--public-url",
        default=None,
        help="the server's address as clients reach it (behind a proxy); links in answers start "
        "with it; without it they are relative (/v1/...)",
    )
    sv.add_argument(
        "--max-queued-predictions",
        type=int,
        default=8,
        help="synchronous predictions waiting for the model at once; more get 503 + Retry-After",
    )
    sv.add_argument(
        "--max-ingest-jobs", type=int, default=1, help="dataset uploads ingested at once"
    )
    sv.add_argument(
        "--ingest-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="an ingest job running longer is stopped and fails",
    )
    sv.add_argument(
        "--max-features", type=int, default=200_000, help="label features per uploaded file"
    )
    sv.add_argument(
        "--max-vertices", type=int, default=20_000_000, help="label vertices per uploaded file"
    )
    sv.add_argument(
        "--max-unpacked-mb", type=float, default=1024.0, help="a labels zip's size, unpacked"
    )
    sv.add_argument(
        "--job-memory-mb",
        type=int,
        default=8192,
        help="memory (address space) of the process that reads an upload",
    )
    sv.add_argument(
        "--keep-predictions",
        type=float,
        default=168.0,
        metavar="HOURS",
        help="finished predictions (outputs and uploaded scenes) are deleted this long after "
        "they finish; 0 keeps them until deleted (DELETE /v1/predictions/ID)",
    )
    sv.add_argument(
        "--basemap-url",
        default=None,
        metavar="TEMPLATE",
        help="an online basemap for the Lab (/lab) under the user's imagery, e.g. "
        "https://tile.openstreetmap.org/{z}/{x}/{y}.png; off by default: the Lab needs no internet",
    )
    sv.add_argument(
        "--cluster",
        default=None,
        help="prediction jobs (the 202 ones) run on a Dask cluster: local:N (N worker processes "
        "started with the server) or tcp://HOST:8786; synchronous predictions stay in the server",
    )
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    k = sub.add_parser("keys", help="API keys for geotune serve: create, list, revoke")
    ksub = k.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    s = ksub.add_parser("create", help="a new key for an owner; printed once, stored hashed")
    s.add_argument("--owner", required=True, help="owner name: lower-case letters, digits, - and _")
    s.add_argument("--note", default=None, help="a note shown in `geotune keys list`")
    ksub.add_parser("list", help="key ids, owners, and whether they are revoked")
    s = ksub.add_parser("revoke", help="revoke a key by its id (takes effect at once)")
    s.add_argument("id", help="the key id (8 hex digits, shown by create and list)")
    return p


HYDRA_COMMANDS = {
    "train": ("train", "_train_and_report"),
    "benchmark": ("benchmark", "_benchmark_and_report"),
}


def main(argv: list[str] | None = None) -> int:
    plain_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HYDRA_COMMANDS:
        config_name, fn = HYDRA_COMMANDS[argv[0]]
        sys.argv = [sys.argv[0], *argv]
        return run_hydra(config_name, globals()[fn])
    args = build_parser().parse_args(argv)
    handlers = {
        "data": cmd_data,
        "predict": cmd_predict,
        "embed": cmd_embed,
        "models": cmd_models,
        "backbones": cmd_backbones,
        "demo": cmd_demo,
        "serve": cmd_serve,
        "keys": cmd_keys,
    }
    try:
        return handlers[args.cmd](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # MLflow's "not found" errors are user errors too
        from mlflow.exceptions import MlflowException

        if isinstance(e, MlflowException):
            print(f"error: {e.message}", file=sys.stderr)
            return 2
        raise


# commands that leave nothing running or buffered once ``main`` returns (no MLflow run, no
# worker processes): they exit without tearing the interpreter down
FAST_EXIT = {"predict", "embed", "models", "data", "backbones", "keys"}


def entry() -> None:
    """The ``geotune`` command: :func:`main`, then exit. Tearing down an interpreter that has
    loaded torch, torchvision and MLflow takes about 2 s here (measured: 7.9 s → 5.3 s for a
    small ``geotune predict``) and frees nothing a finished process needs, so the commands in
    ``FAST_EXIT`` flush their output and leave at once; the others exit normally."""
    argv = sys.argv[1:]
    code = main(argv)
    if argv and argv[0] in FAST_EXIT:
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
