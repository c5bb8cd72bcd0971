"""Prediction speed and memory, measured in one run: every ratio below compares figures taken
in this one process (or its children) on the same machine state.

Model: a full-size ResNet-18 UNet (``backbone=resnet18``, the official size; random init, then
fine-tuned for 3 epochs on the packaged Sentinel-2 demo sample and its demo labels, so that its
predictions are not degenerate), registered in a private MLflow store as ``perf@champion``.

Scenes: 6-band uint16 COGs (blue, green, red, nir08, swir16, swir22 at 10 m) made from the real
Sentinel-2 sample (768 x 768) by mirror tiling, written block by block: 2048², 3000² (the seed's
headline case: 30 x 30 km at 10 m) and 6000².

Measurements:

1. forward throughput of the network alone (eager; contiguous and ``channels_last``; chips of
   512 and 768; batches of 1, 2, 4): FLOPs counted with ``torch.utils.flop_counter``; the best
   GFLOP/s is the reference for the floor.
2. vs TerraTorch's ``tiled_inference`` (loaded from the ``terratorch`` wheel by path, with a shim
   for its one unused package import) on the 2048² scene: same weights, crop 512, stride 480 (overlap
   32), no padding, both averaging softmax probabilities, each at its best batch size: geotune's
   default (chosen from the forward table: 2 chips per pass in bfloat16, 1 in float32),
   TerraTorch's faster of 1 and 2. TerraTorch gets the scene already in memory and only its
   argmax is taken; geotune's time is ``predict_scene`` from file to the four outputs. Each
   time is the best of three rounds in which the two sides' runs alternate. Argmax agreement
   over all pixels. The whole run uses the malloc settings ``predict_scene`` makes
   (``trainer.inference.keep_large_buffers``), TerraTorch's runs included. Then geotune again
   at its own default chip layout (chips fitted to the scene at the same 32 px overlap).
3. pipeline efficiency: ``predict_scene`` on the 3000² scene (defaults; read, infer, blend,
   write, vectorize; each precision's best of three alternating rounds, as a warm service runs
   it) against a bare eager float32 forward (contiguous, one chip at a time: its fastest) over
   exactly the chips ``predict_scene`` runs, held in memory.
4. headline: ``geotune predict --model perf@champion --image s3000.tif --out DIR`` as a child
   process (start-up, MLflow, model load included; the faster of two), against the floor = FLOPs of the
   non-overlapping 512² chips covering the scene (ceil(3000/512)² = 36) / best GFLOP/s of (1);
   and as on a CPU without native bfloat16 (``--precision auto`` is float32 there): the command
   with ``--precision fp32`` and ``predict_scene`` in float32 against the float32 floor (the
   best float32 GFLOP/s of (1)).
5. memory: peak RSS (``wait4`` rusage) of ``geotune predict`` on 6000² over 3000², each a fresh
   process.

    .venv/bin/python experiments/perf/bench.py --write      # ~7 min on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

import trainer  # noqa: F401  before torch, as in `geotune`: its OpenMP spin default

HERE = Path(__file__).resolve().parent
ROUNDS = 3  # of the TerraTorch comparison and of predict_scene in process (a shared host's
# speed drifts by 10-15% within minutes: the best of three, alternating, is steadier)
VENV_BIN = Path(sys.executable).parent


def make_scene(path: Path, side: int) -> Path:
    """A ``side``² 6-band COG: the packaged Sentinel-2 sample mirror-tiled, block by block."""
    import rasterio
    from rasterio.windows import Window

    from trainer.demo import sample_image
    from trainer.predict import to_cog

    if path.exists():
        return path
    with rasterio.open(sample_image()) as src:
        a, profile, desc = src.read(), src.profile, src.descriptions
    n = a.shape[1]
    mirror = np.concatenate([a, a[:, :, ::-1]], 2)
    mirror = np.concatenate([mirror, mirror[:, ::-1]], 1)  # neighbours meet without seams
    profile.update(width=side, height=side, tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate")  # fmt: skip
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, side, 512):
            for c in range(0, side, 512):
                h, w = min(512, side - r), min(512, side - c)
                rows, cols = np.arange(r, r + h) % (2 * n), np.arange(c, c + w) % (2 * n)
                dst.write(mirror[:, rows][:, :, cols], window=Window(c, r, w, h))
        dst.descriptions = desc
    to_cog(tmp, path, "average")
    tmp.unlink()
    return path


def train_model(work: Path) -> None:
    from datamodules.demo_labels import make_demo_labels
    from datamodules.ingest import ingest
    from trainer.config import compose
    from trainer.demo import demo_overrides, sample_image
    from trainer.train import train

    image = sample_image()
    labels = make_demo_labels(image, work / "labels.geojson")
    ingest(name="perf", images=[image], labels=labels, class_column="class_name",
           sensor="sentinel-2-l1c", block_size=128, progress=False)  # fmt: skip
    train(compose("train", demo_overrides("perf", 3)))


def forward_table(net) -> list[dict]:
    """Eager forward throughput: float32 contiguous and channels_last, and bfloat16 autocast
    (channels_last), which ``predict_scene`` uses by default on CPUs with native bfloat16."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    sizes = ((512, 1), (512, 2), (512, 4), (768, 1), (768, 2))
    for channels_last, precision in ((False, "fp32"), (True, "fp32"), (True, "bf16")):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(memory_format=fmt)
        for chip, batch in sizes if precision == "fp32" else sizes[:2] + sizes[3:4]:
            x = (torch.rand(batch, 6, chip, chip) * 3000).contiguous(memory_format=fmt)
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                        enabled=precision == "bf16"):  # fmt: skip
                with FlopCounterMode(display=False) as fc:
                    net(x)
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    net(x)
                    times.append(time.perf_counter() - t)
            best = min(times)
            rows.append({
                "channels_last": channels_last, "precision": precision, "chip": chip,
                "batch": batch, "seconds": round(best, 4),
                "gflop": round(fc.get_total_flops() / 1e9, 2),
                "gflops_per_s": round(fc.get_total_flops() / best / 1e9, 1),
                "mpx_per_s": round(batch * chip * chip / best / 1e6, 3),
            })  # fmt: skip
            print(f"  forward {rows[-1]}", flush=True)
    net.to(memory_format=torch.contiguous_format)
    return rows + fused_rows(net, rows)


