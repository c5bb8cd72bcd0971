"""``geotune serve`` (the HTTP API), ``geotune keys`` (its API keys) and ``geotune demo``. The
service is imported only when one of its commands runs: the training package does not import
it otherwise."""

from __future__ import annotations

from datamodules.options import HelpFormatter, Option, add_options

SERVE = (
    Option("dev", bool, False, "single user 'local', no API keys; 127.0.0.1 only"),
    Option(
        "host", default="127.0.0.1", help="address to listen on (without --dev, keys are required)"
    ),
    Option("port", int, 8000),
    Option("max_jobs", int, 1, "training jobs running at once; the rest queue"),
    Option("max_predict_jobs", int, 1, "asynchronous predictions running at once"),
    Option("max_upload_mb", float, 2048.0, "request body limit (413 above)"),
    Option("sync_pixels", int, 4_000_000, "larger predictions become jobs (202)"),
    Option("max_pixels", int, 400_000_000, "larger scenes are refused (422)"),
    Option("max_aoi_km2", float, 10_000.0, "larger AOIs are refused (422)"),
    Option("model_cache", int, 2, "models kept loaded for predictions"),
    Option(
        "public_url",
        help="the server's address as clients reach it (behind a proxy); links in answers "
        "start with it; without it they are relative (/v1/...)",
    ),
    Option(
        "max_queued_predictions",
        int,
        8,
        "synchronous predictions waiting for the model at once; more get 503 + Retry-After",
    ),
    Option("max_ingest_jobs", int, 1, "dataset uploads ingested at once"),
    Option(
        "ingest_timeout",
        float,
        3600.0,
        "an ingest job running longer is stopped and fails",
        metavar="SECONDS",
    ),
    Option("max_features", int, 200_000, "label features per uploaded file"),
    Option("max_vertices", int, 20_000_000, "label vertices per uploaded file"),
    Option("max_unpacked_mb", float, 1024.0, "a labels zip's size, unpacked"),
    Option(
        "job_memory_mb", int, 8192, "memory (address space) of the process that reads an upload"
    ),
    Option(
        "keep_predictions",
        float,
        168.0,
        metavar="HOURS",
        help="finished predictions (outputs and uploaded scenes) are deleted this long after "
        "they finish; 0 keeps them until deleted (DELETE /v1/predictions/ID)",
    ),
    Option(
        "basemap_url",
        metavar="TEMPLATE",
        help="an online basemap for the Lab (/lab) under the user's imagery, e.g. "
        "https://tile.openstreetmap.org/{z}/{x}/{y}.png; off by default: the Lab needs no "
        "internet",
    ),
    Option(
        "cluster",
        help="prediction jobs (the 202 ones) run on a Dask cluster: local:N (N worker "
        "processes started with the server) or tcp://HOST:8786; synchronous predictions "
        "stay in the server",
    ),
    Option("log_level", default="info", choices=("debug", "info", "warning", "error")),
)
DEMO = (
    Option("epochs", int, 12),
    Option("name", default="demo", help="dataset and registered model name"),
    Option("workdir", help="where labels and predictions go (default: $GEOTUNE_HOME/demo)"),
)


def add_serve_parsers(sub) -> None:
    """``serve``, ``keys`` and ``demo``."""
    dm = sub.add_parser(
        "demo",
        help="ingest, fine-tune, register, reload and predict a real Sentinel-2 sample",
        formatter_class=HelpFormatter,
    )
    add_options(dm, DEMO)
    sv = sub.add_parser(
        "serve",
        help="the HTTP API: datasets, fine-tune jobs, models, predictions (OpenAPI at /docs)",
        formatter_class=HelpFormatter,
    )
    add_options(sv, SERVE)
    k = sub.add_parser("keys", help="API keys for geotune serve: create, list, revoke")
    ksub = k.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    s = ksub.add_parser("create", help="a new key for an owner; printed once, stored hashed")
    s.add_argument("--owner", required=True, help="owner name: lower-case letters, digits, - and _")
    s.add_argument("--note", default=None, help="a note shown in `geotune keys list`")
    ksub.add_parser("list", help="key ids, owners, and whether they are revoked")
    s = ksub.add_parser("revoke", help="revoke a key by its id (takes effect at once)")
    s.add_argument("id", help="the key id (8 hex digits, shown by create and list)")


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
