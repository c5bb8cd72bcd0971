"""Encoders for chip embeddings: a bare backbone or a registered fine-tune's encoder, pooled
to one vector per chip.

A bare backbone (``EncoderSource(backbone="clay_v1_5", weights=...)``) is built with the
arguments training gives a pretrained backbone (its bands and statistics; Clay's per sensor),
from its official weights file or ``random`` as an explicit opt-in: never random when no file
was named. A fine-tune (``EncoderSource(model="NAME@ALIAS")``) lends its trained backbone and
normalisation. Pooling follows classification (:class:`trainer.heads.ClassificationNet`): the
class token for ViTs, the mean of the last feature map for CNNs, unless ``pool`` says otherwise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from datamodules.errors import UserError

from .heads import ClassificationNet


class EmbedError(UserError):
    pass


class EmbeddingNet(ClassificationNet):
    """An encoder pooled to one vector per chip: a classification network without its head
    (same normalisation, metadata and pooling), ``forward`` → ``[B, D]``."""

    def __init__(self, backbone, pool: str = "auto", gsd: float | None = None):
        from torch import nn

        super().__init__(backbone, num_classes=1, pool=pool, gsd=gsd)
        self.dim = self.head[-1].in_features  # the linear head's input: the pooled width
        self.head = nn.Identity()


@dataclass
class Encoder:
    """A network that embeds chips, with what prediction needs to feed it (``record``) and what
    the file records about it (``provenance``, ``weights_label``)."""

    net: EmbeddingNet
    record: dict
    provenance: dict
    weights_label: str

    @property
    def dim(self) -> int:
        return self.net.dim

    @property
    def name(self) -> str:
        return self.record["backbone"]["name"]


@dataclass
class Imagery:
    """What a bare backbone is fitted to: the imagery's bands, sensor (whose units the
    backbone's statistics are converted from), declared scale/offset, pixel size and dates."""

    bands: list[str]
    sensor: str | None
    gsd: float
    frames: int = 1
    scales: list[float] | None = None
    offsets: list[float] | None = None

    @classmethod
    def of(cls, scenes, sensor: str | None) -> Imagery:
        from .chips import ground_resolution

        s = scenes[0]
        gsd = float(ground_resolution(s.grid)[0])
        return cls(list(s.bands), sensor, gsd, len(scenes), s.scales, s.offsets)


@dataclass
class EncoderSource:
    """Which encoder the user asked for: a bare ``backbone`` (+ ``weights``, ``size``) or a
    registered ``model`` (``NAME@ALIAS``, or NAME with ``version``/``alias``)."""

    backbone: str | None = None
    weights: str | None = None  # a file, "random", or None: the official file in the weights dir
    size: str | None = None
    model: str | None = None
    version: str | None = None
    alias: str | None = None
    pool: str = "auto"
    record_paths: bool = True  # False: the weights file's name only (a server's paths stay its own)
    _loaded: object = field(default=None, repr=False)

    def __post_init__(self):
        if bool(self.backbone) == bool(self.model):
            raise EmbedError(
                "name the encoder: --backbone NAME (e.g. clay_v1_5, with --weights FILE or "
                "random) or --model NAME@ALIAS (a registered fine-tune), not both"
            )
        if self.model and (self.weights or self.size):
            raise EmbedError("--weights and --size go with --backbone; a --model has its own")

    def default_chip(self) -> int:
        """A fine-tune's training patch; a bare backbone's pre-training chip."""
        from .backbones import get_entry

        if self.model:
            return int(self.registered().record["patch_size"])
        return get_entry(self.backbone).pretrain_chip

    def build(self, imagery: Imagery | None, chip: int) -> Encoder:
        """The encoder for ``imagery`` (a registered model needs none: it has its own)."""
        if self.model:
            return self._from_model()
        return self._from_backbone(imagery, chip)

    def registered(self):
        """The registered model (loaded once), for ``model`` sources."""
        from .loading import load_model

        if self._loaded is None:
            self._loaded = load_model(self.model, version=self.version, alias=self.alias)
        return self._loaded

    def _from_model(self) -> Encoder:
        model = self.registered()
        rec = model.record
        task = rec.task
        if task == "change":
            raise EmbedError(
                f"{model.uri} is a change model (two dates at once); embed with a segmentation "
                "or classification model, or with its backbone (--backbone)"
            )
        pool = rec["pool"] if self.pool == "auto" and task == "classification" else self.pool
        net = EmbeddingNet(model.net.backbone, pool, gsd=model.net.gsd)
        net.normalize = model.net.normalize  # the fine-tune's own (equal to the spec's)
        digest = tensors_sha256(net)
        provenance = {
            "weights": {
                "model": model.uri,
                "tensors_sha256": digest,
                "pretrained_from": rec["backbone"]["weights"],
            },
            "run_id": rec.get("run_id"),
            "dataset_id": rec.get("dataset_id"),
        }
        return Encoder(net, dict(rec), provenance, model.uri)

    def _from_backbone(self, im: Imagery, chip: int) -> Encoder:
        """The backbone as training builds a pretrained one for this imagery: its bands (Clay:
        those it publishes statistics for), its statistics converted exactly from the sensor's
        stored values (:func:`trainer.backbones.adapt.fit_statistics`). Random weights, asked
        for by name, take the same path."""
        from .backbones import build_backbone, get_entry, resolve_weights
        from .backbones.adapt import backbone_arguments, fit_statistics

        if not im.sensor:
            raise EmbedError(
                f"{self.backbone}'s statistics are in physical units, converted from your stored "
                "values by their sensor's scale and offset: name the imagery's sensor with "
                "--sensor (e.g. sentinel-2-l2a, landsat-c2-l2, hls, naip)"
            )
        path = resolve_weights(self.backbone, self.weights)  # None: random, asked for by name
        b = {
            "name": self.backbone,
            "size": self.size,
            "normalization": "pretrained",
            "out_indices": [get_entry(self.backbone).last_feature],
        }
        scene = SimpleNamespace(
            id="the imagery",
            manifest={"sensor": im.sensor, "stats": {}, "scales": im.scales, "offsets": im.offsets},
            bands=list(im.bands),
            images=[None] * im.frames,
        )
        kwargs = backbone_arguments(b, scene, chip)
        backbone = build_backbone(self.backbone, str(path) if path else "random", **kwargs)
        fit_statistics(backbone, scene)
        spec = backbone.spec
        net = EmbeddingNet(backbone, self.pool, gsd=im.gsd)
        digest = file_sha256(path) if path else None
        record = {
            "task": "embedding",
            "num_frames": im.frames,
            "bands": list(spec.bands),
            "resolution": [im.gsd, im.gsd],
            "sensor": im.sensor,
            "normalization": spec.normalization,
            "patch_size": chip,
            "overlap": 0,
            "num_classes": 1,
            "backbone": {
                "name": self.backbone,
                "size": spec.size,
                "weights": spec.weights,
                "kwargs": kwargs,
                "spec": spec.to_dict(),
            },
        }
        label = f"{path.name} sha256:{digest[:16]}" if path else "random"
        shown = (str(path) if self.record_paths else path.name) if path else "random"
        return Encoder(net, record, {"weights": {"file": shown, "file_sha256": digest}}, label)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(net) -> str:
    """A digest of a network's weights (names, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def default_chip(record: dict) -> int:
    if record.get("task") == "embedding":
        from .backbones import get_entry

        return get_entry(record["backbone"]["name"]).pretrain_chip
    return int(record["patch_size"])
