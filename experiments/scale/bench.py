"""Prediction in one process against a Dask ``local:2`` cluster, measured in one run (issue 18).

Model and scene as ``experiments/perf``: the full-size ResNet-18 UNet fine-tuned 3 epochs on the
packaged Sentinel-2 sample (``perf@champion`` in a private store), and an 8000 x 8000 px 6-band
COG mirror-tiled from that sample. Same model, same options (defaults: precision ``auto``,
chips fitted to the scene, 1024-px tiles) for every run.

1. ``geotune predict`` in one process (a fresh child): wall time, ``predict_scene`` time, peak
   RSS.
2. ``geotune predict --cluster local:2`` (a fresh child; its two workers are its children):
   the same, plus per worker peak RSS and the cluster section of the summary (strips, worker
   seconds, time the driver waited for strips).
3. The outputs of 1 and 2 compared: bytes of both COGs and the polygons, differing pixels.
4. Where the time goes, in this process on the same scene (times of threads that overlap,
   so they add up to more than the wall time): reading every tile, the forward passes,
   polygons, COG copies; and the chips the strips of 2 ran twice (their seams).

    .venv/bin/python experiments/scale/bench.py --write    # → experiments/scale/results.*
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent
SIDE = 8000


def perf_bench():
    """experiments/perf/bench.py as a module: its scene maker and model trainer."""
    spec = importlib.util.spec_from_file_location("perf_bench", ROOT / "experiments/perf/bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_cli(scene: Path, out: Path, env: dict, *extra: str) -> dict:
    """``geotune predict`` in a fresh process: wall time, peak RSS of it and its children."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(VENV_BIN / "geotune"), "predict", "--model", "perf@champion", "--image",
           str(scene), "--out", str(out), *extra]  # fmt: skip
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", perf_bench().LAUNCHER, *cmd], env=env,
                       capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"geotune predict failed:\n{r.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "command": " ".join(["geotune", *cmd[1:]]), "wall_s": round(wall, 2),
        "predict_scene_s": summary["seconds"],
        "peak_rss_mb": round(int(r.stdout.strip().splitlines()[-1]) / 1024, 1),
        "n_pixels": summary["n_pixels"], "chip": summary["options"]["chip"],
        "threads": summary["options"]["threads"], "cluster": summary.get("cluster"),
    }  # fmt: skip


def compare(a: Path, b: Path) -> dict:
    import rasterio

    out = {}
    for name in ("classes.tif", "confidence.tif"):
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            diff = int((x.read(1) != y.read(1)).sum())
        out[name] = {"same_bytes": (a / name).read_bytes() == (b / name).read_bytes(),
                     "pixels_differ": diff}  # fmt: skip
    same = (a / "polygons.geojson").read_bytes() == (b / "polygons.geojson").read_bytes()
    out["polygons.geojson"] = {"same_bytes": same}
    ha = json.loads((a / "summary.json").read_text())["class_histogram"]
    hb = json.loads((b / "summary.json").read_text())["class_histogram"]
    out["histogram_equal"] = ha == hb
    out["identical"] = all(v["same_bytes"] for v in out.values() if isinstance(v, dict))
    return out


