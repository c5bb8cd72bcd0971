"""The U-Net decoder of the segmentation and change heads, in plain torch with the parameter
names of segmentation_models_pytorch's ``UnetDecoder`` (batch norm, no attention, no centre
block, nearest upsampling: the configuration :mod:`trainer.heads` uses).

Every registered U-Net model loads into it unchanged and computes the same logits; building
it imports nothing beyond torch (``segmentation_models_pytorch`` imports timm, torchvision and
TorchDynamo when it is imported: seconds of start-up for every ``geotune predict``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution (no bias), batch norm, ReLU: keys ``0.weight``, ``1.*``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class UnetBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip (if any), two conv-bn-relu."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin + skip, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, size, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    """Feature maps at strides 1, 2, 4, ... 2**n (channels ``encoder_channels``, the stride-1
    map unused) → the stride-1 map of ``decoder_channels[-1]`` channels."""

    def __init__(self, encoder_channels, decoder_channels, n_blocks: int):
        super().__init__()
        if n_blocks != len(decoder_channels):
            raise ValueError(f"{n_blocks} blocks but {len(decoder_channels)} decoder channels")
        enc = list(encoder_channels[1:])[::-1]  # from the deepest
        ins = [enc[0], *decoder_channels[:-1]]
        skips = [*enc[1:], 0]
        self.blocks = nn.ModuleList(
            UnetBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=False)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        sizes = [f.shape[2:] for f in features][::-1]
        feats = features[1:][::-1]
        x, skips = feats[0], feats[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, sizes[i + 1], skips[i] if i < len(skips) else None)
        return x
