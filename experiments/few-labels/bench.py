"""A few polygons on a large scene: time to a registered model and held-out point accuracy.

The scene is the shipped Sentinel-2 L1C sample (``datamodules/sample/s2_l1c_demo.tif``, 768²,
6 bands) mirror-tiled 3 x 3 into 2304² px. The truth is the demo's documented spectral rule
(``datamodules.demo_labels``: water, marsh, forest, cropland, bare ground, majority-filtered).
Labels are ``--polygons`` small rectangles (9-15 px edges, 80-225 px), one class after another,
each inside a region of its class (seeded): the handful of polygons a new user draws.
Held-out points are pixels of each class whose mirror-folded position is at least ``GAP`` px
from every polygon's, so no tile's copy of a training polygon is scored.

Two paths, the same epochs budget, one run, one after the other:

- **new**: this checkout, the documented commands with no extra option:
  ``geotune data add --name py --image scene.tif --labels polygons.gpkg --class-column name``,
  ``geotune train data.dataset=py backbone=resnet18 backbone.weights=random
  trainer.max_epochs=E register.name=py register.alias=champion``;
- **today**: the same commands at ``--baseline`` (the commit before issue 15) with the issue's
  workarounds: ``--min-class-pixels 0``, ``data.min_labelled_fraction=0.001``,
  ``'~callbacks.early_stopping' callbacks.checkpoint.monitor=null``.

Each path is timed from ``data add`` to the registered model (both commands' wall time), then
``geotune predict`` classifies the whole scene and the held-out points are scored on its class
COG. ``probe.EpochProbe`` records accuracy on the same points after every epoch against
training seconds, for the plot.

    .venv/bin/python experiments/few-labels/bench.py            # writes results.json/md, plot.png
    .venv/bin/python experiments/few-labels/bench.py --budget 1200   # today's training stopped
                                                  # after 1200 s, its time projected (lower bound)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rasterio

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SAMPLE = REPO / "datamodules" / "sample" / "s2_l1c_demo.tif"
TILES = 3
GAP = 64  # px between a held-out point and any (mirrored) training polygon
POINTS_PER_CLASS = 60


def mirror_tile(a: np.ndarray, n: int) -> np.ndarray:
    """``[..., H, W]`` → ``[..., n H, n W]``: tiles flipped alternately, seamless at the edges."""
    rows = [a if i % 2 == 0 else a[..., ::-1, :] for i in range(n)]
    col = np.concatenate(rows, axis=-2)
    return np.concatenate([col if j % 2 == 0 else col[..., ::-1] for j in range(n)], axis=-1)


def fold(x: np.ndarray, size: int) -> np.ndarray:
    """Mirror-tiled coordinate → the source coordinate it copies."""
    t, r = np.divmod(x, size)
    return np.where(t % 2 == 0, r, size - 1 - r)


def make_scene(work: Path) -> tuple[Path, np.ndarray]:
    """The tiled scene as a GeoTIFF and its truth class map (demo rule)."""
    from datamodules.demo_labels import NODATA_CLASS, classify, majority_filter
    from datamodules.sensors import SENSORS

    with rasterio.open(SAMPLE) as src:
        data, profile, names = src.read(), src.profile, list(src.descriptions)
        scale = SENSORS[src.tags()["sensor"]].scale
    big = mirror_tile(data, TILES)
    refl = {n: big[i].astype(np.float32) * scale for i, n in enumerate(names)}
    truth = majority_filter(classify(refl, (big != 0).any(0)))
    truth[truth == NODATA_CLASS] = 255
    path = work / "scene.tif"
    profile |= {"width": big.shape[2], "height": big.shape[1], "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(big)
        dst.descriptions = tuple(names)
        dst.update_tags(sensor="sentinel-2-l1c")
    return path, truth


def draw_labels(work: Path, scene: Path, truth: np.ndarray, n_polygons: int, seed: int):
    """``n_polygons`` rectangles inside class regions (classes in turn) and the held-out points."""
    import geopandas as gpd
    import shapely
    from scipy import ndimage

    from datamodules.demo_labels import CLASSES

    rng = np.random.default_rng(seed)
    with rasterio.open(scene) as src:
        t, crs = src.transform, src.crs
    size = truth.shape[0] // TILES
    boxes, names = [], []
    for i in range(n_polygons):
        k = i % len(CLASSES)
        h, w = (int(v) for v in rng.integers(9, 16, 2))
        inside = ndimage.binary_erosion(truth == k, np.ones((h + 2, w + 2)))
        rr, cc = np.nonzero(inside)
        j = rng.integers(len(rr))
        boxes.append((rr[j] - h // 2, cc[j] - w // 2, h, w))
        names.append(CLASSES[k])
    geoms = []
    for r0, c0, h, w in boxes:
        x0, y0 = t * (c0, r0)
        x1, y1 = t * (c0 + w, r0 + h)
        geoms.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    labels = work / "polygons.gpkg"
    gpd.GeoDataFrame({"name": names}, geometry=geoms, crs=crs).to_file(labels)
    # held-out points: far (in source coordinates) from every polygon's source pixels
    near = np.zeros((size, size), dtype=bool)
    for r0, c0, h, w in boxes:
        rr, cc = np.mgrid[r0 : r0 + h, c0 : c0 + w]
        near[fold(rr, size), fold(cc, size)] = True
    near = ndimage.binary_dilation(near, np.ones((2 * GAP + 1, 2 * GAP + 1)))
    yy, xx = np.mgrid[0 : truth.shape[0], 0 : truth.shape[1]]
    far = ~near[fold(yy, size), fold(xx, size)]
    rows = []
    for k, name in enumerate(CLASSES):
        ok = ndimage.binary_erosion(truth == k, np.ones((5, 5))) & far
        rr, cc = np.nonzero(ok)
        pick = rng.choice(len(rr), min(POINTS_PER_CLASS, len(rr)), replace=False)
        rows += [{"row": int(rr[i]), "col": int(cc[i]), "class": name} for i in pick]
    points = work / "points.csv"
    with open(points, "w", newline="") as f:
        writer = csv.DictWriter(f, ["row", "col", "class"])
        writer.writeheader()
        writer.writerows(rows)
    pixels = [int(h * w) for _, _, h, w in boxes]
    return labels, points, {"polygons": len(boxes), "polygon_pixels": pixels, "points": len(rows)}


class LoadMonitor:
    """The 1-minute load average sampled every ``every`` seconds while a path runs."""

    def __init__(self, every: float = 15.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        a = np.array(self.samples or [os.getloadavg()[0]])
        return {"mean": round(float(a.mean()), 2), "max": round(float(a.max()), 2)}


def run(cmd: list[str], env: dict, log: Path, cwd: Path, budget: float | None = None):
    """Run ``cmd`` in ``cwd`` (``python -m`` imports from the working directory first, so it
    must be the checkout under test); returns its wall time, or None when it was stopped (with
    its data loader workers: its own process group) after ``budget`` seconds."""
    t0 = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        p = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
        try:
            p.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            out.write(f"\n[bench] stopped after {budget:.0f} s (--budget)\n")
            return None
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed; see {log}")
    return time.perf_counter() - t0


def run_path(
    name: str,
    code: Path,
    work: Path,
    scene,
    labels,
    points,
    epochs: int,
    threads: int | None,
    budget: float | None = None,
) -> dict:
    """Data add → registered model → prediction, with ``code`` (a checkout) on PYTHONPATH. A
    train command stopped after ``budget`` s is recorded by :func:`stopped`."""
    home = work / f"home-{name}"
    shutil.rmtree(home, ignore_errors=True)
    env = dict(os.environ, GEOTUNE_HOME=str(home), PYTHONPATH=f"{code}:{HERE}")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.pop("MLFLOW_TRACKING_URI", None)
    geotune = [sys.executable, "-m", "trainer.cli"]
    add = [
        *geotune,
        "data",
        "add",
        "--name",
        "py",
        "--image",
        str(scene),
        "--labels",
        str(labels),
        "--class-column",
        "name",
    ]
    curve = work / f"curve-{name}.json"
    train = [
        *geotune,
        "train",
        "data.dataset=py",
        "backbone=resnet18",
        "backbone.weights=random",
        f"trainer.max_epochs={epochs}",
        "register.name=py",
        "register.alias=champion",
        "+callbacks.probe._target_=probe.EpochProbe",
        f"+callbacks.probe.image={scene}",
        f"+callbacks.probe.points={points}",
        f"+callbacks.probe.out={curve}",
    ]
    if name == "today":
        add += ["--min-class-pixels", "0"]
        train += [
            "data.min_labelled_fraction=0.001",
            "~callbacks.early_stopping",
            "callbacks.checkpoint.monitor=null",
        ]
    log = work / f"log-{name}.txt"
    log.write_text("")
    with LoadMonitor() as load:
        add_s = run(add, env, log, code)
        train_s = run(train, env, log, code, budget)
    probe = json.loads(curve.read_text()) if curve.exists() else {"curve": [], "probe_seconds": 0}
    if train_s is None:
        return stopped(add_s, budget, epochs, probe) | {
            **chips_used(log, code),
            "load_1min": load.summary(),
            "log": log.name,
        }
    train_s -= probe["probe_seconds"]  # the probe is the benchmark's, not the user's path
    pred = work / f"pred-{name}"
    shutil.rmtree(pred, ignore_errors=True)
    predict_s = run(
        [*geotune, "predict", "--model", "py@champion", "--image", str(scene), "--out", str(pred)],
        env,
        log,
        code,
    )
    return {
        "data_add_s": round(add_s, 1),
        "train_command_s": round(train_s, 1),
        "to_registered_model_s": round(add_s + train_s, 1),
        **chips_used(log, code),
        "probe_s": probe["probe_seconds"],
        "load_1min": load.summary(),
        "predict_s": round(predict_s, 1),
        **score(pred / "classes.tif", pred / "summary.json", points),
        "curve": probe["curve"],
        "log": log.name,
    }


def stopped(add_s: float, budget: float, epochs: int, probe: dict) -> dict:
    """A path whose training was stopped: the epochs it finished, its accuracy after them, and
    its time to a registered model projected from its seconds per epoch. The projection leaves
    out the train command's start-up and the registration, so it is below the real time (a
    ratio new / today computed with it is above the real one)."""
    curve = probe["curve"]
    out = {
        "complete": False,
        "data_add_s": round(add_s, 1),
        "stopped_after_s": budget,
        "epochs_done": len(curve),
        "probe_s": probe["probe_seconds"],
        "curve": curve,
    }
    if curve:
        per_epoch = curve[-1]["train_seconds"] / len(curve)
        out |= {
            "seconds_per_epoch": round(per_epoch, 1),
            "projected_to_registered_model_s": round(add_s + epochs * per_epoch, 1),
            "best_epoch_accuracy": max(c["accuracy"] for c in curve),
            "last_epoch_accuracy": curve[-1]["accuracy"],
        }
    return out


def chips_used(log: Path, code: Path) -> dict:
    """Training chips per epoch and their size: as ``geotune train`` said, else (a checkout that
    does not say) the fixed values of its ``conf/data/folder.yaml``."""
    import re

    import yaml

    said = re.search(r"geotune: (\d+) training chips of (\d+) px per epoch", log.read_text())
    if said:
        return {"chips_per_epoch": int(said[1]), "patch_size": int(said[2])}
    conf = yaml.safe_load((code / "conf" / "data" / "folder.yaml").read_text())
    return {"chips_per_epoch": conf["chips_per_epoch"], "patch_size": conf["patch_size"]}


def score(classes: Path, summary: Path, points: Path) -> dict:
    """Accuracy of the predicted class COG at the held-out points (overall and per class)."""
    ids = {r["id"]: r["name"] for r in json.loads(summary.read_text())["class_histogram"]}
    with open(points) as f:
        rows = list(csv.DictReader(f))
    with rasterio.open(classes) as src:
        grid = src.read(1)
    pred = [ids.get(int(grid[int(r["row"]), int(r["col"])]), "nodata") for r in rows]
    right = np.array([p == r["class"] for p, r in zip(pred, rows, strict=True)])
    per = {}
    for name in sorted({r["class"] for r in rows}):
        sel = np.array([r["class"] == name for r in rows])
        per[name] = round(float(right[sel].mean()), 4)
    return {"point_accuracy": round(float(right.mean()), 4), "point_accuracy_per_class": per}


def baseline_checkout(work: Path, ref: str) -> Path:
    path = work / "baseline"
    if not (path / "trainer").is_dir():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref],
            check=True,
            capture_output=True,
        )
    return path


def commit(path: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


LABELS = {
    "today": "today: random chips + workarounds",
    "new": "new: label sampler, defaults",
}


def plot(results: dict, out: Path) -> None:
    """Held-out point accuracy after each epoch against training seconds, both paths; the
    registered model's accuracy (scored on the predicted scene) as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=110)
    for name, label in LABELS.items():
        if name not in results["paths"]:
            continue
        r = results["paths"][name]
        curve = r["curve"]
        if r.get("complete", True):
            label += f": {r['to_registered_model_s']:.0f} s to a registered model"
        else:
            label += (
                f": stopped after {r['epochs_done']} of {results['epochs']} epochs; "
                f"projected {r['projected_to_registered_model_s']:.0f} s"
            )
        (line,) = ax.plot(
            [c["train_seconds"] for c in curve],
            [c["accuracy"] for c in curve],
            marker="o",
            markersize=3,
            label=label,
        )
        if "point_accuracy" in r:
            ax.axhline(r["point_accuracy"], color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (wall clock, 2 shared CPU cores; log scale)")
    ax.set_ylabel("held-out point accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    loads = ", ".join(
        f"{n} {r['load_1min']['mean']:.1f}" for n, r in results["paths"].items() if "load_1min" in r
    )
    ax.set_title(
        f"{results['scene']['polygons']} polygons on a {results['scene']['size']}² scene "
        f"(mean load {loads}; dotted: registered model)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out)


def _chips(r: dict) -> str:
    return f"{r['chips_per_epoch']} chips of {r['patch_size']} px" if r.get("patch_size") else "-"


def _row(label: str, r: dict, epochs: int) -> str:
    if not r.get("complete", True):
        return (
            f"| {label} | {r['commit']} | {_chips(r)} | {r['data_add_s']} | stopped after "
            f"{r['stopped_after_s']:.0f} s ({r['epochs_done']} of {epochs} epochs, "
            f"{r.get('seconds_per_epoch', '-')} s each) | projected "
            f"{r.get('projected_to_registered_model_s', '-')} (a lower bound) | no registered "
            f"model; after its epochs {r.get('best_epoch_accuracy', 0):.3f} at best, "
            f"{r.get('last_epoch_accuracy', 0):.3f} last | - |"
        )
    per = ", ".join(f"{k} {v:.2f}" for k, v in r["point_accuracy_per_class"].items())
    return (
        f"| {label} | {r['commit']} | {_chips(r)} | {r['data_add_s']} | "
        f"{r['train_command_s']} | {r['to_registered_model_s']} | {r['point_accuracy']:.3f} "
        f"| {per} |"
    )


def verdict(new: dict, today: dict) -> str:
    """The ratio of times to a registered model and the accuracy comparison, in a sentence.
    A stopped today path is compared by its projected time (so the ratio is an upper bound) and
    by its best accuracy after any epoch against the new path's last epoch (the same probe)."""
    last_new = new["curve"][-1]["accuracy"]
    if today.get("complete", True):
        ratio = new["to_registered_model_s"] / today["to_registered_model_s"]
        better = new["point_accuracy"] >= today["point_accuracy"]
        return (
            f"**Time to a registered model: new / today = {ratio:.3f}** (target: under 0.2); "
            f"held-out point accuracy {new['point_accuracy']:.3f} (new) vs "
            f"{today['point_accuracy']:.3f} (today): "
            + ("at least as good." if better else "lower.")
        )
    ratio = new["to_registered_model_s"] / today["projected_to_registered_model_s"]
    better = last_new >= today["best_epoch_accuracy"]
    return (
        f"**Time to a registered model: new / today <= {ratio:.3f}** (target: under 0.2; today's "
        f"path was stopped after {today['epochs_done']} epochs and its time projected from its "
        "seconds per epoch without start-up or registration, so the real ratio is lower). "
        f"Held-out point accuracy after the last epoch (probe) {last_new:.3f} (new) vs "
        f"{today['best_epoch_accuracy']:.3f} (today's best epoch): "
        + ("at least as good." if better else "lower.")
        + f" The new path's registered model scores {new['point_accuracy']:.3f} on the predicted "
        "scene."
    )


def report(results: dict) -> str:
    """results.md: the two paths side by side, their ratio, and how it was measured."""
    paths = results["paths"]
    sc = results["scene"]
    loads = "; ".join(
        f"{n}: mean {r['load_1min']['mean']}, max {r['load_1min']['max']}"
        for n, r in paths.items()
        if "load_1min" in r
    )
    lines = [
        "# A few polygons on a large scene (`experiments/few-labels/bench.py`)",
        "",
        f"Recorded {results['recorded']} on {results['machine']}, torch threads: "
        f"{results.get('threads', 'torch default')}. The machine is shared: 1-minute load average "
        f"while each path ran ({loads}); before/after the run "
        f"{[round(x, 2) for x in results['load_before']]} / "
        f"{[round(x, 2) for x in results.get('load_after', [])]}. A load above 2 means other "
        "people's jobs took part of the 2 cores. Raw figures: `results.json`; picture: `plot.png`.",
        "",
        f"Scene: `{sc['source']}` mirror-tiled {sc['tiles']} x {sc['tiles']} = {sc['size']}² px, "
        f"6 bands at 10 m. Labels: {sc['polygons']} rectangles of "
        f"{min(sc['polygon_pixels'])}-{max(sc['polygon_pixels'])} px, one per class (water, "
        "marsh, forest, cropland, bare ground; the demo's spectral rule is the truth), "
        f"{sum(sc['polygon_pixels'])} labelled pixels in all. Held-out: {sc['points']} points, "
        f"{POINTS_PER_CLASS} per class, at least {GAP} px from every (mirrored) polygon, scored on "
        "the class COG of `geotune predict` over the whole scene.",
        "",
        f"Both paths: `backbone=resnet18 backbone.weights=random`, trainer.max_epochs="
        f"{results['epochs']}, registered as `py@champion`; timed from `geotune data add` to the "
        "end of `geotune train` (registered model), without the benchmark's per-epoch probe "
        "(its seconds are measured and subtracted).",
        "",
        "| path | commit | training chips per epoch | data add s | train command s | "
        "to registered model s | held-out point accuracy | per class |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in LABELS.items():
        if name not in paths:
            continue
        lines.append(_row(label, paths[name], results["epochs"]))
    if len(paths) == 2:
        lines += ["", verdict(paths["new"], paths["today"])]
    lines += [
        "",
        "Accuracy after each epoch (centre pixels of 64 px chips around the points; training "
        "seconds):",
        "",
    ]
    for name in paths:
        curve = ", ".join(
            f"{c['train_seconds']:.0f} s {c['accuracy']:.2f}" for c in paths[name]["curve"]
        )
        lines.append(f"- {name}: {curve}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/geotune-few-labels", help="scratch folder")
    p.add_argument("--out", default=str(HERE), help="where results.json/md and plot.png go")
    p.add_argument("--baseline", default="fc66933", help="commit of today's path")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--polygons", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for both paths (default: torch's)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="stop today's train command after this many seconds and project its time from "
        "its seconds per epoch (a shared machine may not allow its full run)",
    )
    p.add_argument("--only", choices=["new", "today"], default=None, help="run one path")
    p.add_argument("--report", action="store_true", help="rewrite results.md/plot.png only")
    a = p.parse_args(argv)
    if a.report:
        results = json.loads((Path(a.out) / "results.json").read_text())
        (Path(a.out) / "results.md").write_text(report(results))
        if len(results["paths"]) == 2:
            plot(results, Path(a.out) / "plot.png")
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    scene, truth = make_scene(work)
    labels, points, info = draw_labels(work, scene, truth, a.polygons, a.seed)
    results = {
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_before": list(os.getloadavg()),
        "scene": {"size": int(truth.shape[0]), "source": SAMPLE.name, "tiles": TILES, **info},
        "epochs": a.epochs,
        "threads": a.threads or f"torch default ({os.cpu_count()})",
        "paths": {},
    }
    paths = {"new": REPO, "today": baseline_checkout(work, a.baseline)}
    out = Path(a.out)
    for name in [a.only] if a.only else ["new", "today"]:
        print(f"running {name} ({commit(paths[name])}) ...", flush=True)
        results["paths"][name] = {"commit": commit(paths[name])} | run_path(
            name,
            paths[name],
            work,
            scene,
            labels,
            points,
            a.epochs,
            a.threads,
            a.budget if name == "today" else None,
        )
        results["load_after"] = list(os.getloadavg())
        (out / "results.json").write_text(json.dumps(results, indent=2))  # after each path
    (out / "results.md").write_text(report(results))
    if len(results["paths"]) == 2:
        plot(results, out / "plot.png")
    print(
        json.dumps(
            {k: {m: v for m, v in r.items() if m != "curve"} for k, r in results["paths"].items()},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
