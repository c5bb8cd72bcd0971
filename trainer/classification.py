"""Scene classification: one class per chip (``label`` int64 ``[B]``), or several labels per chip
(``multi_label``: ``label`` float32 ``[B, K]`` of 0/1).

The network pools the backbone's embedding (class token or mean of tokens) into a linear or MLP
head (:class:`trainer.heads.ClassificationNet`). Metrics: accuracy and F1, micro and macro, plus
per-class IoU/F1/precision/recall and their mean IoU (``val/mIoU``, the checkpoint and early
stopping monitor for every task). Figures: confusion matrix (single-label), per-class bars and
a grid of validation chips with their label and prediction.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix, MultilabelConfusionMatrix

from datamodules.errors import UserError

from .losses import ClassificationLoss
from .metrics import classification_metric_dict
from .tasks import GeoTask, augment, shared


class ClassificationTask(GeoTask):
    kind = "classification"
    target_key = "label"

    def __init__(
        self,
        backbone: nn.Module,
        classes: list[dict],
        pool: str = "auto",
        head: str = "linear",
        hidden: int = 256,
        dropout: float = 0.0,
        multi_label: bool = False,
        ignore_index: int = 255,
        bands: list[str] | None = None,
        gsd: float = 10.0,
        loss: dict | None = None,
        optimizer=None,
        scheduler=None,
        finetune: str = "full",
        last_n: int = 0,
        augment: bool = True,
        overlay_chips: int = 8,
    ):
        """``ignore_index``: a single-label chip whose label is this value counts nowhere."""
        self.multi_label = multi_label
        config = {
            "pool": pool,
            "head": head,
            "hidden": hidden,
            "dropout": dropout,
            "multi_label": multi_label,
        }
        super().__init__(config, backbone, classes, **shared(locals()))

    def make_criterion(self, loss: dict) -> nn.Module:
        return ClassificationLoss(self.k, self.multi_label, self.ignore_index, **loss)

    @classmethod
    def backbone_overrides(cls, task_cfg: dict, entry) -> dict:
        # only the deepest features are pooled: do not run or return the others
        return {"out_indices": [entry.last_feature]}

    def confusion_matrix(self):
        if self.multi_label:
            return MultilabelConfusionMatrix(self.k)
        return MulticlassConfusionMatrix(self.k, ignore_index=self.ignore_index)

    def target(self, batch: dict) -> torch.Tensor:
        y = batch["label"]
        if self.multi_label and (y.dim() != 2 or y.shape[1] != self.k):
            raise UserError(
                f"task.multi_label=true needs labels [B, {self.k}] of 0/1 per class; the dataset gives "
                f"{tuple(y.shape)}. Set task.multi_label=false for one class per chip."
            )
        if not self.multi_label and y.dim() != 1:
            raise UserError(
                f"the dataset gives several labels per chip ({tuple(y.shape)}); set task.multi_label=true"
            )
        return y

    def labelled(self, target: torch.Tensor) -> int:
        return len(target) if self.multi_label else int((target != self.ignore_index).sum())

    def predict_classes(self, logits: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            from .heads import postprocess

            return postprocess(logits, multi_label=True)[1]
        return logits.argmax(1)

    def augment_batch(self, batch: dict) -> None:
        batch["image"], _ = augment(batch["image"])

    def metrics(self, stage: str, cm: torch.Tensor) -> dict[str, float]:
        return classification_metric_dict(stage, cm, self.slugs)

    def figures(self, stage: str, cm: torch.Tensor) -> dict:
        figs = super().figures(stage, cm)
        if stage == "val" and self._overlay is not None:
            from .figures import chip_grid_figure

            images, labels, preds = self._overlay
            names = [c["name"] for c in self.classes]

            def say(v) -> str:
                if self.multi_label:
                    return "+".join(names[i] for i in range(self.k) if v[i] > 0.5) or "-"
                return names[int(v)] if 0 <= int(v) < self.k else "unlabelled"

            titles = [
                (f"label: {say(y)}\npred: {say(p)}", say(y) == say(p))
                for y, p in zip(labels, preds, strict=True)
            ]
            figs["overlay"] = chip_grid_figure(
                images, self.bands, titles, f"val chips, epoch {self.current_epoch}"
            )
        return figs
