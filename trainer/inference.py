"""A loaded model's network prepared for inference, once per model and setting, and its lane.

:func:`inference_net` gives the network a :class:`trainer.predict.Predictor` runs: in eval
mode, on the device, in ``channels_last`` when asked (2-D convolutions only), and on the CPU
with each batch norm folded into the convolution before it (one convolution instead of a
convolution and a normalisation pass over its output: the same function up to rounding; in
float32 and under bfloat16 autocast alike, see ``experiments/perf``) and its in-place ReLUs
clamping a bfloat16 tensor's bits (:func:`sign_bit_relus`: the same numbers, a quarter of the
time). The folded copy is made once per model and device and kept on the model, so concurrent
predictions with one model share one network (the service's cached models).

:func:`lane` serialises the forward passes through one prepared network: a forward already
uses every core (torch's intra-op threads), and two at once would only compete for them;
everything else a prediction does (reading, blending, writing, polygons) runs beside it.
"""

from __future__ import annotations

import copy
import threading
import weakref
from contextlib import contextmanager

_BUILD = threading.Lock()
_LANES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network → its lane's lock


def inference_net(model, device, channels_last: bool):
    """``model.net`` prepared for ``device`` and layout (see the module's docstring). On the
    CPU, a copy with the batch norms folded (float32 weights, for a float32 or a bfloat16
    autocast forward alike), made once per model and device; otherwise ``model.net`` itself.
    Preparing again is a no-op on an already prepared network."""
    import torch

    with _BUILD:
        net = model.net.eval()
        if device.type == "cpu":
            folded = model.__dict__.setdefault("_folded_nets", {})
            if str(device) not in folded:
                folded[str(device)] = sign_bit_relus(fold_batch_norms(copy.deepcopy(net)))
            net = folded[str(device)]
        net = net.to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        _LANES.setdefault(net, threading.Lock())
        return net


def uses_channels_last(net, asked: bool) -> bool:
    """``channels_last`` speeds up 2-D convolutions (1.4x on a ResNet18-UNet on CPU); networks
    with 3-D (tubelet) convolutions, as Prithvi's patch embedding, cannot take it."""
    return asked and all(p.dim() != 5 for p in net.parameters())


def fold_batch_norms(net):
    """Every ``Conv2d`` followed by a ``BatchNorm2d`` (neighbours in a ``Sequential``, or a
    pair a module lists in ``conv_bn_pairs``: its forward applies the one to the other's output
    directly, as the ResNet blocks) becomes one convolution with the normalisation folded into
    its weights and bias; the batch norm becomes an identity. In place, eval mode only (the
    running statistics are used)."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent, conv_name: str, bn_name: str) -> None:
        conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
        if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())

    for parent in list(net.modules()):
        names = list(parent._modules)
        if isinstance(parent, nn.Sequential):
            for a, b in zip(names, names[1:], strict=False):
                fold(parent, a, b)
        for conv_name, bn_name in getattr(parent, "conv_bn_pairs", ()):
            fold(parent, conv_name, bn_name)
    return net


def sign_bit_relus(net):
    """Every in-place ``nn.ReLU`` of ``net`` becomes one that, on a bfloat16 tensor, clamps the
    tensor's bits read as int16 at 0. A bfloat16 is negative exactly when its sign bit, int16's, is
    set: clamping the bits zeroes the negatives (and -0) and keeps every other value bit for bit,
    so the output is relu's (a NaN with its sign bit set becomes 0). PyTorch's bfloat16 ReLU
    on the CPU took 0.97 ms on a 2 x 64 x 224² activation against 0.23 ms for this, 45% of the
    3x3 convolution before it; in float32 both take the same time, and ``torch.relu_`` runs.
    In place, inference only."""
    import torch
    from torch import nn

    class SignBitReLU(nn.Module):
        def forward(self, x):
            if x.dtype is torch.bfloat16:
                x.view(torch.int16).clamp_min_(0)
                return x
            return torch.relu_(x)

    for parent in list(net.modules()):
        for name, child in parent._modules.items():
            if type(child) is nn.ReLU and child.inplace:
                parent._modules[name] = SignBitReLU()
    return net


@contextmanager
def lane(net):
    """One forward at a time through ``net`` (an :func:`inference_net`)."""
    with _LANES[net]:
        yield
