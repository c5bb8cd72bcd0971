"""LightningModules per task. Built by Hydra (``conf/task/*.yaml``) around a network from
:mod:`trainer.heads`; optimizer and scheduler arrive as ``_partial_`` callables.
"""

from __future__ import annotations

import math
from datetime import date

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from datamodules.errors import UserError

from .metrics import metric_dict, scores


def warmup_cosine(
    optimizer, total_steps: int, warmup_fraction: float = 0.05, min_factor: float = 0.01
):
    """Linear warm-up then cosine decay to ``min_factor`` of the base LR, stepped per batch."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SegLoss(nn.Module):
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

        self.weights = {"ce": ce, "dice": dice, "focal": focal}
        self.ignore_index = ignore_index
        self.register_buffer(
            "class_weights",
            torch.tensor(class_weights, dtype=torch.float32) if class_weights else None,
        )
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


def metadata_from_batch(backbone: nn.Module, batch: dict, gsd: float) -> dict:
    """What the backbone needs beside pixels (Clay: time/latlon/waves/gsd; Prithvi-TL: coords)."""
    if not hasattr(backbone, "make_metadata"):
        return {}
    dates = [
        [date.fromordinal(int(o)) if int(o) > 0 else None for o in row]
        for row in batch["date_ord"].tolist()
    ]
    return backbone.make_metadata(dates=dates, lonlat=batch["lonlat"], gsd=gsd)


def augment(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and 90° rotations per sample, identical for image and mask."""
    out_i, out_m = [], []
    for img, m in zip(image, mask, strict=True):
        k = int(torch.randint(4, ()))
        img, m = torch.rot90(img, k, (-2, -1)), torch.rot90(m, k, (-2, -1))
        if torch.rand(()) < 0.5:
            img, m = img.flip(-1), m.flip(-1)
        out_i.append(img)
        out_m.append(m)
    return torch.stack(out_i), torch.stack(out_m)


class SegmentationTask(L.LightningModule):
    def __init__(
        self,
        backbone: nn.Module,
        classes: list[dict],
        decoder: str = "auto",
        decoder_channels: int = 256,
        ignore_index: int = 255,
        bands: list[str] | None = None,
        gsd: float = 10.0,
        loss: dict | None = None,
        optimizer=None,
        scheduler=None,
        finetune: str = "full",
        last_n: int = 0,
        augment: bool = True,
        overlay_chips: int = 4,
    ):
        super().__init__()
        from .heads import SegmentationNet

        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.net = SegmentationNet(backbone, len(classes), decoder, decoder_channels, gsd=gsd)
        self.classes = classes
        self.slugs = [c["slug"] for c in classes]
        self.k = len(classes)
        self.ignore_index = ignore_index
        self.bands = bands or list(backbone.spec.bands)
        self.gsd = gsd
        self.criterion = SegLoss(self.k, ignore_index, **(loss or {}))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.do_augment = augment
        self.overlay_chips = overlay_chips
        self.cms = nn.ModuleDict(
            {
                s: MulticlassConfusionMatrix(self.k, ignore_index=ignore_index)
                for s in ("val", "test")
            }
        )
        self._overlay: list | None = None
        self.last_confusion: dict[str, np.ndarray] = {}
        self._apply_finetune(finetune, last_n)

    # -- fine-tuning modes ------------------------------------------------------------------
    def _apply_finetune(self, mode: str, last_n: int) -> None:
        groups = self.net.backbone.block_groups()
        if mode == "full":
            frozen = []
        elif mode == "frozen":
            frozen = groups
        elif mode == "last_n":
            if last_n < 1:
                raise UserError("backbone.finetune=last_n needs backbone.last_n >= 1")
            frozen = groups[: max(0, len(groups) - last_n)]
        else:
            raise UserError(f"backbone.finetune must be full, frozen or last_n, not {mode!r}")
        self._frozen = nn.ModuleList(frozen)
        for g in frozen:
            for p in g.parameters():
                p.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        for g in self._frozen:
            g.eval()  # frozen layers keep their normalisation statistics

    # -- steps --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, **metadata) -> torch.Tensor:
        return self.net(x, **metadata)

    def _logits(self, batch: dict) -> torch.Tensor:
        return self.net(batch["image"], **metadata_from_batch(self.net.backbone, batch, self.gsd))

    def training_step(self, batch, batch_idx):
        if self.do_augment:
            batch["image"], batch["mask"] = augment(batch["image"], batch["mask"])
        logits = self._logits(batch)
        loss = self.criterion(logits, batch["mask"])
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits)
        )
        return loss

    def _eval_step(self, stage: str, batch, batch_idx):
        logits = self._logits(batch)
        if (batch["mask"] != self.ignore_index).any():
            loss = self.criterion(logits, batch["mask"])
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(logits))
        pred = logits.argmax(1)
        self.cms[stage].update(pred, batch["mask"])
        if stage == "val" and batch_idx == 0 and self.overlay_chips:
            n = self.overlay_chips
            img = batch["image"][:n]
            img = img[:, :, 0] if img.dim() == 5 else img
            self._overlay = [
                img.cpu().numpy(),
                batch["mask"][:n].cpu().numpy(),
                pred[:n].cpu().numpy(),
            ]

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch, batch_idx)

    def _eval_epoch_end(self, stage: str) -> None:
        cm = self.cms[stage].compute()
        self.cms[stage].reset()
        metrics = metric_dict(stage, cm, self.slugs)
        main = f"{stage}/mIoU"
        self.log(main, metrics.pop(main), prog_bar=True)
        self.log_dict(metrics, prog_bar=False)
        self.last_confusion[stage] = cm.cpu().numpy()
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._log_figures(stage, cm.cpu())

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _log_figures(self, stage: str, cm: torch.Tensor) -> None:
        from .figures import class_bars, confusion_figure, overlay_figure

        logger = self.logger
        if (
            logger is None
            or not hasattr(logger, "run_id")
            or not hasattr(logger.experiment, "log_figure")
        ):
            return
        import matplotlib.pyplot as plt

        names = [c["name"] for c in self.classes]
        tag = "test" if stage == "test" else f"val/epoch_{self.current_epoch:03d}"
        s = scores(cm)
        figs = {
            f"figures/{tag}_confusion.png": confusion_figure(
                cm.numpy(), names, f"{stage} confusion (epoch {self.current_epoch})"
            ),
            f"figures/{tag}_per_class.png": class_bars(
                {k: s[k].tolist() for k in ("IoU", "F1", "precision", "recall")},
                names,
                f"{stage} per class",
            ),
        }
        if stage == "val" and self._overlay is not None:
            im, m, p = self._overlay
            figs[f"figures/{tag}_overlay.png"] = overlay_figure(
                im,
                m,
                p,
                self.bands,
                [c["color"] for c in self.classes],
                names,
                self.ignore_index,
                f"val chips, epoch {self.current_epoch}",
            )
        for path, fig in figs.items():
            logger.experiment.log_figure(logger.run_id, fig, path)
            plt.close(fig)

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = (
            self.optimizer_factory(params=params)
            if self.optimizer_factory
            else torch.optim.AdamW(params, lr=1e-3)
        )
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(
            optimizer=opt, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
