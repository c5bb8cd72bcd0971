"""LightningModules per task, chosen with ``task=`` (``conf/task/*.yaml``).

``SegmentationTask`` (a class per pixel), ``ChangeTask`` (a change class per pixel from two
dates) and ``ClassificationTask`` (a class, or several labels, per chip; in
:mod:`trainer.classification`) share :class:`GeoTask`:
fine-tuning modes (``full`` | ``frozen`` | ``last_n`` blocks), optimizer + per-step scheduler
from ``_partial_`` configs, validation/test metrics from one torchmetrics confusion matrix per
stage (synced across DDP ranks, so each chip counts once), the loss averaged over labelled
pixels or chips, figures to MLflow every validation epoch (rank 0 only), and the test pass's
inference speed (``test/chips_per_s``). Networks come from :mod:`trainer.heads`, losses from
:mod:`trainer.losses`.
"""

from __future__ import annotations

import inspect
import json
import math
import time

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from datamodules.errors import UserError

from .losses import DenseLoss
from .metrics import metric_dict, scores

STAGES = ("val", "test")


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


def augment(image: torch.Tensor, mask: torch.Tensor | None = None):
    """Random flips and 90° rotations per sample, the same for the image and its mask (if any)."""
    square = image.shape[-1] == image.shape[-2]
    out_i, out_m = [], []
    for i in range(len(image)):
        k = int(torch.randint(4, ())) if square else 2 * int(torch.randint(2, ()))
        flip = bool(torch.rand(()) < 0.5)
        img = torch.rot90(image[i], k, (-2, -1))
        out_i.append(img.flip(-1) if flip else img)
        if mask is not None:
            m = torch.rot90(mask[i], k, (-2, -1))
            out_m.append(m.flip(-1) if flip else m)
    return torch.stack(out_i), (torch.stack(out_m) if mask is not None else None)


# the constructor arguments every task takes; a task passes them on with ``shared(locals())``
SHARED = (
    "ignore_index",
    "bands",
    "gsd",
    "loss",
    "optimizer",
    "scheduler",
    "finetune",
    "last_n",
    "augment",
    "overlay_chips",
)


def shared(args: dict) -> dict:
    """The :data:`SHARED` arguments among a task constructor's ``args``."""
    return {k: args[k] for k in SHARED}