def breakdown(model, scene: Path, work: Path) -> dict:
    """Seconds per part of a one-process ``predict_scene`` on ``scene`` (instrumented here)."""
    from trainer import polygons, predict

    spent = {"read": 0.0, "forward": 0.0, "polygons": 0.0, "cog": 0.0}

    def timed(obj, name, key):
        real = getattr(obj, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t

        setattr(obj, name, wrapper)
        return real

    saved = [
        (predict.Predictor, "read", timed(predict.Predictor, "read", "read")),
        (predict.Predictor, "forward", timed(predict.Predictor, "forward", "forward")),
        (polygons.PolygonCollector, "add", timed(polygons.PolygonCollector, "add", "polygons")),
        (polygons.PolygonCollector, "write", timed(polygons.PolygonCollector, "write", "polygons")),
        (predict, "to_cog", timed(predict, "to_cog", "cog")),
    ]
    try:
        t = time.perf_counter()
        s = predict.predict_scene(model, [scene], work / "breakdown", progress=False)
        wall = time.perf_counter() - t
    finally:
        for obj, name, real in saved:
            setattr(obj, name, real)
    return {"wall_s": round(wall, 2), "chips": s["options"]["chip"]} | {
        k: round(v, 2) for k, v in spent.items()
    }


def seam_chips(model, scene: Path, workers: int) -> dict:
    """Chips of the scene, and chips the strips run (those across a seam run twice)."""
    from trainer import predict
    from trainer import strips as st

    pred = predict.open_predictor(model, [scene], options=predict.PredictOptions())
    pred.close()
    t = pred.o.tile_size
    plan = st.plan(-(-pred.rows.length // t), workers)
    ncols, total = len(pred.cols.starts), len(pred.rows.starts)
    run = sum(len(pred.rows.touching(a * t, min(b * t, pred.rows.length))) for a, b in plan)
    return {"chip_rows": total, "chip_rows_run": run, "chips": total * ncols,
            "chips_run": run * ncols, "extra": round(run / total - 1, 4), "strips": len(plan)}  # fmt: skip


def report(r: dict) -> str:
    one, two, b = r["one_process"], r["local2"], r["breakdown"]
    c = two["cluster"]
    mp = r["n_pixels"] / 1e6
    lines = [
        "# Prediction on a Dask cluster: one process against local:2",
        "",
        f"{r['date']}, {r['machine']}; load average before {r['loadavg_before']}, after "
        f"{r['loadavg_after']} (the machine is shared: {r['load_note']}). Command: "
        f"`{r['command']}`. Scene {SIDE} x {SIDE} px ({mp:.0f} Mpx, 6 bands, mirror-tiled "
        f"Sentinel-2 sample); model `perf@champion` (full-size ResNet-18 UNet); chips "
        f"{one['chip']}, precision auto, 1024-px tiles in every run.",
        "",
        "| run | wall s | predict_scene s | Mpx/s (predict_scene) | peak RSS MB | torch threads |",
        "|---|---|---|---|---|---|",
        f"| one process | {one['wall_s']} | {one['predict_scene_s']} | "
        f"{mp / one['predict_scene_s']:.2f} | {one['peak_rss_mb']} | {one['threads']} |",
        f"| local:2 | {two['wall_s']} | {two['predict_scene_s']} | "
        f"{mp / two['predict_scene_s']:.2f} | {two['peak_rss_mb']} (largest process) | "
        f"{c['threads']} per worker |",
        "",
        f"Throughput ratio (local:2 over one process): **{r['ratio_predict']:.2f}** on "
        f"`predict_scene`, {r['ratio_wall']:.2f} on the whole command (the cluster's start-up: "
        "two worker processes importing torch and loading the model). Peak RSS per worker: "
        + ", ".join(f"{v:.0f} MB" for v in c["peak_rss_mb"].values())
        + f"; {c['strips']} strips of {c['tile_rows_per_strip']} tile row(s); workers busy "
        f"{c['strip_seconds']} s in all, the driver waited {c['driver_wait_seconds']} s for "
        f"strips. Outputs identical to one process: **{r['compare']['identical']}** "
        f"({json.dumps({k: v for k, v in r['compare'].items() if k != 'np'})}).",
        "",
        "## Where the time goes (one process, instrumented, overlapping threads)",
        "",
        f"wall {b['wall_s']} s: reading {b['read']} s, forward passes {b['forward']} s, "
        f"polygons {b['polygons']} s, COG copies {b['cog']} s. Strips on local:2 ran "
        f"{r['seams']['chips_run']} chips for the scene's {r['seams']['chips']} "
        f"(+{r['seams']['extra']:.1%}, the chip rows across {r['seams']['strips'] - 1} seams).",
        "",
        "## What this predicts for N machines",
        "",
        r["note"],
        "",
    ]
    return "\n".join(lines)


def note(r: dict) -> str:
    two, b = r["local2"], r["breakdown"]
    c = two["cluster"]
    serial = max(0.0, two["predict_scene_s"] - c["driver_wait_seconds"])
    compute = b["read"] + b["forward"]
    return (
        f"The work that spreads over workers is reading and the forward passes ({compute:.1f} s "
        f"of {b['wall_s']} s here, forward {b['forward'] / max(b['wall_s'], 1e-9):.0%} of the "
        "wall time); on N machines of this kind it divides by N, plus the seam chips (one or "
        "two chip rows per strip: a few percent at 3 strips per worker on tall scenes). What does "
        f"not spread is the driver: writing the class and confidence GeoTIFFs, counting areas "
        f"and joining polygons tile by tile as strips arrive, then the COG copies "
        f"({b['cog']} s) and the last polygons. Here the driver was busy {serial:.1f} s beyond "
        f"waiting for strips; with polygons {b['polygons']} s and COG copies {b['cog']} s in "
        f"one process, the driver's share sets the ceiling: about "
        f"{b['wall_s'] / max(b['polygons'] + b['cog'], 1e-9):.0f}x one process whatever N, "
        "before the reading of the scene (shared storage) becomes the limit. On 2 cores, "
        "local:2 cannot beat one process that already uses both cores (torch threads 2); the "
        "ratio above says what the strips, the strip files and the driver cost on top. Start-up "
        "(workers importing torch and loading the model once) is paid once per cluster, not per "
        "strip: `geotune serve --cluster` keeps it warm across jobs."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write results.md and results.json")
    ap.add_argument("--work", help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="geotune-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GEOTUNE_HOME"] = str(work / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    env = dict(os.environ)
    before = os.getloadavg()
    perf = perf_bench()
    from trainer.registry import load_model

    print("[1/5] model perf@champion (full-size ResNet-18 UNet)", flush=True)
    try:
        model = load_model("perf@champion")
    except Exception:
        perf.train_model(work)
        model = load_model("perf@champion")
    print(f"[2/5] scene {SIDE}²", flush=True)
    scene = perf.make_scene(work / f"s{SIDE}.tif", SIDE)
    print("[3/5] one process", flush=True)
    one = run_cli(scene, work / "one", env)
    print(f"  {one}", flush=True)
    print("[4/5] local:2", flush=True)
    two = run_cli(scene, work / "two", env, "--cluster", "local:2")
    print(f"  {two}", flush=True)
    print("[5/5] compare, breakdown", flush=True)
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "command": ".venv/bin/python experiments/scale/bench.py --write",
        "n_pixels": SIDE * SIDE,
        "one_process": one,
        "local2": two,
        "ratio_predict": round(one["predict_scene_s"] / two["predict_scene_s"], 3),
        "ratio_wall": round(one["wall_s"] / two["wall_s"], 3),
        "compare": compare(work / "one", work / "two"),
        "breakdown": breakdown(model, scene, work),
        "seams": seam_chips(model, scene, two["cluster"]["workers"]),
    }
    results["loadavg_before"] = [round(x, 2) for x in before]
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    worst = max(results["loadavg_before"] + results["loadavg_after"])
    results["load_note"] = "quiet" if worst < 3 else f"busy: load up to {worst:.1f} on 2 cores"
    results["note"] = note(results)
    text = report(results)
    print(text)
    if args.write:
        (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (HERE / "results.md").write_text(text)


if __name__ == "__main__":
    main()
