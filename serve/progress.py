"""A Lightning callback that writes a training job's progress to a JSON file.

The service adds it to ``geotune train`` through a Hydra override
(``+callbacks.job_progress._target_=serve.progress.JobProgress``); the job scheduler reads the
file into the job record. Only rank 0 writes; writes are atomic and at most every
``every_seconds`` during an epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class JobProgress(Callback):
    def __init__(self, path: str, every_seconds: float = 1.0):
        self.path = Path(path)
        self.every = every_seconds
        self._last = 0.0
        self._metrics: dict[str, float] = {}

    def _write(self, trainer, stage: str, force: bool = False) -> None:
        if not trainer.is_global_zero:
            return
        t = time.time()
        if not force and t - self._last < self.every:
            return
        self._last = t
        for k, v in trainer.callback_metrics.items():
            try:
                value = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                self._metrics[k] = round(value, 6)
        logger = trainer.logger
        data = {
            "stage": stage,
            "epoch": min(trainer.current_epoch + 1, trainer.max_epochs or 1 << 30),  # 1-based
            "max_epochs": trainer.max_epochs,
            "step": trainer.global_step,
            "steps_per_epoch": trainer.num_training_batches
            if isinstance(trainer.num_training_batches, int)
            else None,
            "metrics": dict(sorted(self._metrics.items())),
            "run_id": getattr(logger, "run_id", None),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = self.path.with_name(f".{self.path.name}.part")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)

    def on_fit_start(self, trainer, pl_module):
        self._write(trainer, "fit", force=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._write(trainer, "train")

    def on_train_epoch_end(self, trainer, pl_module):
        self._write(trainer, "train", force=True)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._write(trainer, "validate", force=True)

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, "test", force=True)
