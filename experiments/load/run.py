"""Load on a real `geotune serve`: concurrent synchronous predictions, health latency while they
run, and the server's peak memory. Bounded and loopback only: the script makes its own
GEOTUNE_HOME, dataset and tiny model, starts the server on 127.0.0.1 and stops it at the end.

For each level of concurrency (1, 4, 20, 45 clients at once, each sending one 256² scene;
``--levels``, ``--side`` and ``--each``, requests per client one after another, change them), it
records: answers by status (200; 503 busy with Retry-After once the lane's queue is full), the
latency of the answered predictions (p50, p95), throughput in megapixels per second of answered
predictions over the wall time of the level (and its ratio to one client's), /healthz and /readyz latency sampled while the
predictions run (p50, max), and the server's peak RSS (VmHWM from /proc, the server process alone;
ingest and prediction jobs are other processes).

    .venv/bin/python experiments/load/run.py --write      # a few minutes on 2 cores

The figures go to results.json and results.md beside this file (with --write).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GEOTUNE = [sys.executable, "-m", "trainer.cli"]
LEVELS = (1, 4, 20, 45)
SIDE = 256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(tmp: Path, env: dict, side: int) -> Path:
    """A dataset from the shipped sample (demo labels) and a tiny fine-tuned model 'load'."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synth import make_labels, make_scene

    image, cmap = make_scene(tmp, size=max(512, side), seed=1)
    labels = make_labels(tmp, image, cmap)
    run = lambda *a: subprocess.run([*GEOTUNE, *a], env=env, check=True, capture_output=True)  # noqa: E731
    run("data", "add", "--name", "load", "--image", str(image), "--labels", str(labels),
        "--class-column", "class_name", "--block-size", "64")  # fmt: skip
    run("train", "data.dataset=load", "backbone.size=tiny", "backbone.weights=random",
        "data.patch_size=64", "data.num_workers=0", "data.chips_per_epoch=32",
        "trainer.max_epochs=1", "register.name=load", "register.alias=champion")  # fmt: skip
    import rasterio

    small = tmp / "small.tif"
    with rasterio.open(image) as src:
        prof = src.profile | {"width": side, "height": side}
        with rasterio.open(small, "w", **prof) as dst:
            dst.write(src.read(window=((0, side), (0, side))))
    return small


def level(url: str, scene: bytes, n: int, side: int, each: int = 1) -> dict:
    answers: list[tuple[int, float]] = []
    health: list[float] = []
    lock = threading.Lock()

    def client():
        with httpx.Client(timeout=600) as c:
            for _ in range(each):  # one request after the other
                t0 = time.perf_counter()
                r = c.post(f"{url}/v1/models/load/predict", files={"image": ("s.tif", scene)})
                with lock:
                    answers.append((r.status_code, time.perf_counter() - t0))

    threads = [threading.Thread(target=client) for _ in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    with httpx.Client(timeout=120) as c:
        while any(t.is_alive() for t in threads):
            t0 = time.perf_counter()
            c.get(f"{url}/healthz").raise_for_status()
            c.get(f"{url}/readyz").raise_for_status()
            health.append(time.perf_counter() - t0)
            time.sleep(0.2)
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = sorted(s for code, s in answers if code == 200)
    codes = {str(k): sum(1 for c, _ in answers if c == k) for k in sorted({c for c, _ in answers})}
    q = statistics.quantiles(ok, n=20) if len(ok) > 1 else ok * 19
    return {
        "clients": n,
        "requests_per_client": each,
        "answers": codes,
        "latency_p50_s": round(statistics.median(ok), 3) if ok else None,
        "latency_p95_s": round(q[18], 3) if ok else None,
        "throughput_mpx_s": round(len(ok) * side * side / 1e6 / wall, 3),
        "health_p50_s": round(statistics.median(health), 4) if health else None,
        "health_max_s": round(max(health), 4) if health else None,
        "health_samples": len(health),
        "wall_s": round(wall, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="record results.json and results.md")
    ap.add_argument("--queue", type=int, default=8, help="--max-queued-predictions of the server")
    ap.add_argument("--side", type=int, default=SIDE, help="edge of the scenes sent, in pixels")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="clients at once")
    ap.add_argument("--each", type=int, default=1, help="requests per client, one after another")
    args = ap.parse_args()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="geotune-load-"))
    env = dict(os.environ, GEOTUNE_HOME=str(tmp / "home"), PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    side, levels = args.side, [int(n) for n in args.levels.split(",")]
    scene = prepare(tmp, env, side).read_bytes()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 (open for the server's lifetime)
    srv = subprocess.Popen(
        [*GEOTUNE, "serve", "--dev", "--port", str(port), "--max-queued-predictions",
         str(args.queue)], env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.time() > deadline:
                    raise
            time.sleep(0.3)
        baseline = vm(srv.pid, "VmRSS")
        warm = level(url, scene, 1, side)  # the first prediction imports torch and loads the model
        print("warm-up", json.dumps(warm), flush=True)
        rows = []
        for n in levels:
            row = level(url, scene, n, side, args.each) | {
                "server_peak_rss_mb": round(vm(srv.pid, "VmHWM"))
            }
            row["vs_one_client"] = (
                round(row["throughput_mpx_s"] / rows[0]["throughput_mpx_s"], 3) if rows else 1.0
            )
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=60)
    result = {
        "recorded": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "scene_px": side * side,
        "lanes": len(os.sched_getaffinity(0)),
        "max_queued_predictions": args.queue,
        "each": args.each,
        "server_rss_after_start_mb": round(baseline),
        "first_prediction": warm,
        "load_average_before": load_before,
        "levels": rows,
    }
    if args.write:
        (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (HERE / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [
        "# Load on `geotune serve`: concurrent synchronous predictions",
        "",
        f"Recorded {r['recorded']} on {r['machine']} by `experiments/load/run.py --write` (one "
        f"run; {r['scene_px']:,}-pixel scenes, {r.get('each', 1)} request(s) per client one "
        "after another, a tiny ResNet model, `--max-queued-predictions "
        f"{r['max_queued_predictions']}`). The server's RSS after start: "
        f"{r['server_rss_after_start_mb']} MB. The first prediction (importing torch, loading the "
        f"model) took {r['first_prediction']['latency_p50_s']} s, health checks meanwhile at most "
        f"{r['first_prediction']['health_max_s']} s; the levels below ran after it. Load average "
        f"before the run: {', '.join(f'{x:.1f}' for x in r['load_average_before'])}.",
        "",
        "| clients | answers | p50 / p95 latency (s) | Mpx/s | vs 1 client | health p50 / max (s) | server peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["levels"]:
        answers = ", ".join(f"{k}: {v}" for k, v in x["answers"].items())
        lines.append(
            f"| {x['clients']} | {answers} | {x['latency_p50_s']} / {x['latency_p95_s']} | "
            f"{x['throughput_mpx_s']} | {x.get('vs_one_client', '-')} | {x['health_p50_s']} / {x['health_max_s']} | "
            f"{x['server_peak_rss_mb']} |"
        )
    lines += [
        "",
        f"Synchronous predictions run {r.get('lanes', 1)} at a time in the server (one lane per "
        "core; their forward passes go one at a time through the one loaded model of a "
        "version, while reading, writing and polygons of the others run beside them); up to "
        "`--max-queued-predictions` wait for a lane, and any more are answered at once with 503 "
        "and `Retry-After` instead of waiting in the server's worker threads. So the server's "
        "memory is bounded by one running prediction per lane plus the queued uploads, whatever "
        "the number of clients, and health checks answer while predictions run.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