def fused_rows(net, plain: list[dict]) -> list[dict]:
    """channels_last with fused operations, chip 512: batch norms folded into the convolutions
    (``trainer.inference.fold_batch_norms``), in float32 and under bfloat16 autocast; then also
    each convolution's ReLU (and a ResNet block's residual sum) fused into its oneDNN primitive
    (``trainer.inference.fuse_activations``) with the remaining ReLUs clamping bits
    (``sign_bit_relus``): ``fp32-inference``, and under bfloat16 autocast with the weights cast
    once (``bfloat16_weights``) ``bf16-inference``: the networks ``predict_scene`` runs on the
    CPU (``trainer.inference.inference_net``); and in
    float32 TorchScript ``torch.jit.freeze`` of a trace (which folds them too; a trace is fixed
    to one input shape). ``torch.compile`` is left out:
    importing TorchDynamo alone costs ``geotune predict`` 2.8 s, and measured by hand on the
    folded network (2026-12-03, one 512² chip) its first call took 41 s in float32 and 18 s
    under bfloat16 autocast, then 0.274 s against eager's 0.278 s (float32) and 0.070 s
    against 0.078-0.086 s (bfloat16), the same classes: no gain worth a compile per shape."""
    import copy

    import torch

    from trainer.inference import (
        bfloat16_weights,
        fold_batch_norms,
        fuse_activations,
        sign_bit_relus,
    )

    cl = torch.channels_last
    rows = []
    folded = fold_batch_norms(copy.deepcopy(net).eval()).to(memory_format=cl)
    fused = sign_bit_relus(fuse_activations(copy.deepcopy(folded)))
    fast = bfloat16_weights(copy.deepcopy(fused))
    for batch in (1, 2):
        x = (torch.rand(batch, 6, 512, 512) * 3000).contiguous(memory_format=cl)
        with torch.inference_mode():
            frozen = torch.jit.freeze(torch.jit.trace(folded, x, check_trace=False))
            ref = net.to(memory_format=cl)(x).argmax(1)
        for name, f, bf16 in (("fp32-folded", folded, False), ("fp32-jit-freeze", frozen, False),
                              ("fp32-inference", fused, False), ("bf16-folded", folded, True),
                              ("bf16-inference", fast, True)):  # fmt: skip
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                agree = float((f(x).float().argmax(1) == ref).float().mean())
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    f(x)
                    times.append(time.perf_counter() - t)
            best = min(times)
            gflop = next(r["gflop"] for r in plain if (r["chip"], r["batch"]) == (512, batch))
            rows.append(
                {
                    "channels_last": True,
                    "precision": name,
                    "chip": 512,
                    "batch": batch,
                    "seconds": round(best, 4),
                    "gflop": gflop,
                    "gflops_per_s": round(gflop / best, 1),
                    "agreement": round(agree, 6),
                    "mpx_per_s": round(batch * 512 * 512 / best / 1e6, 3),
                }
            )
            print(f"  forward {rows[-1]}", flush=True)
    net.to(memory_format=torch.contiguous_format)
    return rows


