"""The ResNet trunk of the ResNet baselines, in plain torch with timm's parameter names.

The same network as ``timm.models.FeatureListNet(timm ResNet(...), out_indices)`` (stem
``conv1``/``bn1``/``act1``/``maxpool``, ``layer1..4`` of basic or bottleneck blocks with
``downsample.0/1`` shortcuts), so TorchGeo's SSL4EO-S12 files and every registered ResNet model
load into it unchanged, and the same initialisation (He normal, fan out; the last batch norm
of each block at zero). Building it imports nothing beyond torch: timm pulls in torchvision and
TorchDynamo, seconds of start-up for every ``geotune predict``.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (64, 128, 256, 512)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class _Block(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block, timm's names."""

    # each batch norm takes its convolution's output directly (trainer.inference folds them)
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, bottleneck: bool, cin: int, width: int, stride: int):
        super().__init__()
        self.bottleneck = bottleneck
        cout = width * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1, self.bn1 = _conv(cin, width, 1), _bn(width)
            self.conv2, self.bn2 = _conv(width, width, 3, stride), _bn(width)
            self.conv3, self.bn3 = _conv(width, cout, 1), _bn(cout)
        else:
            self.conv1, self.bn1 = _conv(cin, width, 3, stride), _bn(width)
            self.conv2, self.bn2 = _conv(width, width, 3), _bn(width)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout))
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        if self.bottleneck:
            x = self.bn3(self.conv3(self.act(x)))
        return self.act(x + shortcut)

    def fused(self, pointwise) -> nn.Module:
        """This block for inference (batch norms folded, see :mod:`trainer.inference`) with each
        convolution and the ReLU after it, and the last convolution with the residual sum and
        the ReLU, in one primitive each (``pointwise(conv, relu)``)."""
        bns = [getattr(self, n) for n in ("bn1", "bn2", "bn3") if hasattr(self, n)]
        if not all(type(bn) is nn.Identity for bn in bns):  # not folded: nothing to fuse
            return self
        fused = _FusedBlock(self, pointwise)
        return fused if all(type(c) is not nn.Conv2d for c in fused.convs) else self


class _FusedBlock(nn.Module):
    """A folded :class:`_Block` with its convolutions fused (:meth:`_Block.fused`)."""

    def __init__(self, block: _Block, pointwise):
        super().__init__()
        # each convolution's ReLU; the last one's comes after the residual sum
        self.convs = nn.ModuleList(
            pointwise(getattr(block, name), relu=True)
            for name in ("conv1", "conv2", "conv3")
            if hasattr(block, name)
        )
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        *inner, last = self.convs
        for conv in inner:
            x = conv(x)
        return last(x, shortcut)


class ResNetTrunk(nn.Module):
    """Feature maps at ``out_indices`` of (stem: stride 2, layer1: 4, layer2: 8, layer3: 16,
    layer4: 32); layers past the last index asked for are not built (as timm's feature nets)."""

    conv_bn_pairs = (("conv1", "bn1"),)
    conv_bn_relus = (("conv1", "bn1", "act1"),)  # trainer.inference fuses them once folded

    def __init__(self, block: str, layers, in_chans: int, out_indices: tuple[int, ...]):
        super().__init__()
        bottleneck = block == "bottleneck"
        self.out_indices = tuple(out_indices)
        self.conv1, self.bn1 = _conv(in_chans, 64, 7, 2), _bn(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels, cin = [64], 64
        for i in range(max(self.out_indices)):
            blocks = []
            for j in range(layers[i]):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(_Block(bottleneck, cin, WIDTHS[i], stride))
                cin = blocks[-1].out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            channels.append(cin)
        self._channels = channels
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, _Block):
                nn.init.zeros_((m.bn3 if m.bottleneck else m.bn2).weight)

    def channels(self) -> list[int]:
        return [self._channels[i] for i in self.out_indices]

    def reduction(self) -> list[int]:
        return [2 ** (i + 1) for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        out = [x] if 0 in self.out_indices else []
        x = self.maxpool(x)
        for i in range(1, max(self.out_indices) + 1):
            x = getattr(self, f"layer{i}")(x)
            if i in self.out_indices:
                out.append(x)
        return out
