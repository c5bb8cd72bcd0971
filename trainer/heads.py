"""Networks per task: raw sensor values in, logits out. Each applies the backbone's normalisation
itself (callers pass raw values) and fills the backbone's "unknown" metadata when none is given.

- ``SegmentationNet``: backbone (list of feature maps) → neck (ViTs: one-stride maps resampled to
  strides 4..32) → decoder (UNet for ResNet, UPerNet for ViTs; segmentation-models-pytorch blocks)
  → 3×3 head, upsampled to the input size: ``[B, C, H, W]`` (or ``[B, C, T, H, W]``) →
  ``[B, K, H, W]``. Inputs of any H, W are padded to the network's multiple and cropped back.
- ``ChangeNet``: two dates ``[B, C, 2, H, W]`` → change logits ``[B, K, H, W]``. ``siamese``: one
  shared encoder runs on each date, the feature maps are fused per level (``diff``: absolute
  difference |before − after|, blind to direction, for change/no change; ``signed``: after −
  before; ``concat``: both, channels doubled) and decoded as above. ``frames`` (Prithvi): the
  two dates go through the encoder together as T=2 frames. Which fusion fits which classes:
  :func:`resolve_fusion`.
- ``ClassificationNet``: one pooled embedding per chip (``cls``: the ViT class token of the last
  returned block; ``mean``: the mean of its patch tokens, or of ResNet's last feature map) →
  linear or MLP head → ``[B, K]``.
"""

from __future__ import annotations

import math
from datetime import date

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.dates import from_day_number
from datamodules.errors import UserError

from .backbones.variants import get_entry


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


def _dates(date_ord: torch.Tensor) -> list[list[date | None]]:
    """``[B, T]`` day numbers (proleptic ordinals, plus the fraction of the day when the time is
    known; 0 = unknown) → per-sample lists of dates (``datetime`` with the time of day)."""
    return [[from_day_number(float(o)) for o in row] for row in date_ord.tolist()]


def _metadata(backbone: nn.Module, dates, lonlat, gsd: float) -> dict:
    """What the backbone needs beside pixels (Clay: waves/gsd/time/latlon; Prithvi-TL: coordinates)."""
    if not hasattr(backbone, "make_metadata"):
        return {}
    return backbone.make_metadata(dates=dates, lonlat=lonlat, gsd=gsd)


def _unknown_metadata(backbone: nn.Module, x: torch.Tensor, gsd: float) -> dict:
    """No date or place known: the backbone's own "unknown" encodings at the model's GSD."""
    frames = x.shape[2] if x.dim() == 5 else 1
    return _metadata(backbone, [[None] * frames] * x.shape[0], None, gsd)


class Configured:
    """A network that describes itself: ``config()`` (the keys in ``CONFIG``) and
    ``from_config()``, which builds the same network on a backbone."""

    CONFIG: tuple[str, ...] = ()

    def config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, backbone: nn.Module, num_classes: int, gsd: float, config: dict):
        """The network :meth:`config` describes, on ``backbone``, with random head weights."""
        kwargs = {k: config[k] for k in cls.CONFIG if k in config}
        return cls(backbone, num_classes, gsd=gsd, **kwargs)


class SegmentationNet(Configured, nn.Module):
    CONFIG = ("decoder", "decoder_channels")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        decoder: str = "auto",
        decoder_channels: int = 256,
        gsd: float | None = None,
        feature_multiplier: int = 1,
    ):
        """``feature_multiplier``: channels entering the decoder per backbone channel (2 when two
        dates are concatenated, see :class:`ChangeNet`)."""
        super().__init__()
        spec = backbone.spec
        self.gsd = float(gsd or spec.gsd or 10.0)
        self.normalize = Normalize(spec.mean, spec.std)
        self.backbone = backbone
        self.num_classes = num_classes
        if decoder == "auto":
            decoder = get_entry(spec.name).decoder
        self.decoder_name, self.decoder_channels = decoder, decoder_channels
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
            full[int(math.log2(s))] = c * feature_multiplier
        self._levels = [int(math.log2(s)) for s in strides]
        self._depth = len(full) - 1
        if decoder == "unet":
            from .unet import UnetDecoder

            dec_ch = [256, 128, 64, 32, 16][: self._depth]
            self.decoder = UnetDecoder(
                encoder_channels=full, decoder_channels=dec_ch, n_blocks=self._depth
            )
            head_in = dec_ch[-1]
            self.out_stride = 1
        elif decoder == "upernet":
            from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

            self.decoder = UPerNetDecoder(
                encoder_channels=full, encoder_depth=self._depth, decoder_channels=decoder_channels
            )
            head_in = decoder_channels
            self.out_stride = 4
        else:
            raise UserError(f"unknown decoder {decoder!r}; choose auto, unet or upernet")
        self.head = nn.Conv2d(head_in, num_classes, kernel_size=3, padding=1)
        self.multiple = max(2**self._depth, spec.patch_size)

    def config(self) -> dict:
        """This network's own configuration (the model record stores it; decoder resolved)."""
        return {"decoder": self.decoder_name, "decoder_channels": self.decoder_channels}

    def metadata_for(self, date_ord: torch.Tensor, lonlat: torch.Tensor) -> dict:
        """Keyword arguments of ``forward`` for a batch's ``date_ord`` ``[B, T]`` and ``lonlat``."""
        return _metadata(self.backbone, _dates(date_ord), lonlat, self.gsd)

    def features(self, x: torch.Tensor, **metadata) -> list[torch.Tensor]:
        metadata = metadata or _unknown_metadata(self.backbone, x, self.gsd)
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

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = -x.shape[-2] % self.multiple, -x.shape[-1] % self.multiple
        return _pad(x, ph, pw) if ph or pw else x

    def _decode(self, levels: list[torch.Tensor], size, h: int, w: int) -> torch.Tensor:
        y = self.head(self.decoder(levels))
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y[..., :h, :w]

    def forward(self, x: torch.Tensor, **metadata) -> torch.Tensor:
        """Raw values ``[B, C, H, W]`` (or ``[B, C, T, H, W]``) → logits ``[B, K, H, W]``."""
        h, w = x.shape[-2:]
        x = self._pad(x)
        return self._decode(self.features(x, **metadata), x.shape[-2:], h, w)


