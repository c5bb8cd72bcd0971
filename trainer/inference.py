"""A loaded model's network prepared for inference, once per model and setting, and its lane.

:func:`inference_net` gives the network a :class:`trainer.predict.Predictor` runs: in eval
mode, on the device, in ``channels_last`` when asked (2-D convolutions only), and on the CPU
with each batch norm folded into the convolution before it (one convolution instead of a
convolution and a normalisation pass over its output: the same function up to rounding; in
float32 and under bfloat16 autocast alike, see ``experiments/perf``), each convolution's ReLU
(and a ResNet block's residual sum) run by the convolution's oneDNN primitive
(:func:`fuse_activations`), and its other in-place ReLUs clamping a bfloat16 tensor's bits
(:func:`sign_bit_relus`: the same numbers, a quarter of the time). The folded copy is made
once per model and device and kept on the model, so concurrent predictions with one model
share one network (the service's cached models). For a bfloat16 forward a second copy holds
its convolution and linear weights in bfloat16: autocast casts them to bfloat16 on every
forward pass otherwise (the same rounding, so the same numbers; 3-10% of
a ResNet18-UNet's forward time).

On the CPU, :func:`keep_large_buffers` has glibc's malloc keep the forward's large
activations in its heap instead of mapping fresh pages for each one (see its docstring).

:func:`lane` serialises the forward passes through one prepared network: a forward already
uses every core (torch's intra-op threads), and two at once would only compete for them;
everything else a prediction does (reading, blending, writing, polygons) runs beside it.
"""

from __future__ import annotations

import copy
import functools
import threading
import weakref
from contextlib import contextmanager

_BUILD = threading.Lock()
_LANES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network → its lane's lock


def inference_net(model, device, channels_last: bool, precision: str = "fp32"):
    """``model.net`` prepared for ``device``, layout and ``precision`` (``fp32``, or ``bf16``:
    a forward under bfloat16 autocast), see the module's docstring. On the CPU, a copy with
    the batch norms folded, made once per model and device (for ``bf16``, a copy of that copy
    with bfloat16 convolution and linear weights); otherwise ``model.net`` itself. Preparing
    again is a no-op on an already prepared network. The copies share one lane."""
    import torch

    with _BUILD:
        net = model.net.eval()
        if device.type == "cpu":
            keep_large_buffers()
            folded = model.__dict__.setdefault("_folded_nets", {})
            key = str(device)
            if key not in folded:
                folded[key] = sign_bit_relus(fuse_activations(fold_batch_norms(copy.deepcopy(net))))
            lock = _LANES.setdefault(folded[key], threading.Lock())
            if precision == "bf16":
                key += "/bf16"
                if key not in folded:
                    folded[key] = bfloat16_weights(copy.deepcopy(folded[str(device)]))
            net = folded[key]
            _LANES.setdefault(net, lock)
        net = net.to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        _LANES.setdefault(net, threading.Lock())
        return net


def bfloat16_weights(net):
    """The weights and biases of ``net``'s convolutions and linear layers in bfloat16, in place.
    bfloat16 autocast runs these ops in bfloat16 and casts their float32 parameters on every
    call (a third of a millisecond per megabyte of weights, each forward pass); cast once, they
    are the same numbers (one round-to-nearest-even), so the forward's output is unchanged bit
    for bit. Everything else (normalisations, embeddings, tokens) stays float32, as autocast
    runs it. For a forward under bfloat16 autocast only."""
    import torch
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
    for m in net.modules():
        if isinstance(m, kinds):
            for p in m.parameters(recurse=False):
                p.data = p.data.to(torch.bfloat16)
    return net


_TUNED_LIBC = None  # glibc, once keep_large_buffers has tuned its malloc


