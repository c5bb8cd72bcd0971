"""Segmentation metrics from one confusion matrix (torchmetrics; synced across DDP ranks).

Keys follow one scheme: ``<stage>/mIoU``, ``<stage>/OA``, ``<stage>/IoU/<class-slug>``,
``<stage>/F1/<slug>``, ``<stage>/precision/<slug>``, ``<stage>/recall/<slug>``. A class with no
pixels in either the labels or the predictions has no IoU and does not count in the mean.
"""

from __future__ import annotations

import torch


def scores(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class IoU/F1/precision/recall and OA from a confusion matrix ``[true, pred]``."""
    cm = cm.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    nan = torch.tensor(float("nan"), dtype=cm.dtype, device=cm.device)
    iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn), nan)
    precision = torch.where(tp + fp > 0, tp / (tp + fp), nan)
    recall = torch.where(tp + fn > 0, tp / (tp + fn), nan)
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), nan)
    total = cm.sum()
    oa = tp.sum() / total if total > 0 else nan
    return {
        "IoU": iou,
        "F1": f1,
        "precision": precision,
        "recall": recall,
        "OA": oa,
        "mIoU": torch.nanmean(iou),
    }


def metric_dict(stage: str, cm: torch.Tensor, slugs: list[str]) -> dict[str, float]:
    s = scores(cm)
    out = {f"{stage}/mIoU": float(s["mIoU"]), f"{stage}/OA": float(s["OA"])}
    for key in ("IoU", "F1", "precision", "recall"):
        for slug, v in zip(slugs, s[key].tolist(), strict=True):
            if v == v:  # not NaN
                out[f"{stage}/{key}/{slug}"] = v
    return out
