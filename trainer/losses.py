"""Losses: dense (segmentation, change) and per-chip (classification), all configurable by weight.

``DenseLoss``: a weighted sum of cross-entropy, Dice and focal losses honouring the ignore index
and optional class weights. ``ClassificationLoss``: cross-entropy (optional label smoothing) for
one class per chip (chips labelled ``ignore_index`` count nowhere), binary cross-entropy per label for multi-label; class weights in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import UserError


def _weights(class_weights: list[float] | None, k: int) -> torch.Tensor | None:
    if class_weights is None:
        return None
    if len(class_weights) != k:
        raise UserError(
            f"task.loss.class_weights has {len(class_weights)} values; the dataset has {k} classes "
            "(give one weight per class, in class id order)"
        )
    return torch.tensor(class_weights, dtype=torch.float32)


class DenseLoss(nn.Module):
    """Weighted sum of cross-entropy, Dice and focal losses, all honouring the ignore index."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int,
        ce: float = 1.0,
        dice: float = 0.0,
        focal: float = 0.0,
        class_weights: list[float] | None = None,
    ):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

        if not (ce or dice or focal):
            raise UserError("task.loss: give at least one of ce, dice, focal a non-zero weight")
        self.weights = {"ce": ce, "dice": dice, "focal": focal}
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", _weights(class_weights, num_classes))
        self.dice = DiceLoss("multiclass", ignore_index=ignore_index) if dice else None
        self.focal = FocalLoss("multiclass", ignore_index=ignore_index) if focal else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.weights["ce"]:
            loss = loss + self.weights["ce"] * F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=self.ignore_index
            )
        if self.dice is not None:
            loss = loss + self.weights["dice"] * self.dice(logits, target)
        if self.focal is not None:
            loss = loss + self.weights["focal"] * self.focal(logits, target)
        return loss


class ClassificationLoss(nn.Module):
    """Cross-entropy over classes, or binary cross-entropy per label when ``multi_label``."""

    def __init__(
        self,
        num_classes: int,
        multi_label: bool = False,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
    ):
        super().__init__()
        self.multi_label = multi_label
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", _weights(class_weights, num_classes))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(
                logits, target.to(logits.dtype), pos_weight=self.class_weights
            )
        return F.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
