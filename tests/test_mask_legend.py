"""A mask's own legend (attribute table, category names, colour table) names and colours its
classes, in the layouts ArcGIS, ERDAS Imagine and GDAL write."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import rasterio
import rasterio.shutil
from synth import CLASSES

from datamodules.data_cli import describe
from datamodules.ingest import ingest

NAMES = {11: "Open Water", 21: "Deciduous Forest", 31: "Cultivated Crops"}
COLOURS = {11: (70, 107, 159), 21: (104, 171, 95), 31: (171, 108, 40)}


def _mask(scene, path, values=(11, 21, 31), colours=None, blank=8):
    """The scene's classes (water, forest, field) as ``values``, ``blank`` top rows unlabelled
    (0)."""
    with rasterio.open(scene["image"]) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 0, "driver": "GTiff"}
    m = np.array(values, dtype=np.uint8)[scene["cmap"]]
    m[:blank] = 0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(m, 1)
        if colours:
            dst.write_colormap(1, {v: (*c, 255) for v, c in colours.items()})
    return path


def _add(name, scene, labels, **kw):
    return ingest(name=name, images=[scene["image"]], labels=labels, block_size=32, progress=False, **kw)  # fmt: skip


def _hex(rgb):
    return "#" + "".join(f"{x:02x}" for x in rgb)


def _truth(ds, scene, values=(11, 21, 31)):
    ids = {c["value"]: c["id"] for c in ds.classes}
    return np.array([ids[v] for v in values])[scene["cmap"]]


def test_an_arcgis_mask_is_named_by_its_vat_dbf_and_coloured_by_its_colour_table(home, scene):
    import pandas as pd
    import pyogrio

    path = _mask(scene, scene["dir"] / "landcover.tif", colours=COLOURS)
    vat = pd.DataFrame(
        {"Value": list(NAMES), "Count": [1, 1, 1], "ClassName": list(NAMES.values())}
    )
    pyogrio.write_dataframe(vat, scene["dir"] / "landcover.tif.vat.dbf", driver="ESRI Shapefile")
    ds = _add("arc", scene, path)
    assert [(c["value"], c["name"], c["slug"]) for c in ds.classes] == [
        (11, "Open Water", "open_water"),
        (21, "Deciduous Forest", "deciduous_forest"),
        (31, "Cultivated Crops", "cultivated_crops"),
    ]
    assert [c["color"] for c in ds.classes] == [_hex(COLOURS[v]) for v in NAMES]
    with rasterio.open(ds.file("mask")) as src:
        got = src.read(1)
    labelled = got != 255
    assert not labelled[:8].any() and labelled[8:].all()
    np.testing.assert_array_equal(got[labelled], _truth(ds, scene)[labelled])
    text = describe(ds)
    assert "class names from its attribute table, colours from its colour table" in text
    assert "Deciduous Forest" in text
    # a class table file still decides, over the mask's own legend
    table = scene["dir"] / "classes.json"
    rows = [
        {"id": i, "name": n, "value": v}
        for i, (v, n) in enumerate(zip(NAMES, CLASSES, strict=True))
    ]
    table.write_text(json.dumps(rows))
    ds = _add("given", scene, path, classes_file=table)
    assert [c["name"] for c in ds.classes] == CLASSES
    assert "legend" not in ds.manifest["source"]


def test_gdal_category_names_name_the_values_they_cover(home, scene):
    path = _mask(scene, scene["dir"] / "cats.tif", values=(1, 2, 3))
    cats = ["", "Wasser", "Wald"]  # value 3 has no name: it keeps its value
    (scene["dir"] / "cats.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><CategoryNames>'
        + "".join(f"<Category>{c}</Category>" for c in cats)
        + "</CategoryNames></PAMRasterBand></PAMDataset>"
    )
    ds = _add("cats", scene, path)
    assert [c["name"] for c in ds.classes] == ["Wasser", "Wald", "3"]
    assert ds.manifest["source"]["legend"] == "class names from its category names"
    # no colour table: the palette, as for any mask
    plain = _add("plain", scene, _mask(scene, scene["dir"] / "plain.tif", values=(1, 2, 3)))
    assert [c["color"] for c in ds.classes] == [c["color"] for c in plain.classes]
    assert [c["name"] for c in plain.classes] == ["1", "2", "3"]
    assert "legend" not in plain.manifest["source"]


def test_an_erdas_imagine_mask_with_a_binned_table_and_colour_columns(home, scene):
    """ERDAS keeps one row per value from 0 (no value column) and colours as fractions 0..1
    (GDAL shows them as 0..255 and writes them as fractions)."""
    tif = _mask(scene, scene["dir"] / "m.tif", values=(1, 2, 3))
    vrt = scene["dir"] / "m.vrt"
    rasterio.shutil.copy(tif, vrt, driver="VRT")
    root = ET.fromstring(vrt.read_text())
    band = root.find("VRTRasterBand")
    rat = ET.SubElement(band, "GDALRasterAttributeTable", Row0Min="0", BinSize="1")
    cols = [("Red", "0", "6"), ("Green", "0", "7"), ("Blue", "0", "8"), ("Class_Names", "2", "2")]
    for i, (name, kind, usage) in enumerate(cols):
        f = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(f, "Name").text, ET.SubElement(f, "Type").text = name, kind
        ET.SubElement(f, "Usage").text = usage
    rows = [(0, 0, 0, ""), (0, 0, 255, "water"), (0, 128, 0, "forêt"), (255, 255, 0, "champ")]
    for i, row in enumerate(rows):
        r = ET.SubElement(rat, "Row", index=str(i))
        for x in row:
            ET.SubElement(r, "F").text = str(x)
    vrt.write_text(ET.tostring(root, encoding="unicode"))
    img = scene["dir"] / "m.img"
    rasterio.shutil.copy(vrt, img, driver="HFA")
    vrt.unlink()
    tif.unlink()  # the .img holds its own pixels and table
    ds = _add("erdas", scene, img)
    assert [(c["name"], c["slug"], c["color"]) for c in ds.classes] == [
        ("water", "water", "#0000ff"),
        ("forêt", "foret", "#008000"),
        ("champ", "champ", "#ffff00"),
    ]


def test_two_values_of_one_name_stay_two_classes_named_by_their_values(home, scene):
    import pandas as pd
    import pyogrio

    path = _mask(scene, scene["dir"] / "dup.tif")
    vat = pd.DataFrame({"Value": [11, 21, 31], "Class": ["Forest", "forest", "Field"]})
    pyogrio.write_dataframe(vat, scene["dir"] / "dup.tif.vat.dbf", driver="ESRI Shapefile")
    ds = _add("dup", scene, path)
    assert [c["name"] for c in ds.classes] == ["Forest (11)", "forest (21)", "Field"]
    assert len({c["slug"] for c in ds.classes}) == 3


def test_the_upload_reader_without_gdals_vrt_driver_reads_the_colour_table(scene):
    """The server's ingest job skips every driver but the allowed ones (VRT too): a mask's
    colours still come from its colour table; names need the attribute table."""
    from serve.untrusted import job_env

    path = _mask(scene, scene["dir"] / "up.tif", colours=COLOURS)
    code = (
        "import json, rasterio\n"
        "from datamodules.mask_classes import mask_legend\n"
        f"with rasterio.open({str(path)!r}) as src:\n"
        "    l = mask_legend(src, [11, 21, 31])\n"
        "print(json.dumps([l.names, l.colors, l.describe()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=job_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    names, colours, said = json.loads(out.stdout)
    assert names == {} and said == "colours from its colour table"
    assert colours == {str(v): _hex(c) for v, c in COLOURS.items()}


def test_a_value_the_legend_calls_unclassified_is_named_in_a_warning_whose_hint_works(home, scene):
    """NLCD's value 0 is "Unclassified" and its files often declare no nodata: trained as a class
    unless the user says otherwise; one warning says which value and how (not a second one for
    0 covering most pixels)."""
    import warnings

    import pandas as pd
    import pyogrio

    path = _mask(scene, scene["dir"] / "nlcd.tif", blank=80)  # 0: most pixels
    with rasterio.open(path, "r+") as dst:
        dst.nodata = None  # the top rows' 0 is now a value like any other
    vat = pd.DataFrame({"Value": [0, *NAMES], "Land_Cover": ["Unclassified", *NAMES.values()]})  # fmt: skip
    pyogrio.write_dataframe(vat, scene["dir"] / "nlcd.tif.vat.dbf", driver="ESRI Shapefile")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = _add("nlcd", scene, path)
    said = [str(w.message) for w in seen if "ignore-values" in str(w.message)]
    assert said == [
        "nlcd.tif's legend names mask value(s) 0 ('Unclassified') as no class, yet they are "
        "classes here; if they mean unlabelled, add --ignore-values 0"
    ]
    assert [c["name"] for c in ds.classes] == ["Unclassified", *NAMES.values()]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = _add("nlcd2", scene, path, mask_ignore_values=[0])
    assert not [w for w in seen if "ignore-values" in str(w.message)]  # followed: said no more
    assert [c["name"] for c in ds.classes] == list(NAMES.values())
