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

import numpy as np

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


def value_ratio(values, expected) -> float | None:
    """How far per-band ``values`` (medians, means) are from ``expected`` ones: the geometric
    mean of their ratios over the bands where both are positive (None when under half of them
    are)."""
    values, expected = np.asarray(values, dtype=float), np.asarray(expected, dtype=float)
    use = (values > 0) & (expected > 0)
    if use.sum() < max(1, len(expected) // 2):
        return None
    return float(np.exp(np.mean(np.log(values[use] / expected[use]))))


def alike(values, expected) -> bool:
    """Whether ``values`` are within 5x of ``expected`` (:func:`value_ratio`)."""
    ratio = value_ratio(values, expected)
    return ratio is not None and 0.2 <= ratio <= 5


def converted(values, src: list[Unit], dst: list[Unit]):
    """Per-band ``values`` in ``src`` units, in ``dst`` units."""
    conv = affine(src, dst)
    values = np.asarray(values, dtype=float)
    return values if conv is None else values * np.asarray(conv[0]) + np.asarray(conv[1])


def float_reflectance(units: list[Unit], values, expected, expected_units: list[Unit]):
    """Reflectance stored as floats 0..1 (as Google Earth Engine exports, SNAP and many scripts
    write it) where the sensor stores it scaled (``units``: Sentinel-2 x 10000, Landsat's
    2.75e-5 - 0.2): the units of such values (scale 1) when ``values`` (per-band medians or
    means, at most 2) read so are :func:`alike` ``expected`` (in ``expected_units``), and read
    in ``units`` are not; else None. The caller checks that the values are floats and that the
    file declares no scale of its own."""
    if any(u.quantity != "reflectance" or u.scale >= 1.0 for u in units):
        return None
    if np.max(values) > 2.0:
        return None
    as_floats = [Unit(u.quantity, 1.0, 0.0, u.level) for u in units]
    try:
        if alike(converted(values, units, expected_units), expected):
            return None
        return as_floats if alike(converted(values, as_floats, expected_units), expected) else None
    except UnitError:
        return None


__all__ = [
    "Unit",
    "UnitError",
    "affine",
    "alike",
    "conversion",
    "conversion_note",
    "converted",
    "float_reflectance",
    "fold",
    "value_ratio",
]