def load_terratorch_tiled_inference():
    """``terratorch/tasks/tiled_inference.py`` from the installed wheel, by path: the package's
    ``__init__`` pins an older TorchGeo, and the file's one package import (``pad_images``) is
    unused by ``tiled_inference``; a stub module stands in for it."""
    spec = importlib.util.find_spec("terratorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps terratorch==1.2.13 first (see tests' setup)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("terratorch", "terratorch.models", "terratorch.models.utils"):
        sys.modules.setdefault(name, types.ModuleType(name))

    def pad_images(*a, **k):
        raise NotImplementedError("stub: not used by tiled_inference")

    sys.modules["terratorch.models.utils"].pad_images = pad_images
    s = importlib.util.spec_from_file_location("tt_tiled", root / "tasks" / "tiled_inference.py")
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod.tiled_inference


def vs_terratorch(model, scene: Path, work: Path) -> dict:
    import rasterio
    import torch

    from trainer.predict import PredictOptions, predict_scene

    tiled_inference = load_terratorch_tiled_inference()
    crop, overlap = 512, 32
    out = work / "ours-2048"
    ours, classes, batches, theirs_by_batch = {}, {}, {}, {}
    net = model.net.to(memory_format=torch.contiguous_format).eval()

    def forward(x):
        return torch.softmax(net(x), 1)

    t = time.perf_counter()
    with rasterio.open(scene) as src:
        x = torch.from_numpy(src.read().astype(np.float32))[None]
    read = time.perf_counter() - t
    for batch in (1, 2):  # each TerraTorch shape warmed up first
        with torch.inference_mode():
            forward(x[..., :crop, :crop].expand(batch, -1, -1, -1).contiguous())
    # ROUNDS rounds, each side's runs alternating with the other's, the best of each kept: the
    # ratio then does not hang on one side catching a slow spell of a shared machine
    for last in [False] * (ROUNDS - 1) + [True]:
        # geotune's default precision (bfloat16 where native), then float32; then no polygons
        # ("own chips": geotune's default layout, chips fitted to the scene at the same overlap)
        for key, precision, polygons in (("auto", "auto", True), ("fp32", "fp32", True),
                                         ("rasters_only", "auto", False),
                                         ("fp32_rasters_only", "fp32", False),
                                         ("own_chips", "auto", True),
                                         ("fp32_own_chips", "fp32", True)):  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)
            chips = {} if "own_chips" in key else {"chip_size": crop}
            t = time.perf_counter()
            s = predict_scene(model, [scene], out, progress=False,
                              options=PredictOptions(overlap=overlap, precision=precision,
                                                     polygons=polygons, **chips))  # fmt: skip
            ours[key] = min(ours.get(key, math.inf), time.perf_counter() - t)
            if last:  # the same classes every round: read once
                with rasterio.open(out / "classes.tif") as src:
                    classes[key] = src.read(1)
                batches[key] = s["options"]["batch_size"]
                if key == "auto":
                    resolved = s["options"]["precision"]
                if key == "own_chips":
                    own_chips = s["options"]["chip"]
        for batch in (1, 2):  # TerraTorch at its faster batch size
            t = time.perf_counter()
            prob = tiled_inference(forward, x, model.record["num_classes"], crop=crop,
                                   stride=crop - overlap, delta=0, batch_size=batch, padding=False)  # fmt: skip
            theirs_classes = prob[0].argmax(0).numpy().astype(np.uint8)
            took = time.perf_counter() - t
            theirs_by_batch[batch] = min(theirs_by_batch.get(batch, math.inf), took)
    batch = min(theirs_by_batch, key=theirs_by_batch.get)
    theirs = theirs_by_batch[batch]

    def agree(a):
        return round(float((theirs_classes == a).mean()), 6)

    return {
        "scene": f"{x.shape[-1]}x{x.shape[-2]}", "crop": crop, "stride": crop - overlap, "rounds": ROUNDS,
        "batch": batch, "terratorch_s_by_batch": {k: round(v, 2) for k, v in theirs_by_batch.items()},
        "geotune_batch": batches, "precision": resolved, "geotune_s": round(ours["auto"], 2),
        "terratorch_s": round(theirs, 2), "geotune_fp32_s": round(ours["fp32"], 2),
        "geotune_rasters_only_s": round(ours["rasters_only"], 2),
        "terratorch_read_s": round(read, 2), "speedup": round(theirs / ours["auto"], 3),
        "speedup_fp32": round(theirs / ours["fp32"], 3),
        "speedup_rasters_only": round(theirs / ours["rasters_only"], 3),
        "geotune_fp32_rasters_only_s": round(ours["fp32_rasters_only"], 2),
        "speedup_fp32_rasters_only": round(theirs / ours["fp32_rasters_only"], 3),
        "argmax_agreement": agree(classes["auto"]),
        "argmax_agreement_fp32": agree(classes["fp32"]), "geotune_chips": s["options"]["chip"],
        "own_chips": own_chips, "geotune_own_chips_s": round(ours["own_chips"], 2),
        "geotune_fp32_own_chips_s": round(ours["fp32_own_chips"], 2),
        "speedup_own_chips": round(theirs / ours["own_chips"], 3),
        "speedup_fp32_own_chips": round(theirs / ours["fp32_own_chips"], 3),
        "argmax_agreement_own_chips": agree(classes["own_chips"]),
        "argmax_agreement_fp32_own_chips": agree(classes["fp32_own_chips"]),
    }  # fmt: skip


