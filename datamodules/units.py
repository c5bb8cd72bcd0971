"""What pixel values mean, and the exact conversions between their units.

A :class:`Unit` says how values relate to a physical quantity: ``physical = value * scale +
offset``. Files hold *stored* values (a sensor's digital numbers, e.g. Landsat Collection 2 L2
surface reflectance = stored * 2.75e-5 - 0.2); each backbone's published statistics are in one
unit (Prithvi: HLS surface reflectance x 10000, i.e. scale 1e-4); a model's preprocessing goes
stored → physical → the statistics' unit → z-score. Both steps are affine, so the whole chain
folds exactly into one z-score per band on the stored values (:func:`fold`), which is what the
model applies and what its MLM card writes as ``value_scaling``.

Values of two units convert exactly when they measure the same quantity (reflectance,
backscatter in dB, ...). Top-of-atmosphere and surface reflectance share a unit but not a
quantity: they convert, with a note (:func:`conversion_note`). Digital numbers without a
physical meaning (8-bit RGB, NAIP) convert only to themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import UserError


class UnitError(UserError):
    """Values whose units are unknown or cannot be converted to what a model needs."""


@dataclass(frozen=True)
class Unit:
    """``physical = value * scale + offset``, in ``quantity`` (``level``: TOA or surface)."""

    quantity: str
    scale: float = 1.0
    offset: float = 0.0
    level: str = ""

    def describe(self) -> str:
        what = f"{self.level} {self.quantity}".strip()
        if (self.scale, self.offset) == (1.0, 0.0):
            return what
        text = f"{what} = value * {self.scale:g}"
        if self.offset:
            text += f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}"
        return text

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Unit:
        return cls(d["quantity"], float(d["scale"]), float(d["offset"]), d.get("level", ""))


def conversion(src: Unit, dst: Unit) -> tuple[float, float] | None:
    """``(gain, bias)`` with ``dst_value = src_value * gain + bias`` (exact), or None when the
    two units measure different quantities."""
    if src.quantity != dst.quantity:
        return None
    if src.scale <= 0 or dst.scale <= 0:
        raise UnitError(f"scales must be positive: {src.describe()} / {dst.describe()}")
    return src.scale / dst.scale, (src.offset - dst.offset) / dst.scale


def conversion_note(src: Unit, dst: Unit) -> str:
    """What is not exact about converting ``src`` to ``dst`` ('' when nothing)."""
    if src.level and dst.level and src.level != dst.level:
        return (
            f"{src.level} {src.quantity} is converted exactly into the unit of statistics computed "
            f"on {dst.level} {dst.quantity}; the two quantities differ physically"
        )
    return ""


def fold(
    mean: list[float], std: list[float], stats_units: list[Unit], input_units: list[Unit]
) -> tuple[list[float], list[float]]:
    """Statistics in ``stats_units`` → the same z-score on values in ``input_units``.

    With ``v = x * gain + bias`` (input → statistics' unit), ``(v - mean) / std`` equals
    ``(x - (mean - bias) / gain) / (std / gain)``. Raises :class:`UnitError` for a band whose
    quantity differs."""
    out_mean, out_std = [], []
    for m, s, su, iu in zip(mean, std, stats_units, input_units, strict=True):
        conv = conversion(iu, su)
        if conv is None:
            raise UnitError(f"{iu.describe()} cannot be converted to {su.describe()}")
        gain, bias = conv
        out_mean.append((m - bias) / gain)
        out_std.append(s / gain)
    return out_mean, out_std


def affine(src: list[Unit], dst: list[Unit]) -> tuple[list[float], list[float]] | None:
    """Per-band ``(gains, biases)`` taking values in ``src`` units to ``dst`` units; None when
    they are the same units already. Raises :class:`UnitError` when a band cannot convert."""
    gains, biases = [], []
    for s, d in zip(src, dst, strict=True):
        conv = conversion(s, d)
        if conv is None:
            raise UnitError(f"{s.describe()} cannot be converted to {d.describe()}")
        gains.append(conv[0])
        biases.append(conv[1])
    if all(abs(g - 1.0) < 1e-12 and abs(b) < 1e-9 for g, b in zip(gains, biases, strict=True)):
        return None
    return gains, biases


__all__ = ["Unit", "UnitError", "affine", "conversion", "conversion_note", "fold"]
