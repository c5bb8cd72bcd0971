"""The model record (``model.json`` of every registered version), typed and versioned.

A record says everything needed to predict without the training config: the task, the
backbone (name, size, weights, build arguments, spec), the network's own configuration
(:meth:`trainer.heads.SegmentationNet.config` and its kin, stored flat beside the other keys),
the class table, bands, the model's z-score on stored values and what it was derived from
(``normalization``), resolution, frames, patch defaults and lineage. :meth:`ModelRecord.from_dict`
upgrades older versions (:func:`upgrade_record`) and checks the keys every version has; the
mapping view (``record["key"]``, :meth:`ModelRecord.to_dict`) is today's layout of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from datamodules.errors import UserError
from datamodules.records import FileRecord

RECORD_VERSION = 2  # model.json's "geotune_model"; 2: normalization (units) recorded


class ModelRefError(UserError):
    pass


def upgrade_record(record: Mapping) -> dict:
    """A model record of any version in today's layout (the stored file is never rewritten).

    Version 1 (before units were recorded): its ``mean``/``std`` were applied to the stored
    values of its ``sensor`` as they came, and that is what the upgraded record says."""
    from datamodules.sensors import stored_units

    rec = dict(record)
    version = int(rec.get("geotune_model", 1))
    if version > RECORD_VERSION:
        raise ModelRefError(
            f"this model record is version {version}; this geotune reads up to "
            f"{RECORD_VERSION}. Upgrade geotune to load it."
        )
    if version < 2:
        units = stored_units(rec.get("sensor"), list(rec["bands"]))
        rec["normalization"] = {
            "statistics": "recorded",
            "source": "model record version 1: mean/std applied to the stored values as given "
            "(units were not recorded then)",
            "sensor": rec.get("sensor"),
            "input_units": [u.to_dict() for u in units] if units else None,
            "conversion": "none",
        }
    rec["geotune_model"] = RECORD_VERSION
    return rec


@dataclass(frozen=True)
class ModelRecord(FileRecord):
    """``model.json``: typed fields for what the code reads, defaults for what older records
    lack. ``net`` is the network's configuration (every key that is not a field here)."""

    backbone: dict  # name, size, weights, kwargs (build arguments), spec
    num_classes: int
    classes: list[dict]
    bands: list[str]
    mean: list[float]
    std: list[float]
    resolution: list[float]
    patch_size: int
    geotune_model: int = RECORD_VERSION
    task: str = "segmentation"
    name: str | None = None
    ignore_index: int = 255
    output_nodata: int = 255
    normalization: dict = field(default_factory=dict)
    sensor: str | None = None
    num_frames: int = 1
    overlap: int = 32
    bounds_lonlat: list[float] | None = None
    run_id: str | None = None
    dataset_id: str | None = None
    evaluation: dict | None = None
    net: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelRecord:
        rec = upgrade_record(data)
        values, missing = cls.typed_values(rec, skip=("net",))
        if missing:
            raise ModelRefError(
                f"the model record lacks {', '.join(missing)}: it is not a model geotune registered"
            )
        net = {k: v for k, v in rec.items() if k not in cls.__dataclass_fields__}
        return cls(**values, net=net, raw=rec)

    @property
    def multi_label(self) -> bool:
        """Classification with several classes per chip (one sigmoid per class)."""
        return bool(self.net.get("multi_label", False))

    def input_shape(self) -> tuple[int, ...]:
        """The raw input the network takes: ``(-1, C, -1, -1)``, or ``(-1, C, T, -1, -1)`` for
        several dates."""
        c, t = len(self.bands), int(self.num_frames)
        return (-1, c, t, -1, -1) if t > 1 else (-1, c, -1, -1)


def as_record(record: Mapping) -> ModelRecord:
    """``record`` as a :class:`ModelRecord` (a plain dict is read and upgraded)."""
    return record if isinstance(record, ModelRecord) else ModelRecord.from_dict(record)


__all__ = [
    "RECORD_VERSION",
    "ModelRecord",
    "ModelRefError",
    "as_record",
    "upgrade_record",
]