def pipeline_efficiency(model, scene: Path, work: Path) -> dict:
    import rasterio
    import torch
    from rasterio.windows import Window

    from datamodules.imagery import open_scenes
    from trainer.chips import crop
    from trainer.predict import PredictOptions, Predictor, predict_scene

    out = work / "ours-3000"
    times, classes, polygons = {}, {}, {}
    # the service's warm path: each precision's best of ROUNDS runs, alternating (the first
    # run of a precision may still prepare its network); the default last, its summary reported
    for last in [False] * (ROUNDS - 1) + [True]:
        for precision in ("fp32", "auto"):
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            s = predict_scene(model, [scene], out, progress=False,
                              options=PredictOptions(precision=precision))  # fmt: skip
            times[precision] = min(times.get(precision, math.inf), time.perf_counter() - t)
            if last:  # the same outputs every round: read once
                with rasterio.open(out / "classes.tif") as src:
                    classes[precision] = src.read(1)
                polygons[precision] = s["n_polygons"]
    pipe = times["auto"]
    # the same chips, held in memory, through a bare eager forward (contiguous, same batch)
    pred = Predictor(model, open_scenes([scene]), PredictOptions())
    chips = [(r, c) for r in pred.rows.starts for c in pred.cols.starts]
    arrays = []
    for r, c in chips:
        x, _ = pred.read(Window(c, r, pred.chip_w, pred.chip_h))
        arrays.append(crop(x, 0, 0, pred.chip_h, pred.chip_w))
    pred.close()
    net = model.net.to(memory_format=torch.contiguous_format).eval()
    b = 1  # eager float32 is fastest one chip at a time (the forward table)
    with torch.inference_mode():
        t = time.perf_counter()
        for i in range(0, len(arrays), b):
            net(torch.from_numpy(np.stack(arrays[i : i + b])))
        bare = time.perf_counter() - t
    return {
        "scene": "3000x3000", "chips": len(chips), "chip": [pred.chip_h, pred.chip_w],
        "batch": b, "pipeline_s": round(pipe, 2), "bare_forward_s": round(bare, 2),
        "efficiency": round(bare / pipe, 3), "precision": s["options"]["precision"],
        "pipeline_fp32_s": round(times["fp32"], 2),
        "efficiency_fp32": round(bare / times["fp32"], 3), "n_polygons": s.get("n_polygons"),
        "n_polygons_fp32": polygons["fp32"],
        "agreement_with_fp32": round(float((classes["auto"] == classes["fp32"]).mean()), 6),
        "predict_scene_seconds": s["seconds"],
    }  # fmt: skip


def serial_parts(model, scene: Path, work: Path) -> dict:
    """``predict_scene`` on ``scene`` (defaults) with its parts one after another, each timed
    (``experiments/scale/bench.py``'s ``breakdown``): what each part costs alone. On a machine
    whose cores the forward pass already fills, the parts beside it add their time."""
    s = importlib.util.spec_from_file_location("scale_bench", HERE.parent / "scale" / "bench.py")
    scale = importlib.util.module_from_spec(s)
    s.loader.exec_module(scale)
    shutil.rmtree(work / "breakdown", ignore_errors=True)
    parts = scale.breakdown(model, scene, work, concurrent=False)
    return parts


PARTS = ("read", "forward", "blend", "polygons", "cog")


IMPORTS = """import json, sys, time
out = {}
for name in ("torch", "trainer.cli", "trainer.loading", "trainer.predict", "trainer.heads",
             "trainer.backbones.resnet"):
    t = time.perf_counter()
    __import__(name)
    out[name] = round(time.perf_counter() - t, 3)
heavy = [m for m in ("mlflow", "timm", "torchvision", "torch._dynamo") if m in sys.modules]
print(json.dumps({"seconds": out, "heavy": heavy}))"""


def import_times(env: dict) -> dict:
    """Seconds to import what ``geotune predict`` on a ResNet model imports (torch, then
    geotune's modules of the path) in a fresh process, and which of MLflow, timm, torchvision,
    TorchDynamo came with them: what the command pays before it reads a pixel."""
    r = subprocess.run([sys.executable, "-c", IMPORTS], env=env, capture_output=True, text=True,
                       check=True)  # fmt: skip
    got = json.loads(r.stdout.strip().splitlines()[-1])
    times = got["seconds"]
    return {
        "torch": times["torch"],
        "geotune": round(sum(v for k, v in times.items() if k != "torch"), 3),
        "total": round(sum(times.values()), 3),
        "heavy": got["heavy"],
    }


LAUNCHER = """import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(r.returncode)"""


