"""results.md and the plots of experiments/embeddings from results.json (bench.py report)."""

from __future__ import annotations

from pathlib import Path

GPU_COMMAND = (
    "python experiments/embeddings/bench.py fewshot --backbone clay_v1_5 "
    "--weights /data/clay-v1.5.ckpt   # on a GPU machine (the encoder runs on the first CUDA "
    "GPU); likewise --backbone prithvi_eo_v2_300 --weights /data/Prithvi_EO_V2_300M.pt"
)


def table(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def write_report(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md = [
        "# Embeddings: throughput, search, few-shot value\n",
        "Made by `experiments/embeddings/bench.py` (see its docstring for what each part "
        "measures); figures from one run per section on 2 shared CPU cores, with the load "
        "average when the section ran. Ratios compare figures taken in the same process.\n",
    ]
    tp = data.get("throughput")
    if tp:
        md += [
            "## Throughput: `embed_scene` vs the bare forward over the same chips\n",
            "Random weights (speed does not depend on them); chips side by side (Clay 256 px, "
            "Prithvi 224 px); float32 vectors. `ratio` = bare forward time / embed time "
            "(target >= 0.9). Bytes per km² at 10 m pixels, the whole file.\n",
            table(
                tp,
                [
                    "backbone",
                    "size",
                    "precision",
                    "chips",
                    "dim",
                    "embed_s",
                    "bare_forward_s",
                    "ratio_bare_over_embed",
                    "chips_per_s",
                    "mpx_per_s",
                    "bytes_per_km2_float32",
                    "bytes_per_km2_float16",
                    "load_avg_1_5_15",
                ],
            ),
        ]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        labels = [f"{r['backbone'].split('_')[0]} {r['size']}\n{r['precision']}" for r in tp]
        ax.bar(range(len(tp)), [r["ratio_bare_over_embed"] for r in tp], color="#4c72b0")
        ax.axhline(0.9, color="#c44e52", ls="--", label="target 0.9")
        ax.set_xticks(range(len(tp)), labels, fontsize=7)
        ax.set_ylabel("bare forward / embed time")
        ax.set_title("embedding pipeline efficiency")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=120)
        plt.close(fig)
        md.append("\n![throughput](throughput.png)\n")
    se = data.get("search")
    if se:
        md += [
            "## Search: exact vs approximate (FAISS IVF, float16 vectors)\n",
            "Synthetic 1024-d vectors with low intrinsic dimension (see bench.py), stored as "
            "float16; 20 queries; latency per query; recall@20 of the approximate index "
            "against exact (target >= 0.95).\n",
            table(
                se,
                [
                    "n",
                    "exact_ms",
                    "approx_ms",
                    "speedup",
                    "recall_at_20",
                    "cells",
                    "nprobe",
                    "build_s",
                    "index_mb",
                    "vectors_mb",
                    "load_avg_1_5_15",
                ],
            ),
        ]
    fs = data.get("fewshot")
    if fs:
        md += [
            "## Few-shot value on the demo scene\n",
            "**Random tiny encoders say nothing about the real models**: this run only shows the "
            "path works end to end and gives the baseline a random projection reaches. The real "
            f"test is the official weights on a GPU:\n\n    {GPU_COMMAND}\n\n",
            f"Chips of {fs['chip']} px every {fs['stride']} px on the demo's Sentinel-2 scene; a "
            "chip's label is the class of >= 80 % of its labelled pixels (>= 25 % labelled), its "
            "split that of the dataset's spatial blocks; a logistic regression on standardised "
            f"embeddings of k train chips per class, {fs['seeds']} draws; macro-F1 on the "
            f"{fs['test_chips']} test chips. The ResNet-18 UNet is the demo's fine-tune on all "
            "labels (random init, 12 epochs), scored on the same chips by its majority class.\n",
        ]
        rows = [
            {"encoder": f"probe on {name}"}
            | {
                f"k={k}": f"{v['macro_f1_mean']:.3f} ± {v['macro_f1_std']:.3f}"
                for k, v in probe.items()
            }
            for name, probe in fs["probes"].items()
        ]
        rows.append({"encoder": "ResNet-18 UNet fine-tune", "all labels": fs["resnet_macro_f1"]})
        md.append(table(rows, ["encoder", "k=1", "k=5", "k=20", "all labels"]))
        md.append(
            "\nThe demo's labels come from a spectral rule on the same pixels "
            "(`datamodules/demo_labels.py`), so a chip's mean spectrum nearly decides its class: "
            "even random encoders, which keep much of it, separate the classes with 20 chips per "
            "class. That is why the probe numbers here are high, and why they do not measure the "
            "value of pretraining.\n"
        )
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, probe in fs["probes"].items():
            ks = [int(k) for k in probe]
            ax.errorbar(
                ks,
                [probe[k]["macro_f1_mean"] for k in probe],
                yerr=[probe[k]["macro_f1_std"] for k in probe],
                marker="o",
                capsize=3,
                label=f"probe: {name}",
            )
        ax.axhline(
            fs["resnet_macro_f1"], color="k", ls="--", label="ResNet-18 UNet fine-tune, all labels"
        )
        ax.set_xscale("log")
        ax.set_xticks([1, 5, 20], ["1", "5", "20"])
        ax.set_xlabel("labelled chips per class")
        ax.set_ylabel("macro-F1 (test chips)")
        ax.set_title("few-shot probes (random tiny encoders: not the real models)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "fewshot.png", dpi=120)
        plt.close(fig)
        md.append("\n![few-shot](fewshot.png)\n")
    (out / "results.md").write_text("\n".join(md))
