"""Reading official backbone weight files: Lightning ``.ckpt`` (Clay) and plain state dicts (Prithvi).

Each family declares its files as :class:`CheckpointLayout` rows (``CHECKPOINT_LAYOUTS`` in
``clay.py`` / ``prithvi.py``): where the tensors are, the prefix of the encoder's keys, and an
explicit list of key patterns it drops (decoder, teacher, fixed position tables). Every other key
must match the model exactly (:func:`check_state_dict`), so a wrong or truncated file is an error
listing the differences, never a silent partial load.

Files are read with ``torch.load(weights_only=True, mmap=True)``: tensors stay on disk until they
are copied into the model, so a 5 GB Lightning checkpoint does not need 5 GB of RAM, and no code in
the file is ever run. Lightning checkpoints carry more than tensors (hyper-parameters, loop and
callback state); any class or function such a file names (``AttributeDict``, paths, dates, ...) is
replaced by an inert stand-in while reading and never imported (:func:`read_file`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .base import WeightsError, check_state_dict

# Names Lightning (old and new) uses for its dict-like hyper-parameter containers: read as dicts.
_DICT_LIKE = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)


@dataclass(frozen=True)
class CheckpointLayout:
    """How one kind of official file stores an encoder.

    ``container``: ``"lightning"`` (tensors under ``obj["state_dict"]``) or ``"plain"`` (the
    file is the state dict). ``prefix``: the encoder's keys start with it; it is stripped.
    ``drop``: regular expressions, matched against the whole key as stored in the file, of the
    keys the backbone deliberately does not use. Keys neither dropped nor under ``prefix`` are
    kept as they are, so the strict comparison reports them as unexpected.
    """

    description: str
    container: str
    prefix: str = ""
    drop: tuple[str, ...] = ()

    def matches(self, obj: object) -> bool:
        if self.container == "lightning":
            return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)
        if not isinstance(obj, dict) or isinstance(obj.get("state_dict"), dict):
            return False
        return not self.prefix or any(str(k).startswith(self.prefix) for k in obj)


class _Opaque:
    """Stand-in for any non-tensor object named in a checkpoint: keeps its arguments, runs nothing."""

    def __new__(cls, *args, **kwargs):
        instance = object.__new__(cls)
        instance.args = args
        return instance

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def read_file(path: str | Path) -> object:
    """Load a torch file memory-mapped and without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist.")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # not a zip-format torch file
        raise WeightsError(
            f"{path} is not a torch checkpoint geotune can read ({exc}). Official files are "
            "torch.save zip archives; re-save a legacy file with torch.save(torch.load(f), f) on a "
            "machine where you trust it."
        ) from None
    stand_ins = [
        (dict if name in _DICT_LIKE else type(name, (_Opaque,), {}), name) for name in unsafe
    ]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise WeightsError(
            f"could not read {path}: {exc}\nThe file holds objects geotune cannot read without "
            "running code from it. On a machine where you trust the file, save only its tensors "
            "(torch.save(ckpt['state_dict'], 'weights.pt')) and pass that file instead."
        ) from None


def select_layout(
    obj: object, layouts: dict[str, CheckpointLayout], source: str
) -> CheckpointLayout:
    """The first layout (in declaration order) that describes ``obj``."""
    for layout in layouts.values():
        if layout.matches(obj):
            return layout
    known = "; ".join(layout.description for layout in layouts.values())
    raise WeightsError(f"{source} is not in any layout this backbone reads ({known}).")


def encoder_state_dict(
    obj: object, layout: CheckpointLayout, source: str
) -> dict[str, torch.Tensor]:
    """Apply ``layout``: drop its declared keys, strip its prefix, keep everything else as is."""
    state = obj["state_dict"] if layout.container == "lightning" else obj
    drop = [re.compile(pattern) for pattern in layout.drop]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if any(pattern.fullmatch(key) for pattern in drop):
            continue
        if not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor."
            )
        name = key[len(layout.prefix) :] if layout.prefix and key.startswith(layout.prefix) else key
        out[name] = value
    return out


def read_encoder_weights(
    path: str | Path, layouts: dict[str, CheckpointLayout]
) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder tensors of an official (or extracted) file and a description of the source."""
    obj = read_file(path)
    layout = select_layout(obj, layouts, str(path))
    source = f"{path} (read as {layout.description})"
    return encoder_state_dict(obj, layout, source), source


def load_encoder_weights(
    model: nn.Module, path: str | Path, layouts: dict[str, CheckpointLayout]
) -> None:
    """Copy the encoder weights of ``path`` into ``model``; any mismatch raises :class:`WeightsError`."""
    state, source = read_encoder_weights(path, layouts)
    check_state_dict(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


def extract(name: str, ckpt_path: str | Path, out_path: str | Path, **overrides) -> Path:
    """Write the encoder-only weights of an official file as a plain state dict.

    The output holds the official key names without prefix, without the dropped keys, and is
    accepted by ``build_backbone(name, checkpoint=out_path)``. It is checked against the model
    (built on the meta device, so no memory is used; ``overrides`` such as ``size`` select the
    variant) before anything is written, and written atomically.
    """
    from . import family_module

    family = family_module(name)
    state, source = read_encoder_weights(ckpt_path, family.CHECKPOINT_LAYOUTS)
    with torch.device("meta"):
        model = family.build(name, weights=None, **overrides)
    check_state_dict(model.state_dict(), state, source)
    out_path = Path(out_path).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        torch.save({key: _own_storage(value) for key, value in state.items()}, tmp)
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.save`` writes whole storages: copy views of larger storages so only the tensor is written."""
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor
