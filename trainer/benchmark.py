"""``geotune benchmark``: backbones × label budgets × seeds on one dataset's fixed splits.

Every cell is a normal ``train(cfg)`` run (a child of one MLflow parent run) with the same task,
data, trainer and epochs budget; each backbone keeps its own config (``conf/backbone/<name>.yaml``:
its normalisation and recommended fine-tune mode), with the benchmark's ``backbone.*`` values
(e.g. ``backbone.size=tiny``) applied on top of each. Budgets keep that many training label units
(``data.budget``: stratified per class, nested across budgets); ``all`` keeps every unit.
Validation and test splits are never subsampled, so every cell is scored on the same chips.

Output in ``<out_dir>/<name>/``: ``results.csv`` (one row per cell), ``results.md`` (mean ± std
over seeds per backbone and budget) and ``plot.png`` (test mIoU against the number of labelled
training units, one line per backbone, error bars = std over seeds); the three are also logged
to the parent run.
"""

from __future__ import annotations

import csv
import gc
import os
import shutil
import subprocess
import time
from itertools import product
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from datamodules.errors import UserError

CELL_KEYS = ("data", "task", "trainer", "logger", "callbacks")


class BenchmarkError(UserError):
    pass


def git_commit() -> str:
    """The commit of the geotune checkout running this (``-dirty`` with local changes)."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=True
        )
        return run.stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + ("-dirty" if dirty else "")


def backbone_config(name: str, overrides: dict) -> DictConfig:
    """The ``backbone=<name>`` config with the benchmark's non-null ``backbone.*`` values on top."""
    from .config import compose, group_options

    known = group_options("backbone")
    if name not in known:
        raise BenchmarkError(
            f"unknown backbone {name!r} in backbones=[...]; choose from {', '.join(known)}"
        )
    base = compose(f"backbone/{name}").backbone
    return OmegaConf.merge(base, {k: v for k, v in overrides.items() if v is not None})


def check_single_process(trainer: DictConfig) -> None:
    strategy = trainer.get("strategy")
    devices = str(trainer.get("devices", 1))
    if (
        strategy not in (None, "auto")
        or devices not in ("1", "auto")
        or int(trainer.get("num_nodes", 1)) > 1
    ):
        raise BenchmarkError(
            "geotune benchmark runs its cells one after another in one process; DDP and several "
            "devices do not combine with it. Use trainer=cpu or trainer=gpu (one device)."
        )


def check_test_labels(ds) -> None:
    """A benchmark compares test scores: refuse a dataset without test labels up front."""
    if not ds.manifest.splits.get("units", {}).get("test"):
        raise BenchmarkError(
            f"dataset {ds.id!r} has no test labels, and a benchmark compares backbones on its "
            "test split (geotune data show shows the splits). Label more places in the scene and "
            "ingest it again, so that the block split can hold some out for testing."
        )


def parse_budgets(budgets) -> list[int | None]:
    out: list[int | None] = []
    for b in budgets:
        if str(b).lower() == "all":
            out.append(None)
        elif isinstance(b, int) or str(b).isdigit():
            out.append(int(b))
        else:
            raise BenchmarkError(f"budgets are numbers of label units or 'all', not {b!r}")
    if not out:
        raise BenchmarkError("budgets=[...] is empty")
    return out


def plan_budgets(cfg: DictConfig, budgets: list[int | None]) -> list[tuple[int | None, int]]:
    """(budget, training units it keeps) for each distinct budget, smallest first."""
    import warnings

    from datamodules.datamodule import GeotuneDataModule

    seen: dict[int, int | None] = {}
    for b in budgets:
        dm = GeotuneDataModule(cfg.data.dataset, seed=int(cfg.seeds[0]), budget=b)
        units = dm.train_units()
        if units in seen:
            warnings.warn(
                f"budget {b or 'all'} keeps the same {units} training units as budget "
                f"{seen[units] or 'all'}; it is run once",
                stacklevel=2,
            )
            if b is None:
                seen[units] = None
            continue
        seen[units] = b
    return sorted(((b, u) for u, b in seen.items()), key=lambda t: t[1])


def cell_config(
    cfg: DictConfig, backbone: str, budget: int | None, seed: int, name: str
) -> DictConfig:
    cell = OmegaConf.create({k: OmegaConf.to_container(cfg[k]) for k in CELL_KEYS})
    cell.backbone = backbone_config(backbone, OmegaConf.to_container(cfg.backbone))
    cell.data.budget = budget
    cell.seed = int(seed)
    cell.run_name = f"{name}/{backbone}/budget-{budget or 'all'}/seed-{seed}"
    cell.resume = None
    cell.register = {"name": None, "alias": None}
    return cell


