"""``geotune serve`` and ``geotune keys``: the logic behind the two commands.

Imports stay light here (FastAPI/uvicorn only inside :func:`run_serve`) so that ``geotune keys``
and ``geotune --help`` start fast.
"""

from __future__ import annotations

import ipaddress
import re
import sys

from datamodules.errors import UserError

from .keys import KeyStore
from .settings import Settings, serve_dir


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_url(text: str | None) -> str:
    if not text:
        return ""
    if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", text):
        raise UserError(
            f"--public-url {text!r} is not an http(s) URL; give the address clients use, e.g. "
            "https://geo.example.org"
        )
    return text.rstrip("/")


def check_basemap(url: str) -> None:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if (
        u.scheme not in ("http", "https")
        or not u.hostname
        or not all(p in url for p in ("{z}", "{x}", "{y}"))
    ):
        raise UserError(
            f"--basemap-url {url!r} is not a tile URL template: give http(s)://host/.../{{z}}/{{x}}/{{y}}.png"
            " (an XYZ tile server's URL, with {z}, {x} and {y})"
        )


def settings_from(args) -> Settings:
    if args.dev and not is_loopback(args.host):
        raise UserError(
            f"--dev serves without API keys, so it listens only on 127.0.0.1, not {args.host}. "
            "To serve other machines, drop --dev and create keys: geotune keys create --owner NAME"
        )
    counts = (
        "max_jobs",
        "max_predict_jobs",
        "sync_pixels",
        "max_pixels",
        "model_cache",
        "max_ingest_jobs",
        "max_features",
        "max_vertices",
    )
    for flag in counts:
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("max_upload_mb", "max_aoi_km2", "ingest_timeout", "max_unpacked_mb"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive")
    if args.job_memory_mb < 512:
        raise UserError("--job-memory-mb must be at least 512")
    if args.keep_predictions < 0:
        raise UserError("--keep-predictions must be 0 (keep them) or a number of hours")
    basemap = getattr(args, "basemap_url", None)
    if basemap is not None:
        check_basemap(basemap)
    if args.cluster:
        from trainer.cluster import check_spec

        check_spec(args.cluster)
    return Settings(
        basemap_url=basemap,
        dev=args.dev,
        max_training_jobs=args.max_jobs,
        max_predict_jobs=args.max_predict_jobs,
        max_upload_mb=args.max_upload_mb,
        sync_pixels=args.sync_pixels,
        max_pixels=args.max_pixels,
        max_aoi_km2=args.max_aoi_km2,
        model_cache=args.model_cache,
        keep_predictions_hours=args.keep_predictions,
        max_ingest_jobs=args.max_ingest_jobs,
        ingest_timeout_s=args.ingest_timeout,
        max_features=args.max_features,
        max_vertices=args.max_vertices,
        max_unpacked_mb=args.max_unpacked_mb,
        job_memory_mb=args.job_memory_mb,
        max_queued_predictions=args.max_queued_predictions,
        public_url=public_url(args.public_url),
        cluster=args.cluster or "",
    )


def run_serve(args) -> int:
    import uvicorn

    from .app import create_app
    from .context import HomeLock

    settings = settings_from(args)
    if settings.cluster and not settings.cluster.startswith("local:"):
        from trainer.cluster import connect

        with connect(settings.cluster):  # a clear message now if the scheduler is not there
            pass
    serve_dir().mkdir(parents=True, exist_ok=True)
    probe = HomeLock(serve_dir())
    shared = not probe.alone
    probe.close()
    url = f"http://{args.host}:{args.port}"
    if settings.dev:
        mode = "dev mode: single user 'local', no API keys"
    else:
        n = KeyStore(serve_dir() / "keys.db").active_count()
        mode = f"API keys required ({n} active)"
        if n == 0:
            mode += "; none exist yet, so every request gets 401: geotune keys create --owner NAME"
    print(f"geotune serve: {url}  docs: {url}/docs  {mode}", flush=True)
    print(
        f"  training jobs at once: {settings.max_training_jobs}; synchronous predictions up to "
        f"{settings.sync_pixels:,} px; uploads up to {settings.max_upload_mb:g} MB; "
        f"state in {serve_dir()}",
        flush=True,
    )
    if shared:
        print(
            "  another geotune serve uses this GEOTUNE_HOME: the servers share its job queue "
            "(each job runs once, on one of them)",
            flush=True,
        )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def run_keys(args) -> int:
    store = KeyStore(serve_dir() / "keys.db")
    if args.keys_cmd == "create":
        key_id, key = store.create(args.owner, args.note or "")
        print(key, flush=True)  # the key alone on stdout: KEY=$(geotune keys create ...)
        print(
            f"key {key_id} for owner {args.owner!r}: shown once, stored hashed; send it as "
            f"'Authorization: Bearer <key>'. Revoke it with: geotune keys revoke {key_id}",
            file=sys.stderr,
        )
    elif args.keys_cmd == "list":
        rows = store.list()
        if not rows:
            print("no API keys yet: geotune keys create --owner NAME")
        for r in rows:
            state = f"revoked {r['revoked']}" if r["revoked"] else "active"
            print(f"{r['id']}  {r['owner']:32s} created {r['created']}  {state}  {r['note'] or ''}")
    elif args.keys_cmd == "revoke":
        r = store.revoke(args.id)
        word = "was already revoked" if r["already_revoked"] else "revoked"
        print(f"key {r['id']} of owner {r['owner']!r} {word}")
    return 0
