"""The sensor table: one id per sensor, used everywhere (CLI, config, manifest, model card, HTTP).

Band names are the STAC ``eo`` common names (``blue``, ``nir08``, ``swir16`` ...), so a band is
called the same thing in a dataset, a backbone spec and a STAC asset map. Wavelengths are
centre wavelengths in micrometres; ``gsd`` is the native ground sample distance in metres.
``scale``/``offset`` turn stored values into the sensor's physical ``quantity`` (reflectance,
backscatter in dB; a band may override them, e.g. Landsat's thermal band):
``physical = stored * scale + offset``; ``level`` tells top-of-atmosphere from surface
reflectance. Sensors whose values have no physical unit (8-bit RGB, NAIP) have a quantity of
their own, so their values convert to nothing else (:mod:`datamodules.units`). ``nodata`` is the
fill value of the sensor's products, used where a file declares none. Default statistics are
per-band mean/std of the *stored* values over typical scenes, used only when a dataset has no
statistics of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError
from .units import Unit


@dataclass(frozen=True)
class Band:
    name: str
    wavelength: float  # µm (centre)
    gsd: float  # m
    mean: float  # default statistics of stored values
    std: float
    asset: str = ""  # the provider's band id (B02, SR_B2, ...)
    quantity: str | None = None  # overrides of the sensor's quantity, scale and offset
    scale: float | None = None
    offset: float | None = None


@dataclass(frozen=True)
class Sensor:
    id: str
    title: str
    bands: tuple[Band, ...]
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    quantity: str = "reflectance"
    level: str = ""  # reflectance: TOA or surface

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band(self, name: str) -> Band:
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(
            f"sensor {self.id!r} has no band {name!r}; its bands are: {', '.join(self.band_names)}"
        )

    def unit(self, name: str) -> Unit:
        """The unit of band ``name``'s stored values."""
        b = self.band(name)
        if b.quantity is not None:
            return Unit(b.quantity, b.scale or 1.0, b.offset or 0.0)
        return Unit(self.quantity, self.scale, self.offset, self.level)


_S2 = (
    Band("coastal", 0.443, 60, 1600.0, 700.0, "B01"),
    Band("blue", 0.490, 10, 1400.0, 800.0, "B02"),
    Band("green", 0.560, 10, 1350.0, 750.0, "B03"),
    Band("red", 0.665, 10, 1300.0, 900.0, "B04"),
    Band("rededge071", 0.705, 20, 1600.0, 850.0, "B05"),
    Band("rededge075", 0.740, 20, 2300.0, 950.0, "B06"),
    Band("rededge078", 0.783, 20, 2650.0, 1050.0, "B07"),
    Band("nir", 0.842, 10, 2600.0, 1100.0, "B08"),
    Band("nir08", 0.865, 20, 2850.0, 1150.0, "B8A"),
    Band("nir09", 0.945, 60, 900.0, 450.0, "B09"),
    Band("cirrus", 1.375, 60, 30.0, 40.0, "B10"),
    Band("swir16", 1.610, 20, 2200.0, 1100.0, "B11"),
    Band("swir22", 2.190, 20, 1500.0, 950.0, "B12"),
)
_S2_L2A = tuple(b for b in _S2 if b.name != "cirrus")

_LANDSAT_L1 = (
    Band("coastal", 0.443, 30, 11000.0, 3000.0, "B1"),
    Band("blue", 0.482, 30, 10700.0, 3200.0, "B2"),
    Band("green", 0.561, 30, 10500.0, 3300.0, "B3"),
    Band("red", 0.655, 30, 10200.0, 3600.0, "B4"),
    Band("nir08", 0.865, 30, 16200.0, 4800.0, "B5"),
    Band("swir16", 1.609, 30, 13000.0, 4300.0, "B6"),
    Band("swir22", 2.201, 30, 10900.0, 3600.0, "B7"),
    Band("pan", 0.590, 15, 10400.0, 3300.0, "B8"),
    Band("cirrus", 1.373, 30, 5100.0, 300.0, "B9"),
    Band("lwir11", 10.895, 100, 28000.0, 3000.0, "B10", "TOA radiance", 3.342e-4, 0.1),
    Band("lwir12", 12.005, 100, 26000.0, 2500.0, "B11", "TOA radiance", 3.342e-4, 0.1),
)
_LANDSAT_L2 = (
    Band("coastal", 0.443, 30, 8300.0, 1500.0, "SR_B1"),
    Band("blue", 0.482, 30, 8800.0, 1600.0, "SR_B2"),
    Band("green", 0.561, 30, 9800.0, 1800.0, "SR_B3"),
    Band("red", 0.655, 30, 10000.0, 2300.0, "SR_B4"),
    Band("nir08", 0.865, 30, 16000.0, 4000.0, "SR_B5"),
    Band("swir16", 1.609, 30, 14000.0, 3700.0, "SR_B6"),
    Band("swir22", 2.201, 30, 11700.0, 3300.0, "SR_B7"),
    Band(
        "lwir11",
        10.895,
        100,
        43000.0,
        1800.0,
        "ST_B10",
        "surface temperature (K)",
        0.00341802,
        149.0,
    ),
)
_HLS = (
    Band("coastal", 0.443, 30, 900.0, 700.0, "B01"),
    Band("blue", 0.482, 30, 1000.0, 700.0, "B02"),
    Band("green", 0.561, 30, 1300.0, 700.0, "B03"),
    Band("red", 0.655, 30, 1400.0, 900.0, "B04"),
    Band("nir08", 0.865, 30, 2800.0, 1100.0, "B8A"),
    Band("swir16", 1.609, 30, 2000.0, 1000.0, "B11"),
    Band("swir22", 2.201, 30, 1400.0, 850.0, "B12"),
    Band("cirrus", 1.373, 30, 10.0, 20.0, "B10"),
)
_S1 = (
    Band("vv", 55465.0, 10, -12.0, 5.0, "vv"),
    Band("vh", 55465.0, 10, -19.0, 5.5, "vh"),
)
_NAIP = (
    Band("red", 0.635, 0.6, 110.0, 45.0, "1"),
    Band("green", 0.560, 0.6, 115.0, 40.0, "2"),
    Band("blue", 0.480, 0.6, 95.0, 35.0, "3"),
    Band("nir", 0.842, 0.6, 130.0, 45.0, "4"),
)
_RGB = (
    Band("red", 0.635, 1.0, 120.0, 60.0, "1"),
    Band("green", 0.560, 1.0, 120.0, 60.0, "2"),
    Band("blue", 0.480, 1.0, 120.0, 60.0, "3"),
)

