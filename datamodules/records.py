"""Typed records of geotune's JSON files (``dataset.json``, ``model.json``): the base they share.

A record is a frozen dataclass whose fields are what the code reads, with the defaults of keys
older files lack; it is also a read-only mapping over the file as written (``raw``), for JSON
answers and keys only one module reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields


class FileRecord(Mapping):
    """Mixin of a frozen dataclass with a ``raw: dict`` field (the file as written)."""

    raw: dict

    @classmethod
    def typed_values(cls, data: Mapping, skip: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
        """The fields' values found in ``data``, and the names of required fields it lacks."""
        known = [f for f in fields(cls) if f.name not in ("raw", *skip)]
        missing = [
            f.name
            for f in known
            if f.name not in data and f.default is MISSING and f.default_factory is MISSING
        ]
        return {f.name: data[f.name] for f in known if f.name in data}, missing

    def to_dict(self) -> dict:
        return dict(self.raw)

    def __getitem__(self, key: str):
        return self.raw[key]

    def __iter__(self):
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)
