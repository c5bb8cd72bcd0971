"""Write the key-and-shape manifests of the official full-size checkpoints, from the official code.

Run from the repository root after ``pip install --no-deps terratorch==1.2.13``:

    python tests/data/backbone_manifests/generate.py

Nothing here uses geotune's models: every manifest lists the state dict that the *reference*
model classes produce on the meta device (no memory, no download), laid out as the official file
stores it. ``tests/test_checkpoints.py`` pushes each manifest through geotune's checkpoint layouts
and compares the result with geotune's own meta-device model.

- Prithvi: ``PrithviMAE`` from ``prithvi_mae.py`` (the file published with the Prithvi weights, as
  shipped in terratorch) with each model's config from terratorch's ``prithvi_cfgs``. Prithvi-EO-2.0
  files hold that state dict as is (``encoder.``/``decoder.`` prefixes). Prithvi-EO-1.0's file is
  flat: the same keys without the ``encoder.``/``decoder.`` prefixes (the inverse of the conversion
  in terratorch's ``checkpoint_filter_fn_mae``).
- Clay: the Lightning module's state dict, ``model.`` + ClayMAE's ``encoder``/``decoder``/
  ``teacher``/``proj``, built from Clay's own ``Encoder``/``Decoder`` classes (terratorch's
  ``clay_v15``, AST-identical to Clay-foundation/model ``claymodel/``). Clay v1.5 dims come from its
  ``clay_mae_large``; Clay v1's from ``clay_mae_base`` at Clay-foundation/model@4119be7 (the
  commit the v1 model card links; decoder depth and heads 6, later changed to 4). The teacher is
  timm's ``vit_base_patch16_224.dino`` (v1) / ``vit_large_patch14_reg4_dinov2.lvd142m`` (v1.5),
  created without weights; its keys are dropped by geotune and only count towards the total.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/ for reference_backbones

import reference_backbones as ref  # noqa: E402

PRITHVI = (
    "prithvi_eo_v1_100",
    "prithvi_eo_v2_300",
    "prithvi_eo_v2_300_tl",
    "prithvi_eo_v2_600",
    "prithvi_eo_v2_600_tl",
)
CLAY_V1_BASE = {  # clay_mae_base at Clay-foundation/model@4119be7 (src/model.py)
    "dim": 768, "depth": 12, "heads": 12, "dim_head": 64, "mlp_ratio": 4,
    "decoder_dim": 512, "decoder_depth": 6, "decoder_heads": 6, "decoder_dim_head": 64, "decoder_mlp_ratio": 4,
}  # fmt: skip
TEACHERS = {
    "clay_v1_base": "vit_base_patch16_224.dino",
    "clay_v1_5": "vit_large_patch14_reg4_dinov2.lvd142m",
}


def shapes(state: dict) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in state.items()}


def prithvi_manifest(name: str) -> dict:
    module = ref.prithvi_reference()
    config = ref.prithvi_reference_configs()[name]
    kwargs = {
        k: v
        for k, v in config.items()
        if k not in ("mean", "std", "bands", "mask_ratio", "norm_pix_loss")
    }
    with torch.device("meta"):
        model = module.PrithviMAE(**kwargs)
    tensors = shapes(model.state_dict())
    if name == "prithvi_eo_v1_100":
        tensors = {key.split(".", 1)[1]: shape for key, shape in tensors.items()}
        layout = "flat MAE state dict (encoder keys plus decoder_*, mask_token)"
    else:
        layout = "MAE state dict with encoder./decoder. prefixes"
    return {
        "backbone": name,
        "source": f"terratorch {ref.REFERENCE_VERSION} models/backbones/prithvi_mae.py PrithviMAE, config prithvi_cfgs[{name!r}] in prithvi_vit.py",
        "config": {k: v for k, v in kwargs.items()},
        "file_layout": layout,
        "tensors": tensors,
    }


def clay_manifest(name: str) -> dict:
    module = ref.clay_v15_reference()
    if name == "clay_v1_5":
        real = module.ClayMAE
        module.ClayMAE = lambda **kw: kw  # read clay_mae_large's arguments without building the MAE
        try:
            args = module.clay_mae_large()
        finally:
            module.ClayMAE = real
        dims_source = "clay_mae_large in Clay's model.py (v1.5)"
    else:
        args, dims_source = dict(CLAY_V1_BASE), "clay_mae_base at Clay-foundation/model@4119be7"
    with torch.device("meta"):
        encoder = module.Encoder(mask_ratio=0.75, patch_size=8, shuffle=True, dim=args["dim"], depth=args["depth"],
                                 heads=args["heads"], dim_head=args["dim_head"], mlp_ratio=args["mlp_ratio"])  # fmt: skip
        decoder = module.Decoder(mask_ratio=0.75, patch_size=8, encoder_dim=args["dim"], dim=args["decoder_dim"],
                                 depth=args["decoder_depth"], heads=args["decoder_heads"],
                                 dim_head=args["decoder_dim_head"], mlp_ratio=args["decoder_mlp_ratio"])  # fmt: skip
        teacher = timm.create_model(TEACHERS[name], pretrained=False, num_classes=0)
        proj = nn.Linear(args["dim"], teacher.num_features)
    tensors = {}
    for part, sub in (
        ("teacher", teacher),
        ("proj", proj),
        ("encoder", encoder),
        ("decoder", decoder),
    ):
        tensors.update({f"model.{part}.{k}": v for k, v in shapes(sub.state_dict()).items()})
    return {
        "backbone": name,
        "source": (
            f"Clay Encoder/Decoder from terratorch {ref.REFERENCE_VERSION} models/backbones/clay_v15 "
            f"(= Clay-foundation/model claymodel/), dims from {dims_source}; teacher timm "
            f"{timm.__version__} {TEACHERS[name]} (keys dropped by geotune)"
        ),
        "config": {k: v for k, v in args.items() if k not in ("metadata",)},
        "file_layout": "Lightning checkpoint: state_dict of ClayMAEModule (model.encoder/decoder/teacher/proj)",
        "tensors": tensors,
    }


def to_json(manifest: dict) -> str:
    """Readable JSON: one line per tensor."""
    head = {k: v for k, v in manifest.items() if k != "tensors"}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    rows = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in manifest["tensors"].items()]
    return "{\n" + "\n".join(lines) + '\n  "tensors": {\n' + ",\n".join(rows) + "\n  }\n}\n"


def main() -> None:
    for name in ("clay_v1_base", "clay_v1_5", *PRITHVI):
        manifest = clay_manifest(name) if name.startswith("clay") else prithvi_manifest(name)
        manifest["generated_with"] = {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "terratorch": ref.REFERENCE_VERSION,
        }
        path = HERE / f"{name}.json"
        path.write_text(to_json(manifest))
        total = sum(torch.Size(s).numel() for s in manifest["tensors"].values())
        print(f"{path.name}: {len(manifest['tensors'])} tensors, {total / 1e6:.1f}M values")


if __name__ == "__main__":
    main()