class GeoTask(L.LightningModule):
    """What every task shares; subclasses say their network's configuration and criterion
    (``make_criterion``) and how a batch is scored (``target``, ``labelled``,
    ``predict_classes``, ``metrics``, ``figures``)."""

    kind = "segmentation"  # the dataset manifest's ``task`` this module trains on
    target_key = "mask"

    def __init__(
        self,
        net_config: dict,
        backbone: nn.Module,
        classes: list[dict],
        *,
        ignore_index: int,
        bands: list[str] | None,
        gsd: float,
        loss: dict | None,
        optimizer,
        scheduler,
        finetune: str,
        last_n: int,
        augment: bool,
        overlay_chips: int,
    ):
        """Build the network (:func:`trainer.heads.build_net` of ``kind``, ``net_config``) on
        ``backbone``; the calling subclass constructor's own arguments become the module's
        hyperparameters (what a checkpoint records), as if it had saved them itself."""
        from .heads import build_net

        caller = inspect.currentframe().f_back
        net = build_net(self.kind, backbone, len(classes), gsd, net_config)
        super().__init__()
        self.net = net
        self.classes = classes
        self.slugs = [c["slug"] for c in classes]
        self.k = len(classes)
        self.ignore_index = ignore_index
        self.bands = bands or list(net.backbone.spec.bands)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.do_augment = augment
        self.overlay_chips = overlay_chips
        self.cms = nn.ModuleDict({s: self.confusion_matrix() for s in STAGES})
        self.eval_loss = nn.ModuleDict({s: MeanMetric() for s in STAGES})
        self._overlay: list | None = None
        self._infer = [0.0, 0]  # seconds, chips in the test pass's forward calls
        self.last_confusion: dict[str, np.ndarray] = {}
        self._apply_finetune(finetune, last_n)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], frame=caller)
        self.criterion = self.make_criterion(loss or {})

    def make_criterion(self, loss: dict) -> nn.Module:
        """The loss (``loss``: its configuration)."""
        raise NotImplementedError

    @classmethod
    def backbone_overrides(cls, task_cfg: dict, entry) -> dict:
        """Backbone build arguments this task needs (e.g. the number of frames) from a backbone
        of the table (``entry``: :class:`trainer.backbones.BackboneEntry`)."""
        return {}

    def confusion_matrix(self):
        return MulticlassConfusionMatrix(self.k, ignore_index=self.ignore_index)

    # -- fine-tuning modes --------------------------------------------------------------------
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

    def logits(self, batch: dict) -> torch.Tensor:
        meta = {}
        if "date_ord" in batch:
            meta = self.net.metadata_for(batch["date_ord"], batch.get("lonlat"))
        return self.net(batch["image"], **meta)

    def target(self, batch: dict) -> torch.Tensor:
        return batch[self.target_key]

    def labelled(self, target: torch.Tensor) -> int:
        """How many labelled pixels (or chips) the loss averages over."""
        return int((target != self.ignore_index).sum())

    def predict_classes(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1)

    def augment_batch(self, batch: dict) -> None:
        batch["image"], batch["mask"] = augment(batch["image"], batch["mask"])

    def training_step(self, batch, batch_idx):
        if self.do_augment:
            self.augment_batch(batch)
        logits = self.logits(batch)
        loss = self.criterion(logits, self.target(batch))
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits)
        )
        return loss

    def _eval_step(self, stage: str, batch, batch_idx):
        t0 = time.perf_counter()
        logits = self.logits(batch)
        if stage == "test":
            if logits.is_cuda:
                torch.cuda.synchronize()
            self._infer[0] += time.perf_counter() - t0
            self._infer[1] += len(logits)
        target = self.target(batch)
        n = self.labelled(target)
        if n:
            self.eval_loss[stage].update(self.criterion(logits, target).detach(), weight=n)
        else:
            self.eval_loss[stage].update(torch.zeros(()), weight=0)
        pred = self.predict_classes(logits)
        self.cms[stage].update(pred, target.long() if target.is_floating_point() else target)
        if stage == "val" and batch_idx == 0 and self.overlay_chips:
            n = self.overlay_chips
            self._overlay = [
                batch["image"][:n].cpu().numpy(),
                target[:n].cpu().numpy(),
                pred[:n].cpu().numpy(),
            ]

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        self._infer = [0.0, 0]

    def _eval_epoch_end(self, stage: str) -> None:
        cm = self.cms[stage].compute()
        self.cms[stage].reset()
        loss = self.eval_loss[stage].compute()
        self.eval_loss[stage].reset()
        metrics = self.metrics(stage, cm)
        main = f"{stage}/mIoU"
        self.log(main, metrics.pop(main), prog_bar=True, sync_dist=True)
        if torch.isfinite(loss):
            self.log(f"{stage}/loss", loss, sync_dist=True)
        if stage == "test" and self._infer[0] > 0:
            metrics["test/chips_per_s"] = self._infer[1] / self._infer[0]
        self.log_dict(metrics, prog_bar=False, sync_dist=True)
        self.last_confusion[stage] = cm.cpu().numpy()
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._log_figures(stage, cm.cpu())

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- figures ------------------------------------------------------------------------------
    def _log_figures(self, stage: str, cm: torch.Tensor) -> None:
        logger = self.logger
        if (
            logger is None
            or not hasattr(logger, "run_id")
            or not hasattr(logger.experiment, "log_figure")
        ):
            return
        import matplotlib.pyplot as plt

        tag = "test" if stage == "test" else f"val/epoch_{self.current_epoch:03d}"
        for name, fig in self.figures(stage, cm).items():
            logger.experiment.log_figure(logger.run_id, fig, f"figures/{tag}_{name}.png")
            plt.close(fig)
        if stage == "test":
            table = {"classes": self.slugs, "confusion": cm.tolist()}
            logger.experiment.log_text(
                logger.run_id, json.dumps(table), "metrics/test_confusion.json"
            )

    def figures(self, stage: str, cm: torch.Tensor) -> dict:
        """Confusion matrix and per-class bars (and, in subclasses, overlays) for ``stage``."""
        from .figures import class_bars, confusion_figure

        names = [c["name"] for c in self.classes]
        s = scores(cm)
        figs = {
            "per_class": class_bars(
                {k: s[k].tolist() for k in ("IoU", "F1", "precision", "recall")},
                names,
                f"{stage} per class (epoch {self.current_epoch})",
            )
        }
        if cm.dim() == 2:
            figs["confusion"] = confusion_figure(
                cm.numpy(), names, f"{stage} confusion (epoch {self.current_epoch})"
            )
        return figs

    # -- optimisation -------------------------------------------------------------------------
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