FUSIONS = ("diff", "signed", "concat")


def directional(classes: list[dict]) -> bool:
    """Whether change classes carry a direction: from-to transitions (``forest→cropland``) or
    more than one kind of change (built / demolished). Change / no change does not."""
    return len(classes) > 2 or any("→" in c["name"] for c in classes)


def resolve_fusion(fusion: str, classes: list[dict]) -> str:
    """``auto``: ``diff`` for change / no change, ``concat`` for directional classes (the
    absolute difference cannot tell built from demolished); ``diff`` on directional classes
    is refused."""
    if fusion not in ("auto", *FUSIONS):
        raise UserError(f"task.fusion must be auto, {', '.join(FUSIONS)}; not {fusion!r}")
    names = ", ".join(c["name"] for c in classes)
    if fusion == "auto":
        return "concat" if directional(classes) else "diff"
    if fusion == "diff" and directional(classes):
        raise UserError(
            f"task.fusion=diff fuses the dates by |before − after|, which cannot tell the "
            f"direction of a change, and these change classes have one ({names}). Use "
            "task.fusion=concat (or signed, or auto)."
        )
    return fusion


class ChangeNet(SegmentationNet):
    """Two dates ``[B, C, 2, H, W]`` → change logits ``[B, K, H, W]`` (see the module docstring)."""

    CONFIG = (*SegmentationNet.CONFIG, "fusion", "temporal")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        decoder: str = "auto",
        decoder_channels: int = 256,
        gsd: float | None = None,
        fusion: str = "diff",
        temporal: str = "siamese",
    ):
        spec = backbone.spec
        if fusion not in FUSIONS:
            raise UserError(f"task.fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
        if temporal == "frames":
            if not get_entry(spec.name).frames or spec.num_frames != 2:
                raise UserError(
                    f"task.temporal=frames feeds both dates to the encoder as T=2 frames, which only "
                    f"Prithvi backbones take ({spec.name} is {spec.family}, {spec.num_frames} frame(s)); "
                    "use task.temporal=siamese"
                )
        elif temporal == "siamese":
            if spec.num_frames != 1:
                raise UserError(
                    f"task.temporal=siamese runs the encoder on one date at a time; {spec.name} was "
                    f"built for {spec.num_frames} frames"
                )
        else:
            raise UserError(f"task.temporal must be siamese or frames, not {temporal!r}")
        factor = 2 if (temporal == "siamese" and fusion == "concat") else 1
        super().__init__(backbone, num_classes, decoder, decoder_channels, gsd, factor)
        self.fusion, self.temporal = fusion, temporal

    def config(self) -> dict:
        return super().config() | {"fusion": self.fusion, "temporal": self.temporal}

    def metadata_for(self, date_ord: torch.Tensor, lonlat: torch.Tensor) -> dict:
        if self.temporal == "frames":
            return super().metadata_for(date_ord, lonlat)
        dates = _dates(date_ord)
        per_date = [
            _metadata(self.backbone, [[d[t]] for d in dates], lonlat, self.gsd) for t in (0, 1)
        ]
        return {"per_date": per_date} if any(per_date) else {}

    def forward(
        self, x: torch.Tensor, per_date: list[dict] | None = None, **metadata
    ) -> torch.Tensor:
        """``per_date``: the backbone metadata of each date (siamese); ``metadata``: of both (frames)."""
        if x.dim() != 5 or x.shape[2] != 2:
            raise UserError(
                f"change detection takes two dates as [B, C, 2, H, W], got {tuple(x.shape)}"
            )
        if self.temporal == "frames":
            return super().forward(x, **metadata)
        h, w = x.shape[-2:]
        x = self._pad(x)
        per_date = per_date or [{}, {}]
        before = self.features(x[:, :, 0], **per_date[0])
        after = self.features(x[:, :, 1], **per_date[1])
        if self.fusion == "diff":
            fused = [(a - b).abs() for a, b in zip(before, after, strict=True)]
        elif self.fusion == "signed":
            fused = [b - a for a, b in zip(before, after, strict=True)]
        else:
            fused = [torch.cat((a, b), dim=1) for a, b in zip(before, after, strict=True)]
        return self._decode(fused, x.shape[-2:], h, w)


class ClassificationNet(Configured, nn.Module):
    """One embedding per chip (class token or mean of tokens) → linear or MLP head → ``[B, K]``."""

    CONFIG = ("pool", "head", "hidden", "dropout", "multi_label")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        pool: str = "auto",
        head: str = "linear",
        hidden: int = 256,
        dropout: float = 0.0,
        multi_label: bool = False,
        gsd: float | None = None,
    ):
        """``multi_label``: the logits are independent per class (sigmoid), not one softmax."""
        super().__init__()
        spec = backbone.spec
        self.gsd = float(gsd or spec.gsd or 10.0)
        self.normalize = Normalize(spec.mean, spec.std)
        self.backbone = backbone
        self.num_classes = num_classes
        vit = hasattr(backbone, "forward_tokens")
        if pool == "auto":
            pool = "cls" if vit else "mean"
        if pool not in ("cls", "mean"):
            raise UserError(f"task.pool must be auto, cls or mean, not {pool!r}")
        if pool == "cls" and not vit:
            raise UserError(f"{spec.name} has no class token; use task.pool=mean (or auto)")
        self.pool = pool
        dim = spec.embed_dim if vit else spec.out_channels[-1]
        if head == "linear":
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))
        elif head == "mlp":
            self.head = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        else:
            raise UserError(f"task.head must be linear or mlp, not {head!r}")
        self.head_name, self.hidden, self.dropout = head, hidden, dropout
        self.multi_label = multi_label

    def config(self) -> dict:
        """This network's own configuration (the model record stores it; pool resolved)."""
        return {
            "pool": self.pool,
            "head": self.head_name,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "multi_label": bool(self.multi_label),
        }

    def metadata_for(self, date_ord: torch.Tensor, lonlat: torch.Tensor) -> dict:
        return _metadata(self.backbone, _dates(date_ord), lonlat, self.gsd)

    def embed(self, x: torch.Tensor, **metadata) -> torch.Tensor:
        """Raw values → pooled embedding ``[B, D]``."""
        metadata = metadata or _unknown_metadata(self.backbone, x, self.gsd)
        x = self.normalize(x)
        if self.pool == "mean" and not hasattr(self.backbone, "forward_tokens"):
            return self.backbone(x, **metadata)[-1].mean(dim=(-2, -1))
        tokens = self.backbone.forward_tokens(x, **metadata)[0][-1]
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor, **metadata) -> torch.Tensor:
        """Raw values ``[B, C, H, W]`` (or ``[B, C, T, H, W]``) → logits ``[B, K]``."""
        return self.head(self.embed(x, **metadata))


