"""Pictures people look at: confusion matrix, per-class bars, prediction overlays, chip grids and
the benchmark's score-versus-label-budget plot (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402


def confusion_figure(cm: np.ndarray, names: list[str], title: str):
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * k, 1.0 + 0.6 * k), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def class_bars(values: dict[str, list[float]], names: list[str], title: str):
    """Grouped bars: one group per class, one bar per metric (IoU, F1, ...)."""
    fig, ax = plt.subplots(figsize=(max(4, 1.0 * len(names) + 2), 3.2), dpi=100)
    width = 0.8 / max(len(values), 1)
    x = np.arange(len(names))
    for i, (metric, vals) in enumerate(values.items()):
        ax.bar(x + i * width, np.nan_to_num(vals), width, label=metric)
    ax.set_xticks(x + width * (len(values) - 1) / 2, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def rgb_composite(image: np.ndarray, bands: list[str]) -> np.ndarray:
    """``[C, H, W]`` raw values → ``[H, W, 3]`` in 0..1 (red/green/blue if present, 2–98% stretch)."""
    idx = [bands.index(b) for b in ("red", "green", "blue") if b in bands]
    if len(idx) < 3:
        idx = [0, min(1, image.shape[0] - 1), min(2, image.shape[0] - 1)]
    rgb = image[idx].astype(np.float32)
    out = np.zeros_like(rgb)
    for i in range(3):
        lo, hi = np.nanpercentile(rgb[i], (2, 98))
        out[i] = np.clip((rgb[i] - lo) / max(hi - lo, 1e-6), 0, 1)
    return out.transpose(1, 2, 0)


def overlay_figure(
    images,
    masks,
    preds,
    bands: list[str],
    colors: list[str],
    names: list[str],
    ignore_index: int,
    title: str,
):
    """Rows of (image, label, prediction) for a few chips; multi-date chips ``[n, C, T, H, W]``
    get one image column per date (labels drawn over the last)."""
    n = len(images)
    images = np.asarray(images)
    frames = images.shape[2] if images.ndim == 5 else 1
    cols = frames + 2
    cmap = ListedColormap(colors)
    fig, axes = plt.subplots(n, cols, figsize=(2.5 * cols, 2.5 * n), dpi=100, squeeze=False)
    for r in range(n):
        dates = [images[r][:, t] for t in range(frames)] if frames > 1 else [images[r]]
        rgbs = [rgb_composite(d, bands) for d in dates]
        for t, rgb in enumerate(rgbs):
            axes[r, t].imshow(rgb)
        m = np.ma.masked_equal(masks[r], ignore_index)
        axes[r, frames].imshow(rgbs[-1])
        axes[r, frames].imshow(
            m, cmap=cmap, vmin=0, vmax=len(colors) - 1, alpha=0.7, interpolation="nearest"
        )
        axes[r, frames + 1].imshow(
            preds[r], cmap=cmap, vmin=0, vmax=len(colors) - 1, interpolation="nearest"
        )
        for a in axes[r]:
            a.set_axis_off()
    for t in range(frames):
        axes[0, t].set_title("image" if frames == 1 else f"date {t + 1}")
    axes[0, frames].set_title("label")
    axes[0, frames + 1].set_title("prediction")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def chip_grid_figure(images, bands: list[str], titles: list[tuple[str, bool]], title: str):
    """A grid of chips, each titled (text, correct?) in green when right and red when wrong."""
    n = len(images)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.3 * rows), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        img = np.asarray(images[i])
        ax.imshow(rgb_composite(img[:, -1] if img.ndim == 4 else img, bands))
        text, ok = titles[i]
        ax.set_title(text, fontsize=8, color="green" if ok else "red")
    fig.suptitle(title)
    fig.tight_layout(h_pad=1.5)
    return fig


def budget_plot(table: dict, metric: str, title: str):
    """``table``: backbone → list of (budget, mean, std) → lines with error bars over budgets."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for backbone, rows in table.items():
        rows = sorted(rows)
        x = [r[0] for r in rows]
        ax.errorbar(
            x,
            [r[1] for r in rows],
            yerr=[r[2] for r in rows],
            marker="o",
            capsize=4,
            label=backbone,
        )
    ax.set_xscale("log")
    ticks = sorted({r[0] for rows in table.values() for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training units (polygons / regions)")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig
