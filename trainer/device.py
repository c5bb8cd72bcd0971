"""Where and how a forward pass runs: the device, the precision, torch's threads."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from .inputs import PredictError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device=None) -> str:
    """The forward pass's precision, fp32 or bf16; auto is bf16 where the CPU has native bfloat16
    (AVX512-BF16 or AMX), or on a CUDA GPU that supports it."""
    import torch

    if precision not in PRECISIONS:
        raise PredictError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if note := emulated_bfloat16(precision, device):
        warnings.warn(note, stacklevel=3)
    if precision != "auto":
        return precision
    if device is not None and device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bfloat16() else "fp32"


def emulated_bfloat16(precision: str, device=None) -> str | None:
    """What a user who asked for a bfloat16 forward on a CPU without native bfloat16 is told
    (the forward computes it, emulated); None otherwise."""
    if precision != "bf16" or (device is not None and device.type != "cpu") or native_bfloat16():
        return None
    return (
        "precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so the forward "
        "pass emulates it, several times slower than float32 (a ResNet18-UNet on an AVX2 CPU: "
        "5x); leave the precision at auto (float32 on this CPU) or choose fp32"
    )


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    import torch

    native = [
        getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(f is not None and f() for f in native)


# Chips of ``max_chip``² per forward pass by default, from experiments/perf's forward table
# (ResNet-18 UNet, channels_last, batch norms folded, 2 cores): bfloat16 on the CPU runs 2 chips
# at once 10-25% faster than one at a time (its matrix units stay busier; 3 or 4 are no faster),
# while float32 is fastest one chip at a time (its working set stays in cache). Elsewhere
# (GPUs: not measured here) one chip, as before.
BF16_CPU_CHIPS = 2


def batch_chips(device, precision: str) -> int:
    """The default chips of ``max_chip``² per forward pass on ``device`` in ``precision``."""
    return BF16_CPU_CHIPS if device.type == "cpu" and precision == "bf16" else 1


def resolve_device(device: str):
    """``auto``: the first CUDA GPU torch sees, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise PredictError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise PredictError(
                f"device {device!r}: torch sees {n} CUDA GPU(s) here; use --device cpu (or auto)"
            )
    return dev


def to_device(obj, device):
    """Tensors in (nested dicts/lists of) metadata, moved to ``device``."""
    if hasattr(obj, "to") and hasattr(obj, "device"):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` for the block (nothing changes for None)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def current_threads() -> int:
    """torch's intra-op threads now."""
    import torch

    return torch.get_num_threads()
