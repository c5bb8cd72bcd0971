"""Decoders and the assembled segmentation network: raw values in, class logits out.

``SegmentationNet`` = normalisation (the backbone's mean/std, so callers pass raw sensor values)
→ backbone (list of feature maps) → neck (ViTs: one-stride maps resampled to strides 4..32)
→ decoder (UNet for ResNet, UPerNet for ViTs; segmentation-models-pytorch blocks) → 1×1 head,
upsampled to the input size. Inputs of any H, W are padded to the network's multiple and the
output cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import UserError


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class ViTNeck(nn.Module):
    """Feature maps all at stride ``s`` → maps at strides 4, 8, 16, 32 (one per input map)."""

    def __init__(self, in_channels: list[int], stride: int, out_channels: int = 256):
        super().__init__()
        targets = [4, 8, 16, 32][-len(in_channels) :]
        self.ops = nn.ModuleList()
        for c, t in zip(in_channels, targets, strict=True):
            layers: list[nn.Module] = [nn.Conv2d(c, out_channels, 1)]
            f = stride / t
            while f >= 2:
                layers += [
                    nn.ConvTranspose2d(out_channels, out_channels, 2, stride=2),
                    nn.BatchNorm2d(out_channels),
                    nn.GELU(),
                ]
                f /= 2
            while f <= 0.5:
                layers.append(nn.MaxPool2d(2))
                f *= 2
            self.ops.append(nn.Sequential(*layers))
        self.out_channels = [out_channels] * len(in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip(self.ops, feats, strict=True)]


class SegmentationNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        decoder: str = "auto",
        decoder_channels: int = 256,
        gsd: float | None = None,
    ):
        super().__init__()
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        spec = backbone.spec
        self.gsd = float(gsd or spec.gsd or 10.0)
        self.normalize = Normalize(spec.mean, spec.std)
        self.backbone = backbone
        self.num_classes = num_classes
        if decoder == "auto":
            decoder = "unet" if spec.family == "resnet" else "upernet"
        self.decoder_name = decoder
        strides = list(spec.out_strides)
        if len(set(strides)) == 1:  # ViT: single-stride tokens → multi-scale neck
            n = len(spec.out_channels)
            if n > 4:
                raise UserError(
                    "ViT backbones feed at most 4 layers to the neck; set backbone.out_indices"
                )
            self.neck: nn.Module | None = ViTNeck(
                list(spec.out_channels), strides[0], decoder_channels
            )
            channels, strides = self.neck.out_channels, [4, 8, 16, 32][-n:]
        else:
            self.neck = None
            channels = list(spec.out_channels)
        # smp decoders expect [stride 1, 2, 4, ...]; absent levels are zero-channel placeholders
        full = [0] * (int(math.log2(strides[-1])) + 1)
        for c, s in zip(channels, strides, strict=True):
            full[int(math.log2(s))] = c
        self._levels = [int(math.log2(s)) for s in strides]
        self._depth = len(full) - 1
        if decoder == "unet":
            dec_ch = [256, 128, 64, 32, 16][: self._depth]
            self.decoder = UnetDecoder(
                encoder_channels=full, decoder_channels=dec_ch, n_blocks=self._depth
            )
            head_in = dec_ch[-1]
            self.out_stride = 1
        elif decoder == "upernet":
            self.decoder = UPerNetDecoder(
                encoder_channels=full, encoder_depth=self._depth, decoder_channels=decoder_channels
            )
            head_in = decoder_channels
            self.out_stride = 4
        else:
            raise UserError(f"unknown decoder {decoder!r}; choose auto, unet or upernet")
        self.head = nn.Conv2d(head_in, num_classes, kernel_size=3, padding=1)
        self.multiple = max(2**self._depth, spec.patch_size)

    def features(self, x: torch.Tensor, **metadata) -> list[torch.Tensor]:
        if not metadata and hasattr(self.backbone, "make_metadata"):
            # no date or place known: the backbone's own "unknown" encodings, the input's GSD
            frames = x.shape[2] if x.dim() == 5 else 1
            metadata = self.backbone.make_metadata(
                dates=[[None] * frames] * x.shape[0], lonlat=None, gsd=self.gsd
            )
        feats = self.backbone(self.normalize(x), **metadata)
        if self.neck is not None:
            feats = self.neck(feats)
        full: list[torch.Tensor] = []
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        by_level = dict(zip(self._levels, feats, strict=True))
        for lvl in range(self._depth + 1):
            if lvl in by_level:
                full.append(by_level[lvl])
            else:
                full.append(x.new_zeros(b, 0, h // 2**lvl, w // 2**lvl))
        return full

    def forward(self, x: torch.Tensor, **metadata) -> torch.Tensor:
        """Raw values ``[B, C, H, W]`` (or ``[B, C, T, H, W]``) → logits ``[B, K, H, W]``."""
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = _pad(x, ph, pw)
        y = self.head(self.decoder(self.features(x, **metadata)))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y[..., :h, :w]


def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Pad bottom/right of the last two dims (reflect where possible), any leading dims."""
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-2], shape[-1])
    mode = "reflect" if ph < shape[-2] and pw < shape[-1] else "replicate"
    flat = F.pad(flat, (0, pw, 0, ph), mode=mode)
    return flat.reshape(*shape[:-2], flat.shape[-2], flat.shape[-1])