def keep_large_buffers() -> bool:
    """Have glibc's malloc serve allocations up to 256 MB from its heap and keep up to 256 MB
    of freed memory there, for this process; True when it did (or had done).

    A forward pass allocates and frees activations of tens of megabytes (a ResNet18-UNet on a
    512² chip in float32: 33.5 MB for a decoder's concatenation). glibc maps anything above its
    mmap threshold (at most 32 MB by default) freshly from the kernel and unmaps it when freed:
    every forward then faults in and zeroes those pages again (24,500 page faults per forward
    on that chip). Served from the heap, the same memory is reused: no faults, and the forward
    took 125 ms against 145 ms (float32), 34 against 37 ms (bfloat16); ``predict_scene`` on
    2048² in float32 4.3-4.4 s against 4.8-4.9 s, with peak RSS within 2% (experiments/perf).
    ``predict_scene`` gives the kept memory back when it ends (:func:`give_back_free_memory`).

    Left alone where the allocator is not glibc's, or where the user tunes it already
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
    ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``; Dask's ``LocalCluster`` sets
    ``MALLOC_TRIM_THRESHOLD_`` in the process that starts it)."""
    global _TUNED_LIBC
    import ctypes
    import os

    if _TUNED_LIBC is not None:
        return True
    env = os.environ
    if any(
        k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
    ):
        return False
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc's own symbol: not musl nor macOS
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    size = 256 << 20
    if libc.mallopt(m_mmap_threshold, size) and libc.mallopt(m_trim_threshold, size):
        _TUNED_LIBC = libc
    return _TUNED_LIBC is not None


def give_back_free_memory() -> None:
    """After a prediction, return the free memory :func:`keep_large_buffers` kept to the system
    (glibc's ``malloc_trim``), so a long-running service holds what it uses, not its peak.
    Four predictions at a time on 2048² in one process then left 1.3 GB resident instead of
    2.1 GB (1.5 GB with malloc's defaults). A no-op when malloc was not tuned."""
    if _TUNED_LIBC is not None:
        _TUNED_LIBC.malloc_trim(0)


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


def pointwise_convolutions() -> bool:
    """Whether this torch has oneDNN's convolution with fused post-operations on the CPU
    (``torch.ops.mkldnn._convolution_pointwise``, the primitive ``torch.compile`` fuses into)."""
    import torch

    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_convolution_pointwise"
    )