def run_cli(scene: Path, out: Path, env: dict, *extra: str) -> dict:
    """``geotune predict`` in a fresh process: wall time, its own peak RSS, its summary."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(VENV_BIN / "geotune"), "predict", "--model", "perf@champion", "--image",
           str(scene), "--out", str(out), *extra]  # fmt: skip
    t = time.perf_counter()
    # a small launcher process runs the command and reports its children's peak RSS: a child
    # forked straight from this (large) process would report this process's peak (Linux keeps
    # the pre-exec high-water mark)
    r = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True,
                       text=True)  # fmt: skip
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"geotune predict failed:\n{r.stderr[-3000:]}")
    rss_kb = int(r.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    return {"command": " ".join(["geotune", *cmd[1:]]), "wall_s": round(wall, 2),
            "predict_scene_s": summary["seconds"], "peak_rss_mb": round(rss_kb / 1024, 1),
            "n_pixels": summary["n_pixels"], "n_polygons": summary.get("n_polygons"),
            "chip": summary["options"]["chip"]}  # fmt: skip


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, p, tt = results["headline"], results["pipeline"], results["terratorch"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [f"floor\n(36 chips,\nbest GFLOP/s: {results['best_forward']['precision']})",
             "bare eager\nfloat32 forward,\nsame chips", f"predict_scene\n(in process,\n"
             f"{p['precision']})", "geotune predict\n(command)"]  # fmt: skip
    vals = [h["floor_s"], p["bare_forward_s"], p["pipeline_s"], h["wall_s"]]
    a.bar(names, vals, color=["#999", "#bbb", "#3b7dd8", "#1f4e99"])
    for i, v in enumerate(vals):
        a.text(i, v, f"{v:.1f} s", ha="center", va="bottom")
    a.set_ylabel("seconds")
    a.set_title("3000² 6-band scene, ResNet-18 UNet, 2 CPU cores")
    b.bar(["TerraTorch\ntiled_inference\n(float32)", "geotune\npredict_scene\n(float32)",
           f"geotune\npredict_scene\n({tt['precision']})"],
          [tt["terratorch_s"], tt["geotune_fp32_s"], tt["geotune_s"]],
          color=["#d88b3b", "#8fb3e8", "#3b7dd8"])  # fmt: skip
    b.set_title(f"2048², crop 512 stride 480: {tt['speedup']:.2f}x, agreement "
                f"{tt['argmax_agreement']:.4%}")  # fmt: skip
    b.set_ylabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cpu_description() -> str:
    """The CPU's model name and its bfloat16 instructions (AVX512-BF16, AMX): the floors and
    ratios differ by CPU, most between CPUs with and without AMX."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    has = [
        label
        for label, f in (
            ("AVX512-BF16", "_is_avx512_bf16_supported"),
            ("AMX", "_is_amx_tile_supported"),
        )
        if getattr(torch.cpu, f, lambda: False)()
    ]
    return f"{name}; bfloat16 instructions: {', '.join(has) or 'none'}"


