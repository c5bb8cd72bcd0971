"""geotune trainer: backbones, heads, tasks, training, registry, prediction and the CLI."""

import os as _os

# PyTorch's OpenMP on Linux (libgomp) lets an idle thread spin 300,000 times before it sleeps.
# Prediction reads, blends and polygonises on threads beside the forward pass; on few cores those
# spins take the cores that work needs. With 10,000, `predict_scene` on 3000² with 2 cores took
# 4.64 s against 4.99 s in bf16 (5 alternating rounds) and 8.3 against 8.6 s in float32; the
# forward pass alone was unchanged (see experiments/perf). libgomp reads it when torch loads, so it
# is set here, before any geotune module imports torch; a value the user set is kept.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
