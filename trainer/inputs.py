"""What prediction checks and decides about its input scenes, before any pixel is predicted.

- **Sensor**: the one given, else the model's (its record knows the sensor it was trained on),
  so the sensor's band names and fill value apply to files that do not state theirs.
- **Bands**: as the files name them (or ``--bands``); a file without band names whose band
  count equals the model's is taken in the model's band order, with a warning.
- **Nodata**: the file's, else the sensor's fill value (all bands equal to it); said in the
  summary.
- **Units**: the model's statistics apply to stored values in its record's units. Imagery in
  other units (another sensor, or a file declaring another scale/offset) is converted exactly
  when both measure the same quantity, with a loud warning when the sensor differs, and refused
  when they do not (``datamodules.units``).
- **Dates**: several dates are put oldest first when all are known (a change model takes
  before, after); the summary says whether they were reordered or their order is unknown.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio

from datamodules.errors import UserError
from datamodules.imagery import ImageryError, Scene, date_order, open_scenes
from datamodules.product_quality import cloud_note, quality_kind
from datamodules.s2_products import offset_suspect
from datamodules.sensors import stored_units
from datamodules.units import Unit, UnitError, affine, float_reflectance, value_ratio


class PredictError(UserError):
    """A scene, option or model that prediction cannot take, with what to do instead."""


@dataclass
class Inputs:
    scenes: list[Scene]
    images: list
    sensor: str | None
    sensor_source: str
    conversion: tuple[list[float], list[float]] | None = None
    # the units of the scene's stored values in the model's band order, as the sensor stores
    # them (None: unknown, or the file declares a scale/offset of its own)
    sensor_units: list[Unit] | None = None
    units_note: str | None = None  # what the conversion from sensor_units is, in notes
    notes: list[str] = field(default_factory=list)
    date_order: str = "one date"
    order: list[int] | None = None  # the given dates' indices, oldest first, when reordered

    def reordered(self, names: list) -> list:
        """``names`` given per date, in the order the dates are predicted."""
        if self.order is None or len(names) != len(self.order):
            return names
        return [names[i] for i in self.order]

    def summary(self) -> dict:
        s = self.scenes[0]
        out = {
            "sensor": self.sensor,
            "sensor_source": self.sensor_source,
            "nodata": s.nodata_json,
            "nodata_source": s.nodata_source,
            "date_order": self.date_order,
            "conversion": None,
            "notes": self.notes,
        }
        if self.conversion is not None:
            out["conversion"] = {"gain": self.conversion[0], "bias": self.conversion[1]}
        values = [s.offset_note() for s in self.scenes]
        if any(values):  # ESA band files with the offset of baseline >= 04.00, taken off
            out["values"] = values
        clouds = [cloud_note(s) for s in self.scenes]
        if any(clouds):  # a product's quality band: read as a cloud mask, or not
            out["clouds"] = clouds
        return out


def describe(summary: dict) -> list[str]:
    """What was decided about the input (an :meth:`Inputs.summary`): one line, then one per
    scene whose stored values had something taken off (ESA's offset)."""
    converted = ", converted exactly to the model's units" if summary["conversion"] else ""
    line = (
        f"input: {summary['sensor'] or 'sensor unknown'} ({summary['sensor_source']}){converted}; "
        f"nodata {summary['nodata']} ({summary['nodata_source']}); dates {summary['date_order']}"
    )
    return [line, *filter(None, summary.get("values", []) + summary.get("clouds", []))]


def prepare_inputs(
    rec: dict, images: list, bands, sensor, dates, mask_clouds: bool = False
) -> Inputs:
    """Open the scenes for a model and decide sensor, bands, units and date order;
    ``mask_clouds``: products' quality bands make their clouds nodata."""
    model_sensor = rec.get("sensor")
    source = "given" if sensor else ("the model's" if model_sensor else "none")
    sensor = sensor or model_sensor
    scenes = _open(images, bands, sensor, dates, rec, mask_clouds)
    out = Inputs(scenes, list(images), sensor, source)
    note = scenes[0].fill_value_note()
    if note:
        out.notes.append(f"{note} in every output")
        warnings.warn(out.notes[-1], stacklevel=2)
    for scene in scenes:  # a file written from an ESA product after 04.00, offset and all
        if suspect := offset_suspect(scene, sensor):
            out.notes.append(suspect)
            warnings.warn(suspect, stacklevel=2)
    if len(scenes) > 1:
        _order(out)
    _units(out, rec, model_sensor)
    _values(out, rec)
    return out


def scene_medians(scene: Scene, bands: list[str]) -> np.ndarray | None:
    """Per band (``bands``, by name), the median of the scene's valid pixels in its sample
    (:func:`datamodules.scene_reader.sample_pixels`); None when none is valid."""
    from datamodules.scene_reader import sample_pixels

    values = sample_pixels(scene)[[scene.bands.index(b) for b in bands]]
    return np.median(values, axis=1) if values.shape[1] else None


def _values(out: Inputs, rec: dict) -> None:
    """Warn when the scene's values are far from those the model was trained on (e.g.
    reflectance stored as 0..1 for a model of values x 10000, or 8-bit RGB): the classes of such
    a scene mean little, and nothing else would say so."""
    mean = np.asarray(rec.get("mean") or [], dtype=np.float64)
    scene = out.scenes[0]
    if not len(mean) or not all(b in scene.bands for b in rec["bands"]):
        return
    med = scene_medians(scene, list(rec["bands"]))
    if med is None:
        return
    raw = med
    if out.conversion is not None:  # the model's units
        med = med * np.asarray(out.conversion[0]) + np.asarray(out.conversion[1])
    ratio = value_ratio(med, mean)
    if ratio is not None and 0.2 <= ratio <= 5:
        return
    # not alike, or nothing to compare (reflectance floats taken for Landsat's stored values
    # convert to negatives): reflectance as floats, if that is what they are
    if _as_reflectance(out, rec, raw, mean) or ratio is None:
        return
    shown = ", ".join(
        f"{b} {m:.4g} (trained {t:.4g})" for b, m, t in zip(rec["bands"], med, mean, strict=True)
    )
    if input_units(rec) is None:  # nothing to convert from or to
        fix = (
            "The model records no sensor (its dataset was added without --sensor), so geotune "
            "cannot convert values for it: give a scene stored as its training imagery was; "
            "otherwise its classes mean little"
        )
    else:
        fix = (
            "A file that declares its scale and offset, or --sensor for imagery of another "
            "sensor, is converted exactly; otherwise its classes mean little"
        )
    msg = (
        f"the scene's values are about {ratio:.2g}x those the model was trained on "
        f"(band medians: {shown}): check its units (e.g. reflectance stored as 0..1 for a "
        f"model of values x 10000, or 8-bit display RGB). {fix}"
    )
    out.notes.append(msg)
    warnings.warn(msg, stacklevel=3)


def _as_reflectance(out: Inputs, rec: dict, raw: np.ndarray, mean: np.ndarray) -> bool:
    """A float scene of reflectance 0..1 where its sensor stores reflectance scaled
    (:func:`datamodules.units.float_reflectance`, against the model's training values): its
    values are converted from reflectance, and the summary says so. True when they were."""
    want, have = input_units(rec), out.sensor_units
    if (
        want is None
        or have is None
        or not np.issubdtype(np.dtype(out.scenes[0].dtype), np.floating)
    ):
        return False
    as_floats = float_reflectance(have, raw, mean, want)
    if as_floats is None:
        return False
    out.conversion = affine(as_floats, want)
    if out.units_note in out.notes:  # the conversion from the sensor's units: not made
        out.notes.remove(out.units_note)
    msg = (
        f"{Path(out.images[0]).name} holds reflectance as floats (band medians "
        f"{', '.join(f'{m:.3g}' for m in raw)}): read as reflectance 0..1"
    )
    if out.conversion is None:  # a model trained on such floats
        out.notes.append(f"{msg}, the model's units")
        return True
    units = "; ".join(sorted({u.describe() for u in want}))
    out.notes.append(f"{msg} and converted exactly to the model's units ({units})")
    warnings.warn(out.notes[-1], stacklevel=4)
    return True


def _open(images, bands, sensor, dates, rec, mask_clouds) -> list[Scene]:
    try:
        return open_scenes(images, bands=bands, sensor=sensor, dates=dates, mask_clouds=mask_clouds)
    except ImageryError as e:
        if bands or not _unnamed(images) or any(map(quality_kind, images)):
            raise PredictError(str(e)) from None
    counts = set()
    for p in images:
        with rasterio.open(p) as ds:
            counts.add(ds.count)
    if counts != {len(rec["bands"])}:
        raise PredictError(
            f"cannot tell the bands of {Path(images[0]).name} ({max(counts)} bands, no band "
            f"names); the model needs {', '.join(rec['bands'])}. Pass --bands in file order."
        )
    warnings.warn(
        f"{Path(images[0]).name} has no band names; assuming the model's band order {rec['bands']}",
        stacklevel=3,
    )
    try:
        return open_scenes(
            images, bands=list(rec["bands"]), sensor=sensor, dates=dates, mask_clouds=mask_clouds
        )
    except ImageryError as e:
        raise PredictError(str(e)) from None


def _unnamed(images) -> bool:
    for p in images:
        try:
            with rasterio.open(p) as ds:
                if all(ds.descriptions):
                    return False
        except rasterio.errors.RasterioIOError:
            return False
    return True


def _order(out: Inputs) -> None:
    order = date_order(out.scenes)
    if order is None:
        out.date_order = "as given (a date is unknown)"
        return
    if order == sorted(order):
        out.date_order = "oldest first, as given"
        return
    dates = ", ".join(s.date.isoformat() for s in out.scenes)
    out.order = order
    out.scenes = [out.scenes[i] for i in order]
    out.images = out.reordered(out.images)
    out.date_order = "reordered oldest first"
    msg = f"the dates were given as {dates}; predicting them oldest first (before, after)"
    out.notes.append(msg)
    warnings.warn(msg, stacklevel=3)


def input_units(record: dict) -> list[Unit] | None:
    """The units of the stored values a model record's statistics apply to (None: unknown)."""
    units = (record.get("normalization") or {}).get("input_units")
    return [Unit.from_dict(u) for u in units] if units else None


def _units(out: Inputs, rec: dict, model_sensor: str | None) -> None:
    """The exact conversion of the scenes' stored values into the model's input units."""
    want = input_units(rec)
    scene = out.scenes[0]
    if want is None or out.sensor is None:
        return
    idx = [scene.bands.index(b) for b in rec["bands"] if b in scene.bands]
    if len(idx) != len(rec["bands"]):
        return  # the band mapping refuses it with the missing bands named
    scales = [scene.scales[i] for i in idx] if scene.scales else None
    offsets = [scene.offsets[i] for i in idx] if scene.offsets else None
    have = stored_units(out.sensor, list(rec["bands"]), scales, offsets)
    if have is None:
        return
    if have == stored_units(out.sensor, list(rec["bands"])):  # nothing declared by the file
        out.sensor_units = have
    try:
        conv = affine(have, want)
    except UnitError:
        raise PredictError(
            f"this model takes {model_sensor} values ({'; '.join(sorted({u.describe() for u in want}))}); "
            f"{out.sensor} values ({'; '.join(sorted({u.describe() for u in have}))}) cannot be "
            f"converted to them. Predict {model_sensor} imagery (--sensor {model_sensor}), or train "
            f"a model on {out.sensor} imagery."
        ) from None
    if conv is None:
        return
    out.conversion = conv
    if out.sensor != model_sensor:
        msg = (
            f"WARNING: this model was trained on {model_sensor} imagery and this is "
            f"{out.sensor}: its values are converted exactly into the model's units, but the "
            "model has never seen this sensor (band responses and processing differ); check "
            "the results before trusting them"
        )
        warnings.warn(msg, stacklevel=3)
    elif out.sensor_units is None:
        msg = (
            "the file declares its own scale/offset; its values are converted to the model's units"
        )
    else:  # a model of reflectance as floats (datamodules.ingest_manifest.stored_as_floats)
        msg = (
            f"the model takes {'; '.join(sorted({u.describe() for u in want}))}; this scene's "
            f"values ({'; '.join(sorted({u.describe() for u in have}))}) are converted exactly"
        )
    out.notes.append(msg)
    if out.sensor == model_sensor:  # about the conversion alone; another sensor stays said
        out.units_note = msg


__all__ = ["Inputs", "describe", "prepare_inputs"]
