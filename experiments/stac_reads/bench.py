"""How much of a remote COG does an AOI read fetch? (datamodules.cog_read.read_to_grid)

Writes a COG the size of a Sentinel-2 20 m band (5490 x 5490 uint16, 512 px tiles, DEFLATE;
noise, so tiles compress as poorly as real data), serves it over loopback HTTP with range requests
(Starlette's FileResponse under uvicorn) and reads square AOIs of 1, 5 and 20 km at 10 m through
the same function composites use. It reports, measured in this one run, the bytes the server
sent as a share of the file, the requests, and the time next to reading the whole band.

    .venv/bin/python experiments/stac_reads/bench.py      # → experiments/stac_reads/results.md
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.cache
import uvicorn
from rasterio.shutil import copy
from rasterio.transform import from_origin
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from datamodules.cog_read import ReadOptions, read_to_grid
from datamodules.stac_access import Access

ORIGIN = (300_000.0, 4_300_000.0)
CRS = rasterio.crs.CRS.from_epsg(32633)


def write_band(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    data = rng.normal(2000, 300, (5490, 5490)).clip(1, 20000).astype(np.uint16)
    tmp, out = folder / "tmp.tif", folder / "B11.tif"
    profile = dict(driver="GTiff", width=5490, height=5490, count=1, dtype="uint16", crs=CRS,
                   transform=from_origin(*ORIGIN, 20, 20), nodata=0)  # fmt: skip
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)
    copy(tmp, out, driver="COG", blocksize=512, compress="DEFLATE")
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        path = write_band(folder)
        size = path.stat().st_size
        log: list[str] = []
        files = StaticFiles(directory=folder)

        async def logged(scope, receive, send):
            log.append(dict(scope["headers"]).get(b"range", b"").decode())
            await files(scope, receive, send)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Mount("/", app=logged)]),
                                               host="127.0.0.1", port=port, log_level="warning"))  # fmt: skip
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}/{path.name}"
        rows = []
        t0 = time.perf_counter()
        with rasterio.Env(**ReadOptions().gdal_env()), rasterio.open(url) as src:
            src.read(1)
        whole = time.perf_counter() - t0
        for km in (1, 5, 20):
            rasterio.cache.invalidate_all()
            log.clear()
            n = km * 100  # px at 10 m
            t0 = time.perf_counter()
            read_to_grid(
                Access(url), from_origin(ORIGIN[0] + 30_000, ORIGIN[1] - 30_000, 10, 10), CRS,
                (n, n), kind="band", options=ReadOptions(),
            )  # fmt: skip
            dt = time.perf_counter() - t0
            hit = np.zeros(size, dtype=bool)
            for r in filter(None, log):
                for part in r.removeprefix("bytes=").split(","):
                    a, b = part.split("-")
                    hit[int(a) : int(b) + 1] = True
            rows.append((km, hit.sum() / 1e6, hit.sum() / size, len(log), dt, dt / whole))
        server.should_exit = True
    lines = [
        "# Windowed AOI reads of a remote COG (datamodules.cog_read)",
        "",
        f"One 20 m Sentinel-2-sized band, 5490 x 5490 uint16, 512 px tiles: {size / 1e6:.1f} MB, "
        f"served over loopback HTTP. Reading it whole took {whole:.2f} s.",
        "",
        "| AOI | bytes sent | share of the file | requests | time | time / whole read |",
        "|---|---|---|---|---|---|",
        *[
            f"| {km} x {km} km | {mb:.2f} MB | {share:.1%} | {req} | {dt:.2f} s | {ratio:.2f} |"
            for km, mb, share, req, dt, ratio in rows
        ],  # fmt: skip
        "",
        "Measured with `.venv/bin/python experiments/stac_reads/bench.py` (2 CPU cores).",
    ]
    out = Path(__file__).with_name("results.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
