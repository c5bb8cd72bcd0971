"""A mask's own class names and colours, as the tool that made it stored them.

GIS tools keep a thematic raster's legend beside its values: a raster attribute table (ArcGIS's
``mask.tif.vat.dbf``, ERDAS Imagine's ``.img``, GDAL's ``.aux.xml`` or a GeoTIFF's own metadata),
GDAL's category names (``.aux.xml``) and the band's colour table. GDAL reads them all; rasterio
exposes only the colour table, so the legend is read from the band as GDAL writes it into a VRT
(an XML description of the band: never opened as a dataset, only parsed).

Where GDAL's VRT driver is not available (the server's upload reader allows GeoTIFF alone, see
:mod:`serve.untrusted`), only the colour table is read.
"""

from __future__ import annotations

import re
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

# GDALRATFieldUsage values, as GDAL writes them (``<Usage>``)
_NAME, _MINMAX, _RED, _GREEN, _BLUE = 2, 5, 6, 7, 8
# a string column that names the classes, when none has GDAL's "Name" usage (lower case parts)
_NAME_HINTS = ("class", "name", "label", "land", "category", "legend", "descr", "type")
# names tools give the value that means "no class here" (NLCD's 0 "Unclassified", "No Data", ...)
_UNLABELLED = re.compile(
    r"(no[ _-]?data|unclassified|not classified|unlabell?ed|no[ _-]?label|fill|void|null|missing)",
    re.IGNORECASE,
)


def looks_unlabelled(name: str) -> bool:
    """Whether a legend's class name says the value is no class (``No Data``, ``Unclassified``)."""
    return bool(_UNLABELLED.fullmatch(name.strip()))


@dataclass
class MaskLegend:
    """Names and colours by mask value, and where in the file each came from."""

    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, str] = field(default_factory=dict)  # "#rrggbb"
    names_from: str = ""  # "attribute table" or "category names"
    colors_from: str = ""  # "colour table" or "attribute table"

    def describe(self) -> str:
        """``class names from its attribute table, colours from its colour table`` (or "")."""
        parts = [f"class names from its {self.names_from}"] if self.names else []
        parts += [f"colours from its {self.colors_from}"] if self.colors else []
        return ", ".join(parts)


def mask_legend(src, values) -> MaskLegend:
    """The legend of an open one-band mask ``src`` for the class ``values`` it holds."""
    wanted = {int(v) for v in values}
    band = _band_xml(src)
    rat = None if band is None else band.find("GDALRasterAttributeTable")
    names, rat_colours = _attribute_table(rat)
    names_from = "attribute table"
    if not names and band is not None:
        names, names_from = _category_names(band.find("CategoryNames")), "category names"
    colours, colors_from = _colour_table(src), "colour table"
    if not colours:
        colours, colors_from = rat_colours, "attribute table"
    legend = MaskLegend(names={v: n for v, n in names.items() if v in wanted})
    legend.names_from = names_from if legend.names else ""
    colours = {v: c for v, c in colours.items() if v in wanted}
    if len(set(colours.values())) > 1:  # one colour for every class is no legend (unset entries)
        legend.colors, legend.colors_from = colours, colors_from
    return legend


def _band_xml(src):
    import rasterio
    import rasterio.errors
    import rasterio.shutil

    with rasterio.Env() as env:
        if "VRT" not in env.drivers():
            return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "band.vrt"
        try:
            rasterio.shutil.copy(src, path, driver="VRT")
            root = ET.fromstring(path.read_text(encoding="utf-8", errors="replace"))
        except (rasterio.errors.RasterioError, ET.ParseError) as e:
            warnings.warn(
                f"could not read the class names of {Path(src.name).name} ({e}); its classes "
                "are named by their values. Name them with --classes classes.json",
                stacklevel=3,
            )
            return None
    return root.find("VRTRasterBand")


def _attribute_table(rat) -> tuple[dict[int, str], dict[int, str]]:
    """Names and colours by value from GDAL's XML of a raster attribute table."""
    if rat is None:
        return {}, {}
    fields = []
    for f in rat.findall("FieldDefn"):
        fields.append(
            (f.findtext("Name", ""), int(f.findtext("Type", "0")), int(f.findtext("Usage", "0")))
        )
    rows = [[c.text or "" for c in r.findall("F")] for r in rat.findall("Row")]
    rows = [r for r in rows if len(r) == len(fields)]
    value_col = _value_column(fields)
    name_col = _name_column(fields)
    if name_col is None and not any(u == _RED for _, _, u in fields):
        return {}, {}
    first = float(rat.get("Row0Min", "0"))
    step = float(rat.get("BinSize", "1"))
    names: dict[int, str] = {}
    rgb = [
        next((i for i, f in enumerate(fields) if f[2] == u), None) for u in (_RED, _GREEN, _BLUE)
    ]
    colours: dict[int, str] = {}
    for i, row in enumerate(rows):
        try:
            value = float(row[value_col]) if value_col is not None else first + i * step
        except ValueError:
            continue
        if value != int(value):
            continue
        value = int(value)
        if name_col is not None and row[name_col].strip():
            names[value] = row[name_col].strip()
        if None not in rgb:
            try:
                c = [float(row[j]) for j in rgb]
            except ValueError:
                continue
            colours[value] = _hex(c)  # 0..255 (GDAL converts ERDAS's fractions 0..1)
    return names, colours


def _value_column(fields) -> int | None:
    """The column of the values a row describes: GDAL's "MinMax" usage, else one called "Value"
    (an ERDAS table read by GDAL calls it so without a usage); none: rows are bins from
    ``Row0Min`` in steps of ``BinSize`` (row i is value i in ERDAS and ENVI tables)."""
    for i, (_, _, usage) in enumerate(fields):
        if usage == _MINMAX:
            return i
    for i, (name, kind, _) in enumerate(fields):
        if name.lower() == "value" and kind in (0, 1):
            return i
    return None


def _name_column(fields) -> int | None:
    strings = [i for i, (_, kind, _) in enumerate(fields) if kind == 2]
    for i in strings:
        if fields[i][2] == _NAME:
            return i
    for i in strings:
        if any(h in fields[i][0].lower() for h in _NAME_HINTS):
            return i
    return strings[0] if strings else None


def _category_names(cats) -> dict[int, str]:
    if cats is None:
        return {}
    return {
        i: (c.text or "").strip()
        for i, c in enumerate(cats.findall("Category"))
        if (c.text or "").strip()
    }


def _colour_table(src) -> dict[int, str]:
    try:
        table = src.colormap(1)
    except ValueError:  # no colour table
        return {}
    return {int(v): _hex(rgba[:3]) for v, rgba in table.items() if rgba[3] != 0}


def _hex(rgb) -> str:
    return "#" + "".join(f"{max(0, min(255, round(x))):02x}" for x in rgb)