def report(r: dict) -> str:
    h, p, tt, m = r["headline"], r["pipeline"], r["terratorch"], r["memory"]
    best = r["best_forward"]
    lines = [
        "# Prediction speed and memory (`experiments/perf/bench.py`)",
        "",
        f"Recorded {r['date']} on {r['machine']}"
        + (f" ({r['cpu']})" if r.get("cpu") else "")
        + "; load average before/after: "
        f"{r['loadavg_before']} / {r['loadavg_after']}. Command: `{r['command']}`. "
        "All ratios are between figures taken in this one run. Raw figures: `results.json`; "
        "picture: `plot.png`. "
        + (
            "The whole run (forward table, TerraTorch, geotune) uses the malloc settings "
            "`predict_scene` makes (`trainer.inference.keep_large_buffers`)."
            if r.get("malloc_tuned")
            else "malloc left at its defaults (not glibc, or set by the user)."
        ),
        "",
        "| measure | figure | target | met |",
        "|---|---|---|---|",
        f"| vs TerraTorch `tiled_inference` (2048², crop 512, stride 480; each at its faster batch: "
        f"TerraTorch {tt['batch']}, geotune {tt['geotune_batch']['auto']} in "
        f"{tt['precision']} and {tt['geotune_batch']['fp32']} in fp32; geotune defaults: "
        f"precision {tt['precision']}; each side's best of {tt['rounds']} alternating "
        f"rounds) | {tt['speedup']:.2f}x its throughput; argmax agreement {tt['argmax_agreement']:.4%} | "
        f"≥ 1.3x, ≥ 99.9% | {_met(tt['speedup'] >= 1.3 and tt['argmax_agreement'] >= 0.999)} |",
        f"| the same, geotune in float32 | {tt['speedup_fp32']:.2f}x; agreement "
        f"{tt['argmax_agreement_fp32']:.4%} | ≥ 1.3x, ≥ 99.9% | "
        f"{_met(tt['speedup_fp32'] >= 1.3 and tt['argmax_agreement_fp32'] >= 0.999)} |",
        f"| the same, geotune defaults without polygons (TerraTorch makes none) | "
        f"{tt['speedup_rasters_only']:.2f}x | ≥ 1.3x | {_met(tt['speedup_rasters_only'] >= 1.3)} |",
        f"| the same in float32 (like for like: TerraTorch makes only the class array) | "
        f"{tt['speedup_fp32_rasters_only']:.2f}x | (≥ 1.3x is asked of the row with polygons) | "
        f"{_met(tt['speedup_fp32_rasters_only'] >= 1.3)} |",
        f"| pipeline efficiency (3000², defaults: precision {p['precision']}): bare eager float32 "
        f"forward time / `predict_scene` time, same {p['chips']} chips of "
        f"{p['chip'][0]}x{p['chip'][1]} | {p['efficiency']:.2f} | ≥ 1.0 "
        f"| {_met(p['efficiency'] >= 1.0)} |",
        f"| the same, `predict_scene` in float32 | {p['efficiency_fp32']:.2f} | ≥ 1.0 "
        f"| {_met(p['efficiency_fp32'] >= 1.0)} |",
        *_own_chips_rows(tt),
        *_same_outputs_row(p),
        f"| memory: peak RSS 6000² / 3000² (`geotune predict`, fresh processes) | "
        f"{m['ratio']:.3f} ({m['rss_6000_mb']:.0f} / {m['rss_3000_mb']:.0f} MB) | ≤ 1.2 | "
        f"{_met(m['ratio'] <= 1.2)} |",
        f"| headline: `geotune predict` 3000² command to files / floor | {h['ratio']:.2f} "
        f"({h['wall_s']:.1f} s / {h['floor_s']:.2f} s) | ≤ 2.0 | {_met(h['ratio'] <= 2.0)} |",
        f"| the same, in process (`predict_scene`, model loaded) / floor | "
        f"{h['ratio_in_process']:.2f} ({p['pipeline_s']:.1f} s) | ≤ 1.3 | "
        f"{_met(h['ratio_in_process'] <= 1.3)} |",
        *_fp32_cpu_rows(r),
        "",
        f"**Floor**: {h['floor_chips']} non-overlapping 512² chips x {h['gflop_per_chip']:.1f} "
        f"GFLOP = {h['floor_gflop']:.0f} GFLOP at the best measured forward throughput "
        f"{best['gflops_per_s']:.0f} GFLOP/s (chip {best['chip']}, batch {best['batch']}, "
        f"channels_last={best['channels_last']}, {best['precision']}) = "
        f"**{h['floor_s']:.2f} s**.",
        "",
        f"**Headline run**: {h['wall_s']:.1f} s for the command, of which `predict_scene` "
        f"(read, infer, blend, write both COGs, {h['n_polygons']} polygons) took "
        f"{h['predict_scene_s']:.1f} s; the rest ({h['wall_s'] - h['predict_scene_s']:.1f} s) is "
        "process start-up: importing torch and geotune's modules, reading the model's record "
        "and weights from the local store, building the model (a long-running `geotune serve` "
        f"pays it once). The imports alone take {r['imports']['total']:.1f} s in a fresh "
        f"process (torch {r['imports']['torch']:.1f}, geotune's modules "
        f"{r['imports']['geotune']:.1f}; MLflow, timm, torchvision or TorchDynamo among them: "
        f"{', '.join(r['imports']['heavy']) or 'none'}; see `imports.md`): "
        f"{r['imports']['total'] / h['floor_s']:.2f}x the floor "
        "before a pixel is read.",
        "",
        *_parts_text(r),
        "",
        *_rows_explained(r),
        "## Forward throughput (eager)",
        "",
        "| channels_last | precision | chip | batch | s | GFLOP | GFLOP/s | Mpx/s |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {x['channels_last']} | {x['precision']} | {x['chip']} | {x['batch']} | "
            f"{x['seconds']} | {x['gflop']} "
            f"| {x['gflops_per_s']} | {x['mpx_per_s']} |"
            for x in r["forward"]
        ],
        "",
    ]
    return "\n".join(lines)


def _parts_text(r: dict) -> list[str]:
    """Where ``predict_scene``'s time goes, parts one after another, against the floor."""
    p, floor = r["serial_parts"], r["headline"]["floor_s"]
    beside = sum(p[k] for k in PARTS if k != "forward")
    cores = int(r["machine"].split(", ")[1].split()[0])
    bound = (p["forward"] * cores + beside) / cores
    return [
        f"**Where the time goes** (3000², defaults, the parts one after another in one run: "
        f"{p['wall_s']} s): forward passes {p['forward']} s, reading {p['read']} s, blending "
        f"{p['blend']} s, polygons {p['polygons']} s, COG copies {p['cog']} s (the two COG "
        "copies and the last polygons run at once at the end, so the parts add up to more than "
        f"the wall time). The forward pass fills every core, so the {beside:.1f} s of work "
        f"beside it can hide only in cores it leaves idle: with {cores} cores, even a perfect "
        f"overlap takes about (forward x cores + the rest) / cores = {bound:.1f} s, "
        f"{bound / floor:.2f}x the floor.",
    ]