class DenseTask(GeoTask):
    """A class per pixel (segmentation, change): pixel metrics and prediction overlays."""

    def make_criterion(self, loss: dict) -> nn.Module:
        return DenseLoss(self.k, self.ignore_index, **loss)

    def metrics(self, stage: str, cm: torch.Tensor) -> dict[str, float]:
        return metric_dict(stage, cm, self.slugs)

    def figures(self, stage: str, cm: torch.Tensor) -> dict:
        figs = super().figures(stage, cm)
        if stage == "val" and self._overlay is not None:
            from .figures import overlay_figure

            im, m, p = self._overlay
            figs["overlay"] = overlay_figure(
                im,
                m,
                p,
                self.bands,
                [c["color"] for c in self.classes],
                [c["name"] for c in self.classes],
                self.ignore_index,
                f"val chips, epoch {self.current_epoch}",
            )
        return figs


class SegmentationTask(DenseTask):
    """A class per pixel: ``image`` ``[B, C, H, W]`` (or ``[B, C, T, H, W]``), ``mask`` ``[B, H, W]``."""

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
        config = {"decoder": decoder, "decoder_channels": decoder_channels}
        super().__init__(config, backbone, classes, **shared(locals()))


class ChangeTask(DenseTask):
    """A change class per pixel from two dates: ``image`` ``[B, C, 2, H, W]``, ``mask`` ``[B, H, W]``.

    ``temporal=siamese`` runs one shared encoder per date and fuses the features (``fusion``:
    ``auto``, ``diff``, ``signed`` or ``concat``; see :func:`trainer.heads.resolve_fusion`:
    directional change classes need a fusion that keeps the direction); ``temporal=frames``
    (Prithvi) encodes both dates as T=2 frames.
    """

    kind = "change"

    def __init__(
        self,
        backbone: nn.Module,
        classes: list[dict],
        fusion: str = "auto",
        temporal: str = "siamese",
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
        from .heads import resolve_fusion

        config = {
            "decoder": decoder,
            "decoder_channels": decoder_channels,
            "fusion": resolve_fusion(fusion, classes),
            "temporal": temporal,
        }
        super().__init__(config, backbone, classes, **shared(locals()))

    @classmethod
    def backbone_overrides(cls, task_cfg: dict, entry) -> dict:
        return {"num_frames": 2 if task_cfg.get("temporal") == "frames" else 1}

    def logits(self, batch: dict) -> torch.Tensor:
        x = batch["image"]
        if x.dim() != 5 or x.shape[2] != 2:
            raise UserError(
                f"change detection needs two dates per chip ([B, C, 2, H, W]); this dataset gives "
                f"{tuple(x.shape)}. Use a change dataset (two dates + change labels) or task=segmentation."
            )
        return super().logits(batch)


__all__ = ["GeoTask", "DenseTask", "SegmentationTask", "ChangeTask", "warmup_cosine"]