def benchmark(cfg: DictConfig) -> dict:
    """Run the grid; returns the output folder, the rows and the parent MLflow run id."""
    from datamodules.manifest import load_dataset

    from .config import flat_params, register_resolvers
    from .registry import EXPERIMENT, setup_mlflow
    from .train import _output_dir, task_class, train

    register_resolvers()
    check_single_process(cfg.trainer)
    ds = load_dataset(cfg.data.dataset)
    check_test_labels(ds)
    kind = task_class(cfg).kind
    name = cfg.name or f"{ds.id}-{kind}"
    out = Path(cfg.out_dir) / name
    backbones = list(cfg.backbones)
    for b in backbones:
        backbone_config(b, {})
    seeds = [int(s) for s in cfg.seeds]
    plan = plan_budgets(cfg, parse_budgets(cfg.budgets))
    cells = list(product(backbones, plan, seeds))
    commit = git_commit()
    client = setup_mlflow()
    parent = client.create_run(
        client.get_experiment_by_name(EXPERIMENT).experiment_id,
        run_name=f"benchmark-{name}",
        tags={
            "geotune.benchmark": name,
            "dataset_id": ds.id,
            "task": kind,
            "git_commit": commit,
            "owner": ds.manifest.owner,
        },
    )
    pid = parent.info.run_id
    for k, v in flat_params(cfg).items():
        client.log_param(pid, k, v)
    work = _output_dir()
    print(
        f"geotune benchmark {name}: {len(backbones)} backbones x {len(plan)} budgets x "
        f"{len(seeds)} seeds = {len(cells)} runs on dataset {ds.id} ({kind}); MLflow parent run {pid}"
    )
    rows = []
    try:
        for i, (b, (budget, units), seed) in enumerate(cells, 1):
            print(
                f"\n[{i}/{len(cells)}] {b}, budget {budget or 'all'} ({units} units), seed {seed}"
            )
            cell_dir = work / f"{b}-budget-{budget or 'all'}-seed-{seed}"
            result = train(
                cell_config(cfg, b, budget, seed, name), parent_run_id=pid, output_dir=cell_dir
            )
            if not cfg.keep_checkpoints:
                shutil.rmtree(cell_dir / "checkpoints", ignore_errors=True)
            gc.collect()  # the cell's model, trainer and loader workers
            rows.append(
                result_row(
                    cell_config(cfg, b, budget, seed, name), result, budget, units, commit, ds
                )
            )
            print(f"    test/mIoU {rows[-1]['test_mIoU']:.4f}  ({rows[-1]['train_seconds']:.0f} s)")
        files = write_results(out, rows, ds, kind, cfg, commit)
        for f in files:
            client.log_artifact(pid, str(f), "benchmark")
        for (b, units), stat in summarize(rows).items():
            client.log_metric(pid, f"{b}/units_{units}/test_mIoU_mean", stat["mean"])
        client.set_terminated(pid, "FINISHED")
    except BaseException:
        client.set_terminated(pid, "FAILED")
        print(
            f"benchmark {name} stopped after {len(rows)} of {len(cells)} runs; nothing written to {out}. "
            f"The finished runs are children of MLflow run {pid}."
        )
        raise
    return {"dir": out, "rows": rows, "parent_run_id": pid, "name": name}


def result_row(cell: DictConfig, result: dict, budget, units: int, commit: str, ds) -> dict:
    test = result["test"]
    row = {
        "backbone": cell.backbone.name,
        "size": cell.backbone.size,
        "weights": "random" if str(cell.backbone.weights) == "random" else "pretrained",
        "finetune": cell.backbone.finetune,
        "budget": budget or "all",
        "units": units,
        "seed": int(cell.seed),
        "test_mIoU": test.get("test/mIoU", float("nan")),
    }
    for c in ds.classes:
        row[f"test_IoU_{c['slug']}"] = test.get(f"test/IoU/{c['slug']}", float("nan"))
    for key in ("test/OA", "test/accuracy_micro", "test/F1_macro"):
        if key in test:
            row[key.replace("/", "_")] = test[key]
    row |= {
        "epochs": result["epochs"],
        "train_seconds": result["train_seconds"],
        "inference_chips_per_s": round(test.get("test/chips_per_s", float("nan")), 2),
        "parameters": result["parameters"],
        "trainable_parameters": result["trainable_parameters"],
        "mlflow_run_id": result["run_id"],
        "git_commit": commit,
    }
    return row


def summarize(rows: list[dict], key: str = "test_mIoU") -> dict:
    """(backbone, units) → mean, std (sample, 0 for one seed) and n over seeds."""
    import numpy as np

    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["units"]), []).append(float(r[key]))
    return {
        k: {
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "n": len(v),
        }
        for k, v in groups.items()
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def write_results(
    out: Path, rows: list[dict], ds, kind: str, cfg: DictConfig, commit: str
) -> list[Path]:
    """results.csv, results.md and plot.png in ``out`` (each written whole, then moved in place)."""
    import matplotlib.pyplot as plt

    from .figures import budget_plot

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows)
    stats = summarize(rows)
    table: dict[str, list] = {}
    for (b, units), s in stats.items():
        table.setdefault(b, []).append((units, s["mean"], s["std"]))
    fig = budget_plot(
        table, "test mIoU", f"{ds.id}: {kind}, mean ± std over {len(cfg.seeds)} seed(s)"
    )
    tmp = out / f".plot.{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out / "plot.png")
    tmp = out / f".results.{os.getpid()}.md"
    tmp.write_text(report_markdown(rows, stats, ds, kind, cfg, commit))
    os.replace(tmp, out / "results.md")
    return [out / "results.csv", out / "results.md", out / "plot.png"]