def _rows_explained(r: dict) -> list[str]:
    """What the rows at geotune's own chip layout and on a float32-only CPU show."""
    tt, h32 = r["terratorch"], r.get("headline_fp32")
    lines = []
    if "own_chips" in tt:
        lines += [
            f"**geotune's own chip layout against TerraTorch**: by default geotune fits its chips "
            f"to the scene ({tt['own_chips'][0]}² here, against TerraTorch's {tt['crop']}² at "
            f"stride {tt['stride']}, both overlapping by {tt['crop'] - tt['stride']} px), so fewer pixels go through the network: "
            f"{tt['speedup_own_chips']:.2f}x TerraTorch's throughput by default and "
            f"{tt['speedup_fp32_own_chips']:.2f}x in float32. Its chips then meet elsewhere, and "
            f"near where chips meet this lightly trained model (3 epochs on the demo sample) "
            f"gives some pixels other classes: {tt['argmax_agreement_own_chips']:.2%} "
            f"agreement, against {tt['argmax_agreement']:.2%} with the same chips. Neither layout "
            "is the truth; the rows with the same chips compare the speed of equal work.",
            "",
        ]
    if h32:
        lines += [
            "**On a CPU without native bfloat16** (no AVX512-BF16 or AMX, as most laptops), "
            "`--precision auto` runs float32, and the arithmetic's floor is the float32 one: "
            f"{h32['floor_s']:.2f} s at this machine's best float32 forward. This machine's "
            f"float32 path stands in for such a CPU: the command takes {h32['ratio']:.2f}x that "
            f"floor ({h32['wall_s']:.1f} s) and `predict_scene` {h32['ratio_in_process']:.2f}x "
            f"({h32['in_process_s']:.1f} s). The start-up and the work beside the forward pass "
            "cost the same seconds as with bfloat16 but are a smaller share of a float32 run.",
            "",
        ]
    return lines


def _own_chips_rows(tt: dict) -> list[str]:
    """Against TerraTorch with geotune's own chip layout (its default) at the same overlap."""
    if "own_chips" not in tt:  # recorded before these rows existed
        return []
    c, crop, stride = tt["own_chips"], tt["crop"], tt["stride"]
    return [
        f"| vs TerraTorch, geotune at its default chip layout (chips fitted to the scene at the "
        f"same {crop - stride} px overlap: {c[0]}x{c[1]}, against TerraTorch's {crop}x{crop} at "
        f"stride {stride}), "
        f"defaults ({tt['precision']}) | {tt['speedup_own_chips']:.2f}x; agreement "
        f"{tt['argmax_agreement_own_chips']:.4%} | ≥ 1.3x, ≥ 99.9% | "
        f"{_met(tt['speedup_own_chips'] >= 1.3 and tt['argmax_agreement_own_chips'] >= 0.999)} |",
        f"| the same, geotune in float32 | {tt['speedup_fp32_own_chips']:.2f}x; agreement "
        f"{tt['argmax_agreement_fp32_own_chips']:.4%} | ≥ 1.3x, ≥ 99.9% | "
        f"{_met(tt['speedup_fp32_own_chips'] >= 1.3 and tt['argmax_agreement_fp32_own_chips'] >= 0.999)} |",
    ]  # fmt: skip


def _fp32_cpu_rows(r: dict) -> list[str]:
    """The headline rows as on a CPU without native bfloat16: float32, its own floor."""
    h = r.get("headline_fp32")
    if h is None:  # recorded before these rows existed
        return []
    b = h["best_forward"]
    return [
        f"| as on a CPU without native bfloat16 (most laptops): `geotune predict --precision "
        f"fp32` 3000² command to files / the float32 floor ({b['gflops_per_s']:.0f} GFLOP/s, "
        f"{b['precision']}, batch {b['batch']}: {h['floor_s']:.2f} s) | {h['ratio']:.2f} "
        f"({h['wall_s']:.1f} s) | ≤ 2.0 | {_met(h['ratio'] <= 2.0)} |",
        f"| the same, in process / the float32 floor | {h['ratio_in_process']:.2f} "
        f"({h['in_process_s']:.1f} s) | ≤ 1.3 | {_met(h['ratio_in_process'] <= 1.3)} |",
    ]


