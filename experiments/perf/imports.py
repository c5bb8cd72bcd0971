"""What ``geotune predict`` imports before it reads a pixel: ``python -X importtime`` of the whole
command, for this checkout and (``--before DIR``) another one, run in turn in the same session.

Each tree runs ``python -X importtime -m trainer.cli predict --model perf@champion --image
SCENE --out DIR`` ``--runs`` times (alternating); the run with the smallest total is kept. The
table lists the top-level imports by cumulative time (what the command pays for each), the
total, and whether MLflow, timm, torchvision, segmentation_models_pytorch or TorchDynamo were
imported at all.

    .venv/bin/python experiments/perf/imports.py --home H --scene S --before ../main --write

``--home``: a GEOTUNE_HOME with ``perf@champion`` registered (``bench.py --work W`` makes one
in ``W/home``); ``--scene``: a GeoTIFF the model takes (``W/s2048.tif``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
HEAVY = ("mlflow", "timm", "torchvision", "segmentation_models_pytorch", "torch._dynamo")
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def profile(tree: Path, home: Path, scene: Path) -> dict:
    """One run of the command under ``-X importtime``: top-level imports (cumulative seconds)."""
    out = Path(tempfile.mkdtemp(prefix="geotune-imports-"))
    env = dict(os.environ, GEOTUNE_HOME=str(home), PYTHONPATH=str(tree))
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "trainer.cli",
        "predict",
        "--model",
        "perf@champion",
        "--image",
        str(scene),
        "--out",
        str(out / "o"),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
    shutil.rmtree(out, ignore_errors=True)
    if r.returncode != 0:
        raise SystemExit(f"geotune predict failed in {tree}:\n{r.stderr[-2000:]}")
    top, seen = {}, set()
    for m in LINE.finditer(r.stderr):
        seen.add(m[4])
        if not m[3]:  # a top-level import: its cumulative time includes what it imported
            root = m[4].split(".")[0]
            top[root] = top.get(root, 0.0) + int(m[2]) / 1e6
    return {
        "total_s": round(sum(top.values()), 3),
        "top": sorted(((k, round(v, 3)) for k, v in top.items()), key=lambda kv: -kv[1])[:10],
        "heavy": [h for h in HEAVY if h in seen],
    }


def table(name: str, p: dict) -> list[str]:
    lines = [
        f"**{name}**: {p['total_s']:.2f} s of imports; imported of "
        f"{', '.join(HEAVY)}: {', '.join(p['heavy']) or 'none'}.",
        "",
        "| top-level import | cumulative s |",
        "|---|---|",
    ]
    return lines + [f"| {k} | {v:.3f} |" for k, v in p["top"]] + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--before", type=Path, help="another checkout (e.g. main) to compare with")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write imports.md beside this file")
    args = ap.parse_args()
    trees = {"this checkout": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            runs[name].append(profile(tree, args.home, args.scene))
    best = {k: min(v, key=lambda p: p["total_s"]) for k, v in runs.items()}
    lines = [
        "# Imports of `geotune predict` (`experiments/perf/imports.py`)",
        "",
        f"Recorded {datetime.datetime.now().isoformat(timespec='seconds')}; "
        f"{os.cpu_count()} CPUs; load average before: {', '.join(f'{x:.2f}' for x in load)}. "
        f"`python -X importtime` of the whole command, best of {args.runs} runs per tree, "
        "the trees in turn. Seconds under `-X importtime` (which adds its own overhead); "
        "compare the trees, not the absolute figures.",
        "",
    ]
    if "before" in best:
        lines += table("before", best["before"])
    lines += table("this checkout", best["this checkout"])
    text = "\n".join(lines)
    print(text)
    if args.write:
        (HERE / "imports.md").write_text(text)


if __name__ == "__main__":
    main()