def report_markdown(rows, stats, ds, kind: str, cfg: DictConfig, commit: str) -> str:
    import platform

    import torch

    units = sorted({r["units"] for r in rows})
    label = {r["units"]: r["budget"] for r in rows}
    early = (
        "early stopping on val/mIoU, best epoch restored"
        if ds.manifest.splits.get("units", {}).get("val")
        else "no validation labels: every epoch trained, the last one tested"
    )
    first = {}
    for r in rows:
        first.setdefault(r["backbone"], r)
    lines = [
        f"# Benchmark `{cfg.name or ds.id + '-' + kind}`",
        "",
        f"Dataset `{ds.id}`: {kind}, {ds.num_classes} classes ({', '.join(ds.class_names)}), "
        f"sensor {ds.manifest.sensor or '-'}, bands {', '.join(ds.bands)}; fixed spatial splits, "
        "validation and test never subsampled. Budgets keep that many training label units "
        "(stratified per class, nested across budgets; each seed draws its own subset).",
        "",
        f"Same for every backbone: task `{cfg.task._target_.rsplit('.', 1)[1]}`, "
        f"max_epochs={cfg.trainer.max_epochs} ({early}), "
        f"patch {cfg.data.patch_size or ds.manifest.chip_size or 'size from the labels'}, batch {cfg.data.batch_size}, "
        f"chips/epoch {cfg.data.chips_per_epoch or 'from the labels'}, "
        f"lr {cfg.task.optimizer.lr}, precision {cfg.trainer.precision}. Each backbone: its own "
        "normalisation and recommended fine-tune mode.",
        "",
        f"git {commit}; {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, torch {torch.__version__}.",
        "",
    ]
    if any(r["weights"] == "random" for r in rows):
        lines += [
            "**Random initialisation** (`backbone.weights=random`): these runs compare the "
            "architectures and fine-tune recipes trained from scratch, not the pretrained models.",
            "",
        ]
    lines += ["## Test mIoU, mean ± std over seeds", ""]
    head = ["backbone (size, weights, fine-tune)"] + [
        f"{label[u]} ({u} units)" if label[u] == "all" else f"{u} units" for u in units
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, r in first.items():
        cells = [
            f"{stats[(b, u)]['mean']:.3f} ± {stats[(b, u)]['std']:.3f}" if (b, u) in stats else ""
            for u in units
        ]
        lines.append(
            f"| {b} ({r['size']}, {r['weights']}, {r['finetune']}) | " + " | ".join(cells) + " |"
        )
    lines += ["", "## Per cell: means over seeds", "", *_cell_table(rows, list(first), units)]
    lines += ["", "`results.csv` has every run (with its MLflow run id); `plot.png` the curve.", ""]
    return "\n".join(lines)


def _cell_table(rows: list[dict], backbones: list[str], units: list[int]) -> list[str]:
    """Markdown rows: per backbone and number of units, the means over seeds."""
    import numpy as np

    per_class = [k for k in rows[0] if k.startswith("test_IoU_")]
    head = [
        "backbone",
        "units",
        "test mIoU",
        *[k[len("test_IoU_") :] + " IoU" for k in per_class],
        "epochs",
        "train s",
        "inference chips/s",
        "parameters",
        "trainable",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = ["test_mIoU", *per_class, "epochs", "train_seconds", "inference_chips_per_s"]
    for b in backbones:
        for u in units:
            sel = [r for r in rows if r["backbone"] == b and r["units"] == u]
            if not sel:
                continue
            mean = {k: float(np.nanmean([float(r[k]) for r in sel])) for k in keys}
            lines.append(
                f"| {b} | {u} | {mean['test_mIoU']:.3f} | "
                + " | ".join(f"{mean[k]:.3f}" for k in per_class)
                + f" | {mean['epochs']:.1f} | {mean['train_seconds']:.1f} | {mean['inference_chips_per_s']:.1f}"
                + f" | {sel[0]['parameters']:,} | {sel[0]['trainable_parameters']:,} |"
            )
    return lines


def print_summary(result: dict) -> None:
    print(f"\nbenchmark {result['name']}: test mIoU, mean ± std over seeds")
    for (b, units), s in sorted(summarize(result["rows"]).items()):
        print(f"  {b:22s} {units:>6d} units   {s['mean']:.4f} ± {s['std']:.4f}  (n={s['n']})")
    print(f"\nwritten: {result['dir']}/results.csv, results.md, plot.png")
    print(f"MLflow parent run: {result['parent_run_id']}  ({time.strftime('%Y-%m-%d %H:%M')})")