def _same_outputs_row(p: dict) -> list[str]:
    """The defaults' classes and polygon count against the float32 path's (3000²)."""
    if "agreement_with_fp32" not in p:  # recorded before this row existed
        return []
    n, n32 = p["n_polygons"], p["n_polygons_fp32"]
    ok = p["agreement_with_fp32"] >= 0.999 and abs(n - n32) <= 0.005 * n32
    return [
        f"| outputs: the defaults ({p['precision']}) against float32, 3000² | classes agree on "
        f"{p['agreement_with_fp32']:.4%}; {n} polygons against {n32} "
        f"({(n - n32) / n32:+.2%}) | ≥ 99.9%, ± 0.5% | {_met(ok)} |"
    ]


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write results.md/json and plot.png")
    ap.add_argument("--work", help="work folder (default: a temporary one, removed after)")
    ap.add_argument("--render", action="store_true",
                    help="only write results.md and plot.png again from results.json")  # fmt: skip
    args = ap.parse_args()
    if args.render:
        results = json.loads((HERE / "results.json").read_text())
        (HERE / "results.md").write_text(report(results))
        plot(results, HERE / "plot.png")
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="geotune-perf-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GEOTUNE_HOME"] = str(work / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    env = dict(os.environ)
    before = os.getloadavg()

    from trainer.inference import keep_large_buffers
    from trainer.registry import load_model

    # predict_scene tunes malloc for its forward passes (trainer.inference); tuned from the
    # start, the forward table (the floor) and TerraTorch's runs get the same allocator
    tuned_malloc = keep_large_buffers()
    print("[1/6] model: full-size ResNet-18 UNet, 3 epochs on the demo sample", flush=True)
    try:
        model = load_model("perf@champion")
    except Exception:
        train_model(work)
        model = load_model("perf@champion")
    print("[2/6] scenes: 2048², 3000², 6000² (mirror-tiled Sentinel-2 sample)", flush=True)
    scenes = {s: make_scene(work / f"s{s}.tif", s) for s in (2048, 3000, 6000)}
    print("[3/6] forward throughput", flush=True)
    fwd = forward_table(model.net)
    best = max(fwd, key=lambda x: x["gflops_per_s"])
    print("[4/6] TerraTorch tiled_inference vs predict_scene", flush=True)
    tt = vs_terratorch(model, scenes[2048], work)
    print(f"  {tt}", flush=True)
    print("[5/6] pipeline efficiency", flush=True)
    pipe = pipeline_efficiency(model, scenes[3000], work)
    print(f"  {pipe}", flush=True)
    parts = serial_parts(model, scenes[3000], work)
    print(f"  one after another: {parts}", flush=True)
    print("[6/6] geotune predict: 3000² (headline) and 6000² (memory)", flush=True)
    del model
    imports = import_times(env)
    print(f"  imports {imports}", flush=True)
    # the 3000² commands: each one's faster of two fresh processes, alternating
    commands = {
        "auto": (work / "cli-3000",),
        "fp32": (work / "cli-3000-fp32", "--precision", "fp32"),
    }
    runs = {key: [] for key in commands}
    for _ in range(2):
        for key, (out, *extra) in commands.items():
            runs[key].append(run_cli(scenes[3000], out, env, *extra))
            print(f"  {runs[key][-1]}", flush=True)
    h, h32 = (min(runs[key], key=lambda r: r["wall_s"]) for key in commands)
    big = run_cli(scenes[6000], work / "cli-6000", env)
    print(f"  {big}", flush=True)
    gflop_512 = next(x["gflop"] for x in fwd if x["chip"] == 512 and x["batch"] == 1)
    n_floor = math.ceil(3000 / 512) ** 2
    floor_s = n_floor * gflop_512 / best["gflops_per_s"]
    h |= {
        "floor_chips": n_floor, "gflop_per_chip": gflop_512, "floor_gflop": n_floor * gflop_512,
        "floor_s": round(floor_s, 3), "ratio": round(h["wall_s"] / floor_s, 3),
        "ratio_in_process": round(pipe["pipeline_s"] / floor_s, 3),
    }  # fmt: skip
    # a CPU without native bfloat16 (most laptops): float32 throughout, its floor at the best
    # float32 forward of the table
    best32 = max((x for x in fwd if x["precision"].startswith("fp32")),
                 key=lambda x: x["gflops_per_s"])  # fmt: skip
    floor32 = n_floor * gflop_512 / best32["gflops_per_s"]
    h32 |= {
        "best_forward": best32, "floor_s": round(floor32, 3),
        "ratio": round(h32["wall_s"] / floor32, 3),
        "in_process_s": pipe["pipeline_fp32_s"],
        "ratio_in_process": round(pipe["pipeline_fp32_s"] / floor32, 3),
    }  # fmt: skip
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "cpu": cpu_description(),
        "command": ".venv/bin/python experiments/perf/bench.py --write",
        "loadavg_before": [round(x, 2) for x in before],
        "malloc_tuned": tuned_malloc,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "forward": fwd, "best_forward": best, "terratorch": tt, "pipeline": pipe,
        "headline": h, "headline_fp32": h32, "big": big, "imports": imports, "serial_parts": parts,
        "memory": {"rss_3000_mb": h["peak_rss_mb"], "rss_6000_mb": big["peak_rss_mb"],
                   "ratio": round(big["peak_rss_mb"] / h["peak_rss_mb"], 3)},
    }  # fmt: skip
    text = report(results)
    print(text)
    if args.write:
        (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (HERE / "results.md").write_text(text)
        plot(results, HERE / "plot.png")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