@functools.cache
def onednn_bfloat16() -> bool:
    """Whether oneDNN computes bfloat16 convolutions on this CPU (it needs AVX512BW/VL/DQ or
    AVX-NE-CONVERT; an AVX2-only CPU has neither). Where it does not, a fused convolution with
    bfloat16 weights runs torch's own convolution, sum and ReLU (:class:`PointwiseConv2d`)."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


@functools.cache
def _pointwise_class():
    import torch
    from torch import nn

    CHANNELS_LAST = torch.channels_last

    class PointwiseConv2d(nn.Conv2d):
        """A 2-D convolution, its bias, optionally a residual sum, and optionally a ReLU in one
        oneDNN primitive (its post-operations). The sum and ReLU are applied to the
        convolution's result before it is rounded to the output's type: in float32 the numbers
        of the separate operations, under bfloat16 a rounding fewer."""

        relu = False
        _packed = None  # (the weight's dtype, address and version; its oneDNN layout)

        def packed_weight(self):
            """The weight reordered once into oneDNN's blocked layout (the same numbers), made
            again when the weight changes (its dtype, storage or version). Given a plain
            weight, the primitive reorders it on every call, allocating the copy each time: a
            ResNet18-UNet's forward on 2 x 448² channels_last took 51-58 against 56-63 ms
            under bfloat16 (float32: the same within noise), with the same output bit for bit
            (experiments/perf). The packed copy costs the weights' size once more (a
            ResNet18-UNet: 27 MB in bfloat16, 54 MB in float32), per prepared network. On
            NCHW inputs the packed weight leads oneDNN to another summation order: there the
            plain weight is used (:meth:`forward`)."""
            w = self.weight
            if w.dtype is torch.bfloat16 and not onednn_bfloat16():
                return w  # no oneDNN layout to pack for: torch's convolution takes it as it is
            version = None if w.is_inference() else w._version  # inference tensors have none
            key = (w.dtype, w.data_ptr(), version)
            if self._packed is None or self._packed[0] != key:
                reorder = torch.ops.mkldnn._reorder_convolution_weight
                packed = reorder(w.detach(), list(self.padding), list(self.stride),
                                 list(self.dilation), self.groups)  # fmt: skip
                self._packed = (key, packed)
            return self._packed[1]

        def __getstate__(self):  # copies and pickles carry the plain weight only
            state = super().__getstate__()
            state.pop("_packed", None)
            return state

        def forward(self, x, residual=None):
            if self.weight.dtype is torch.bfloat16 and not onednn_bfloat16():
                return self._separate(x, residual)
            pw = torch.ops.mkldnn._convolution_pointwise
            channels_last = x.is_contiguous(memory_format=CHANNELS_LAST)
            w = self.packed_weight() if channels_last else self.weight
            x = x.to(w.dtype)  # under bfloat16 autocast, as autocast casts a convolution's input
            args = (w, self.bias, self.padding, self.stride, self.dilation, self.groups)
            if residual is None:
                return pw(x, *args, "relu" if self.relu else "none", [], "")
            residual = residual.to(w.dtype)
            if w.dtype is torch.bfloat16 and not channels_last:
                # oneDNN's bfloat16 sum post-op needs channels_last; on NCHW, torch's
                # fallback kernel has no bfloat16: the sum and ReLU as separate operations
                y = pw(x, *args, "none", [], "").add_(residual)
                return y.relu_() if self.relu else y
            unary = "relu" if self.relu else None
            return pw(x, residual, *args, "add", 1.0, unary, [], "")

        def _separate(self, x, residual=None):
            """The convolution, the sum and the ReLU as torch's separate operations, for
            bfloat16 weights on a CPU where oneDNN computes no bfloat16."""
            w = self.weight
            y = self._conv_forward(x.to(w.dtype), w, self.bias)
            if residual is not None:
                y = y.add_(residual.to(y.dtype))
            return y.relu_() if self.relu else y

    return PointwiseConv2d


def pointwise(conv, relu: bool):
    """``conv`` (an ``nn.Conv2d`` with zero padding) as a :class:`PointwiseConv2d` sharing its
    parameters, with a fused ReLU when ``relu``; ``conv`` itself when it cannot be one."""
    from torch import nn

    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return conv
    cls = _pointwise_class()
    fused = cls.__new__(cls)
    fused.__dict__ = dict(conv.__dict__)  # conv's parameters and settings (it is replaced)
    fused.relu = relu
    return fused


def fuse_activations(net):
    """Each convolution followed by a ReLU becomes one oneDNN primitive with the ReLU as its
    post-operation (:func:`pointwise`): in a ``Sequential`` a ``Conv2d`` followed by an in-place
    ``ReLU`` (after an identity left by :func:`fold_batch_norms` or not), and in a module that
    lists ``conv_bn_relus`` once the batch norm is folded (its forward applies them in turn
    and uses the ReLU nowhere else); a module with a ``fused(pointwise)`` method (the ResNet blocks:
    their last convolution, the residual sum and the ReLU in one) is replaced by what it
    returns. The ReLU it replaced becomes an identity: the output of the fused network is the
    plain one's (in float32 the same numbers; under bfloat16 autocast, a residual sum rounded
    once instead of twice). In place, after :func:`fold_batch_norms`, inference only; a no-op
    where this torch lacks the primitive (:func:`pointwise_convolutions`). A ResNet18-UNet on
    2 x 448² chips: 47-48 ms against 51-53 ms under bfloat16, 196 against 201 ms in float32
    (experiments/perf)."""
    from torch import nn

    if not pointwise_convolutions():
        return net

    def fuse(mods, conv_name: str, between: list[str], relu_name: str) -> None:
        """``mods[conv_name]`` with the in-place ReLU ``mods[relu_name]`` fused, when what lies
        between them (``between``) is only identities (folded batch norms)."""
        conv, relu = mods.get(conv_name), mods.get(relu_name)
        if type(conv) is not nn.Conv2d or type(relu) is not nn.ReLU or not relu.inplace:
            return
        if any(type(mods.get(b)) is not nn.Identity for b in between):
            return
        fused = pointwise(conv, relu=True)
        if fused is not conv:
            mods[conv_name], mods[relu_name] = fused, nn.Identity()

    for parent in list(net.modules()):
        mods = parent._modules
        for name, child in list(mods.items()):
            fused = getattr(child, "fused", None)
            if callable(fused):
                mods[name] = fused(pointwise)
        if isinstance(parent, nn.Sequential):  # conv, relu or conv, identity, relu
            names = list(mods)
            for i, name in enumerate(names):
                fuse(mods, name, [], names[i + 1] if i + 1 < len(names) else "")
                if i + 2 < len(names):
                    fuse(mods, name, [names[i + 1]], names[i + 2])
        for conv_name, bn_name, relu_name in getattr(parent, "conv_bn_relus", ()):
            fuse(mods, conv_name, [bn_name], relu_name)
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
