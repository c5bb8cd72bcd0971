"""Metrics from confusion matrices (torchmetrics states, so they are synced across DDP ranks).

Keys follow one scheme for every task: ``<stage>/mIoU``, ``<stage>/IoU/<class-slug>``,
``<stage>/F1/<slug>``, ``<stage>/precision/<slug>``, ``<stage>/recall/<slug>``; segmentation and
change add ``<stage>/OA`` (overall pixel accuracy); classification adds ``<stage>/accuracy_micro``,
``<stage>/accuracy_macro``, ``<stage>/F1_micro`` and ``<stage>/F1_macro`` (torchmetrics'
definitions: macro averages skip classes with no label and no prediction; multi-label accuracy
counts every (sample, label) decision). A class with no pixels or samples in either the labels
or the predictions has no IoU and does not count in the mean.
"""

from __future__ import annotations

import torch

PER_CLASS = ("IoU", "F1", "precision", "recall")


def stat_scores(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class tp/fp/fn/tn from a multiclass ``[K, K]`` (true, pred) or multi-label
    ``[K, 2, 2]`` (``[[tn, fp], [fn, tp]]`` per label) confusion matrix."""
    cm = cm.double()
    if cm.dim() == 3:
        return {"tp": cm[:, 1, 1], "fp": cm[:, 0, 1], "fn": cm[:, 1, 0], "tn": cm[:, 0, 0]}
    tp = cm.diag()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": cm.sum() - tp - fp - fn}


def _div(a: torch.Tensor, b: torch.Tensor, empty: float = float("nan")) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp(min=1e-300), torch.full_like(a, empty))


def scores(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class IoU/F1/precision/recall (NaN where undefined), OA and mIoU from a confusion matrix."""
    s = stat_scores(cm)
    tp, fp, fn = s["tp"], s["fp"], s["fn"]
    iou = _div(tp, tp + fp + fn)
    total = (tp + fn).sum() if cm.dim() == 2 else (tp + fp + fn + s["tn"]).sum()
    correct = tp.sum() if cm.dim() == 2 else (tp + s["tn"]).sum()
    return {
        "IoU": iou,
        "F1": _div(2 * tp, 2 * tp + fp + fn),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "OA": _div(correct, total),
        "mIoU": torch.nanmean(iou),
    }


def metric_dict(stage: str, cm: torch.Tensor, slugs: list[str]) -> dict[str, float]:
    """Segmentation / change metrics: mIoU, OA and the per-class scores."""
    s = scores(cm)
    out = {f"{stage}/mIoU": float(s["mIoU"]), f"{stage}/OA": float(s["OA"])}
    return out | _per_class(stage, s, slugs)


def classification_metric_dict(stage: str, cm: torch.Tensor, slugs: list[str]) -> dict[str, float]:
    """Classification metrics (single-label ``[K, K]`` or multi-label ``[K, 2, 2]`` matrix)."""
    s = stat_scores(cm)
    tp, fp, fn, tn = s["tp"], s["fp"], s["fn"], s["tn"]
    multilabel = cm.dim() == 3
    present = torch.ones_like(tp) if multilabel else (tp + fp + fn > 0).double()

    def macro(per_class: torch.Tensor) -> float:
        per_class = torch.nan_to_num(per_class, nan=0.0)  # torchmetrics: 0/0 counts as 0
        return float((per_class * present).sum() / present.sum().clamp(min=1))

    if multilabel:
        acc_micro = _div((tp + tn).sum(), (tp + tn + fp + fn).sum())
        acc_per = _div(tp + tn, tp + tn + fp + fn)
    else:
        acc_micro = _div(tp.sum(), (tp + fn).sum())
        acc_per = _div(tp, tp + fn)
    sc = scores(cm)
    out = {
        f"{stage}/mIoU": float(sc["mIoU"]),
        f"{stage}/accuracy_micro": float(acc_micro),
        f"{stage}/accuracy_macro": macro(acc_per),
        f"{stage}/F1_micro": float(torch.nan_to_num(_div(2 * tp.sum(), (2 * tp + fp + fn).sum()))),
        f"{stage}/F1_macro": macro(sc["F1"]),
    }
    return out | _per_class(stage, sc, slugs)


def _per_class(stage: str, s: dict, slugs: list[str]) -> dict[str, float]:
    out = {}
    for key in PER_CLASS:
        for slug, v in zip(slugs, s[key].tolist(), strict=True):
            if v == v:  # not NaN
                out[f"{stage}/{key}/{slug}"] = v
    return out
