"""Load the reference Clay and Prithvi modules shipped in the ``terratorch`` wheel, without importing terratorch.

The reference code is test-only. Install it without its (heavy) dependencies:

    pip install --no-deps terratorch==1.2.13

Importing ``terratorch`` itself pulls torchgeo < 0.10, albumentations, diffusers, ...; these helpers
load only the module files that hold the models (they need torch, numpy, einops, timm and
torchvision, which geotune already has). Packages the files import from are registered in
``sys.modules`` as empty stand-ins while loading, then removed again.

Provenance (checked while writing geotune's backbones):
- ``terratorch/models/backbones/clay_v15/{model,factory,backbone,utils}.py`` are AST-identical to
  Clay-foundation/model@a5790ce ``claymodel/*.py`` (Clay v1.5) up to the package name.
- ``terratorch/models/backbones/clay_v1/modules.py`` is terratorch's port of the Clay v1 encoder
  (same parameters and maths; returns every layer's output).
- ``terratorch/models/backbones/prithvi_mae.py`` is the ``prithvi_mae.py`` published with the
  Prithvi-EO-1.0/2.0 weights (PrithviViT, PrithviMAE); ``prithvi_vit.py`` holds their configs.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path

REFERENCE_VERSION = "1.2.13"
INSTALL_COMMAND = f"pip install --no-deps terratorch=={REFERENCE_VERSION}"


def reference_root() -> Path | None:
    """The installed terratorch package folder, or None when it is not installed."""
    spec = importlib.util.find_spec("terratorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _root() -> Path:
    root = reference_root()
    if root is None:
        raise ImportError(f"the reference models need terratorch; install with: {INSTALL_COMMAND}")
    return root


@contextmanager
def _stand_in_packages(*packages: str):
    """Register empty packages so absolute imports inside the reference files resolve."""
    before = set(sys.modules)
    for name in packages:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = []
            sys.modules[name] = module
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


def _load(name: str, path: Path) -> types.ModuleType:
    """Execute a reference file as module ``name``. Clay v1.5's ``model.py`` sets
    ``torch.set_float32_matmul_precision("medium")`` when imported (bfloat16 matmuls for the
    whole process): the precision is put back, so later tests compute in float32."""
    import torch

    precision = torch.get_float32_matmul_precision()
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        torch.set_float32_matmul_precision(precision)
    return module


def prithvi_reference() -> types.ModuleType:
    """``prithvi_mae``: PrithviViT, PrithviMAE, get_3d_sincos_pos_embed."""
    module = _load("_reference_prithvi_mae", _root() / "models/backbones/prithvi_mae.py")
    del sys.modules["_reference_prithvi_mae"]
    return module


def prithvi_reference_configs() -> dict[str, dict]:
    """``prithvi_cfgs`` from terratorch's prithvi_vit.py, read from the source (the module imports terratorch)."""
    import ast

    source = (_root() / "models/backbones/prithvi_vit.py").read_text()
    tree = ast.parse(source)
    wanted = {"PRITHVI_V1_MEAN", "PRITHVI_V1_STD", "PRITHVI_V2_MEAN", "PRITHVI_V2_STD"}
    constants, configs = {}, {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            if target in wanted:
                constants[target] = ast.literal_eval(node.value)
            if target == "prithvi_cfgs":
                for key, call in zip(node.value.keys, node.value.values, strict=True):
                    kwargs = {}
                    for kw in call.keywords:
                        if isinstance(kw.value, ast.Name):
                            kwargs[kw.arg] = constants[kw.value.id]
                        else:
                            kwargs[kw.arg] = ast.literal_eval(kw.value)
                    configs[ast.literal_eval(key)] = kwargs
    cfg_function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_cfg")
    returned = next(n for n in cfg_function.body if isinstance(n, ast.Return)).value
    defaults = {}
    for key, value in zip(returned.keys, returned.values, strict=True):
        if key is None:  # the trailing **kwargs
            continue
        name = ast.literal_eval(key)
        if isinstance(value, ast.Name):
            if value.id in constants:
                defaults[name] = constants[value.id]
        else:
            defaults[name] = ast.literal_eval(value)
    return {name: {**defaults, **kwargs} for name, kwargs in configs.items()}


def clay_v15_reference() -> types.ModuleType:
    """Clay v1.5 ``model`` module: Encoder, Decoder, clay_mae_* size functions."""
    base = _root() / "models/backbones/clay_v15"
    package = "terratorch.models.backbones.clay_v15"
    with _stand_in_packages(
        "terratorch", "terratorch.models", "terratorch.models.backbones", package
    ):
        for part in ("utils", "backbone", "factory"):
            _load(f"{package}.{part}", base / f"{part}.py")
        return _load(f"{package}.model", base / "model.py")


def clay_v1_reference() -> types.ModuleType:
    """Clay v1 ``modules`` module: EmbeddingEncoder (returns every layer's tokens)."""
    base = _root() / "models/backbones/clay_v1"
    package = "terratorch.models.backbones.clay_v1"
    with _stand_in_packages(
        "terratorch", "terratorch.models", "terratorch.models.backbones", package
    ):
        _load(f"{package}.utils", base / "utils.py")
        return _load(f"{package}.modules", base / "modules.py")