NETS = {"segmentation": SegmentationNet, "change": ChangeNet, "classification": ClassificationNet}


def build_net(task: str, backbone: nn.Module, num_classes: int, gsd: float, config: dict):
    """The network of ``task`` on ``backbone``: what training builds from the task config and
    the registry rebuilds from a model record (``config``: the network's ``config()``)."""
    if task not in NETS:
        raise UserError(f"unknown task {task!r}; geotune's tasks: {', '.join(NETS)}")
    return NETS[task].from_config(backbone, num_classes, gsd, config)


def probabilities(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Logits ``[B, K, ...]`` → probabilities: a softmax over the classes, or (``multi_label``)
    one sigmoid per class."""
    return torch.sigmoid(logits) if multi_label else logits.softmax(1)


def postprocess(logits: torch.Tensor, multi_label: bool = False):
    """Logits ``[B, K, ...]`` → ``(probabilities, classes)``: the most probable class, or
    (``multi_label``) 0/1 per class at probability 0.5."""
    prob = probabilities(logits, multi_label)
    return prob, ((prob > 0.5).to(torch.int64) if multi_label else prob.argmax(1))


def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Pad bottom/right of the last two dims (reflect where possible), any leading dims."""
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-2], shape[-1])
    mode = "reflect" if ph < shape[-2] and pw < shape[-1] else "replicate"
    flat = F.pad(flat, (0, pw, 0, ph), mode=mode)
    return flat.reshape(*shape[:-2], flat.shape[-2], flat.shape[-1])
