"""A Lightning callback for the few-labels benchmark: held-out point accuracy after every epoch.

Added to ``geotune train`` with ``+callbacks.probe._target_=probe.EpochProbe`` (this folder on
``PYTHONPATH``), so the same callback measures geotune at any commit. After each training epoch
it classifies the centre pixel of a ``chip`` px window around every held-out point of the scene
and appends (training seconds so far, accuracy overall and per class) to a JSON file, with the
probe's own seconds so far (``probe_seconds``). Training seconds are the wall time since the fit
started, without the probe's own time.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from lightning.pytorch.callbacks import Callback
from rasterio.windows import Window


class EpochProbe(Callback):
    def __init__(self, image: str, points: str, out: str, chip: int = 64, batch: int = 32):
        self.image, self.out, self.chip, self.batch = image, Path(out), chip, batch
        with open(points) as f:
            rows = list(csv.DictReader(f))
        self.rows = np.array([int(r["row"]) for r in rows])
        self.cols = np.array([int(r["col"]) for r in rows])
        self.names = [r["class"] for r in rows]
        self.curve: list[dict] = []
        self.start = 0.0
        self.probe_seconds = 0.0

    def on_fit_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def _chips(self) -> tuple[np.ndarray, np.ndarray]:
        half = self.chip // 2
        with rasterio.open(self.image) as src:
            h, w = src.height, src.width
            r0 = np.clip(self.rows - half, 0, h - self.chip)
            c0 = np.clip(self.cols - half, 0, w - self.chip)
            x = np.stack(
                [
                    src.read(window=Window(c, r, self.chip, self.chip))
                    for r, c in zip(r0, c0, strict=True)
                ]
            ).astype(np.float32)
        return x, np.stack([self.rows - r0, self.cols - c0], 1)

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        t0 = time.perf_counter()
        x, at = self._chips()
        slugs = [c["name"] for c in pl_module.classes]
        was_training = pl_module.training
        pl_module.eval()
        pred = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch):
                logits = pl_module.net(torch.from_numpy(x[i : i + self.batch]))
                k = logits.argmax(1).numpy()
                pred += [int(k[j, r, c]) for j, (r, c) in enumerate(at[i : i + self.batch])]
        pl_module.train(was_training)
        right = np.array([slugs[p] == n for p, n in zip(pred, self.names, strict=True)])
        names = np.array(self.names)
        self.probe_seconds += time.perf_counter() - t0
        self.curve.append(
            {
                "epoch": int(trainer.current_epoch) + 1,
                "train_seconds": round(time.perf_counter() - self.start - self.probe_seconds, 2),
                "accuracy": round(float(right.mean()), 4),
                "per_class": {
                    n: round(float(right[names == n].mean()), 4) for n in sorted(set(self.names))
                },
            }
        )
        self.out.write_text(
            json.dumps({"curve": self.curve, "probe_seconds": round(self.probe_seconds, 2)})
        )