SENSORS: dict[str, Sensor] = {
    s.id: s
    for s in (
        Sensor(
            "sentinel-2-l1c",
            "Sentinel-2 Level-1C (TOA reflectance x 10000)",
            _S2,
            1e-4,
            0.0,
            0,
            level="TOA",
        ),
        Sensor(
            "sentinel-2-l2a",
            "Sentinel-2 Level-2A (BOA reflectance x 10000, harmonised to baseline < 04.00)",
            _S2_L2A,
            1e-4,
            0.0,
            0,
            level="surface",
        ),
        # TOA reflectance without the sun-elevation correction (the product's REFLECTANCE_MULT/ADD)
        Sensor(
            "landsat-c2-l1",
            "Landsat 8/9 Collection 2 Level-1 (DN)",
            _LANDSAT_L1,
            2e-5,
            -0.1,
            0,
            level="TOA",
        ),
        Sensor(
            "landsat-c2-l2",
            "Landsat 8/9 Collection 2 Level-2 (surface reflectance)",
            _LANDSAT_L2,
            2.75e-5,
            -0.2,
            0,
            level="surface",
        ),
        Sensor(
            "hls",
            "Harmonized Landsat Sentinel-2 (reflectance x 10000)",
            _HLS,
            1e-4,
            0.0,
            -9999,
            level="surface",
        ),
        Sensor(
            "sentinel-1-rtc",
            "Sentinel-1 RTC backscatter (dB)",
            _S1,
            1.0,
            0.0,
            None,
            quantity="backscatter (dB)",
        ),
        Sensor(
            "naip",
            "NAIP aerial imagery (8-bit)",
            _NAIP,
            1.0,
            0.0,
            0,
            quantity="NAIP digital number",
        ),
        Sensor(
            "rgb", "Generic 8-bit RGB", _RGB, 1.0, 0.0, None, quantity="8-bit RGB digital number"
        ),
    )
}


class SensorError(UserError):
    pass


def get_sensor(sensor_id: str) -> Sensor:
    try:
        return SENSORS[sensor_id]
    except KeyError:
        raise SensorError(
            f"unknown sensor {sensor_id!r}; known sensors: {', '.join(SENSORS)}. "
            "Or pass the band names explicitly (--bands blue,green,red)."
        ) from None


def wavelengths(band_names: list[str], sensor_id: str | None = None) -> list[float]:
    """Centre wavelengths (µm) of named bands, from the sensor if given, else any sensor."""
    out = []
    for name in band_names:
        if sensor_id is not None and sensor_id in SENSORS:
            out.append(get_sensor(sensor_id).band(name).wavelength)
            continue
        for s in SENSORS.values():
            hit = [b for b in s.bands if b.name == name]
            if hit:
                out.append(hit[0].wavelength)
                break
        else:
            raise SensorError(f"no known wavelength for band {name!r}")
    return out


def stored_units(
    sensor_id: str | None,
    bands: list[str],
    scales: list[float] | None = None,
    offsets: list[float] | None = None,
) -> list[Unit] | None:
    """The unit of each band's stored values: the sensor's, with the scale/offset a file
    declares (GDAL band scale/offset, e.g. from STAC ``raster:bands``) taking precedence.
    None when no sensor is known: then what the values measure is unknown."""
    if not sensor_id or sensor_id not in SENSORS:
        return None
    sensor = get_sensor(sensor_id)
    units = []
    for i, name in enumerate(bands):
        unit = sensor.unit(name)
        if scales is not None and offsets is not None:
            declared = (float(scales[i]), float(offsets[i]))
            if declared != (1.0, 0.0):
                unit = Unit(unit.quantity, declared[0], declared[1], unit.level)
        units.append(unit)
    return units
