"""User options, declared once per action and read the same way by the CLI and the HTTP service.

An :class:`Option` row says an option's name, type, default, help text, choices and range, and
where it appears: as a ``geotune`` flag (``cli``) and as an HTTP field (``http``: ``"params"``
with an upload and in JSON bodies, ``"upload"`` only as a multipart field beside an uploaded
file). :func:`add_options` makes the argparse options from the rows; ``serve.forms`` makes the
FastAPI form fields and request models (and so the OpenAPI schema the Lab builds its forms from).
This module stays import-light: ``geotune --help`` reads it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from .errors import UserError

FILE = "file"  # an option's ``type`` for a file: a path on the CLI, an upload over HTTP


@dataclass(frozen=True)
class Option:
    """One user option of an action (``name``: its HTTP field and, unless ``flag`` says
    otherwise, its CLI flag ``--name-with-dashes``)."""

    name: str
    type: Any = str  # str, int, float, bool (a CLI switch) or FILE
    default: Any = None
    help: str = ""
    choices: tuple = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    flag: str | None = None
    repeat: bool = False  # CLI: one or more values (the flag may repeat); HTTP: comma-separated
    required: bool | str = False  # True, or "http": required over HTTP alone
    metavar: str | None = None
    cli: bool = True
    http: str | None = "params"  # "params", "upload" (multipart only) or None (CLI only)
    example: Any = ...  # OpenAPI example (... : none)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value):
        """``value`` if it is within the range; ValueError saying the range otherwise."""
        if value is None or self.type not in (int, float):
            return value
        for bound, ok, word in (
            (self.ge, lambda b: value >= b, "at least"),
            (self.gt, lambda b: value > b, "more than"),
            (self.le, lambda b: value <= b, "at most"),
        ):
            if bound is not None and not ok(bound):
                raise ValueError(f"must be {word} {bound:g}")
        return value


def _typed(option: Option):
    """The argparse ``type`` of ``option``: its Python type, then its range."""

    def parse(text: str):
        try:
            value = option.type(text)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"takes {'an integer' if option.type is int else 'a finite number'}, not {text!r}"
            ) from None
        try:
            return option.check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{e} (got {text})") from None

    parse.__name__ = option.type.__name__  # argparse names the type in its messages
    return parse


def add_options(parser, options: tuple[Option, ...]) -> None:
    """The argparse options of ``options``' CLI rows, in order (``parser``: a parser or group)."""
    for o in options:
        if not o.cli:
            continue
        kw: dict[str, Any] = {"dest": o.name, "help": o.help.replace("%", "%%") or None}
        if o.type is bool:
            parser.add_argument(o.cli_flag, action="store_true", **kw)
            continue
        if o.required is True:
            kw["required"] = True
        else:
            kw["default"] = o.default
        if o.repeat:  # --image a.tif b.tif (as a shell's *.tif gives them) or repeated
            kw["action"], kw["nargs"] = "extend", "+"
        if o.choices:
            kw["choices"] = list(o.choices)
        if o.type in (int, float):
            kw["type"] = _typed(o)
        if not o.choices:  # named after the flag, not the field
            kw["metavar"] = o.metavar or o.cli_flag[2:].replace("-", "_").upper()
        parser.add_argument(o.cli_flag, **kw)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with ``(default: X)`` where there is a default to show (not for None or a switch's
    False: an unset option's help says what happens instead)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class DescribedHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


MAX_SEED = 2**32 - 1  # numpy's seeds

# the quality band of a product as delivered, or a quality file beside the image files
MASK_CLOUDS = Option(
    "mask_clouds",
    bool,
    False,
    help="make clouds and their shadows nodata with the scene's quality band: a product's "
    "(a Landsat scene's QA_PIXEL, a Sentinel-2 L2A product's SCL) or a quality file given "
    "with the image files (..._QA_PIXEL.TIF, SCL.tif, HLS's ...Fmask.tif); imagery fetched "
    "by area and dates is always cloud-masked",
)

# ``geotune data add`` and ``POST /v1/datasets``
INGEST = (
    Option(
        "name",
        required=True,
        example="coast",
        help="dataset name (1-64 characters); its id is the name in lower case with other "
        "characters as '_'",
    ),
    Option(
        "image",
        FILE,
        repeat=True,
        required="http",
        help="GeoTIFF/COG: one multi-band file per date, or one file per band (CLI: --image "
        "takes several files, e.g. bands/*.tif, or repeat it; or give a product per date: a "
        "Sentinel-2 .SAFE, a Landsat scene's folder, a SNAP .dim; or fetch imagery for the "
        "labels' extent: --start, --end, --sensor)",
    ),
    Option(
        "labels",
        FILE,
        required=True,
        help="polygons (GeoJSON, GeoPackage, zipped Shapefile, GeoParquet, FlatGeobuf; on the "
        "command line also KML/KMZ, File Geodatabase, a CSV of points) or a mask GeoTIFF",
    ),
    Option("class_column", help="the labels' class column (default: 'class')", example=""),
    Option(
        "labels_layer",
        example="",
        help="the layer with the labels, in a labels file of several (GeoPackage, File "
        "Geodatabase, KML folders); default: the one layer with features and the class column",
    ),
    Option(
        "sensor",
        example="",
        help="sensor id: sentinel-2-l1c, sentinel-2-l2a, landsat-c2-l1, landsat-c2-l2, hls, "
        "sentinel-1-rtc, naip, rgb",
    ),
    Option(
        "bands",
        help="band names in file order, comma-separated, e.g. blue,green,red,nir08",
        example="",
    ),
    Option(
        "dates",
        flag="--date",
        repeat=True,
        example="",
        help="acquisition date (YYYY-MM-DD) per scene, when the files do not say (HTTP: "
        "comma-separated)",
    ),
    MASK_CLOUDS,
    Option("classes", FILE, http=None, help="class table JSON: [{id, name, color, value}]"),
    Option(
        "ignore_values", example="", help="mask values that mean 'unlabelled' (comma-separated)"
    ),
    Option("block_size", int, 256, "edge of the spatial split blocks, in pixels", ge=8, le=8192),
    Option("split_fractions", help="train,val,test shares (default 0.7,0.15,0.15)", example=""),
    Option("seed", int, 0, ge=0, le=MAX_SEED),
    Option(
        "min_class_pixels",
        int,
        20,
        ge=0,
        help="labelled pixels a class needs in val or test to count there (a held-out "
        "metric for it)",
    ),
    Option(
        "task",
        default="segmentation",
        choices=("segmentation", "classification", "change"),
        help="change: two image dates + change polygons; classification: points/polygons, "
        "one chip each",
    ),
    Option(
        "chip_size",
        int,
        help="classification chip edge in px (default 64)",
        ge=8,
        le=4096,
        example="",
    ),
    Option(
        "multi_label",
        bool,
        False,
        help="classification: the class column holds ';'-separated class names",
    ),
    Option(
        "background",
        example="",
        help="class name given to every valid unlabelled pixel (segmentation, change)",
    ),
    Option(
        "split_column",
        example="",
        help="the labels' column of train/val/test per label, instead of spatial block splits",
    ),
    Option(
        "labels_after",
        FILE,
        help="change: class polygons of the second date (labels: of the first); the change "
        "labels are derived where both dates are labelled",
    ),
    Option(
        "change_classes",
        default="binary",
        choices=("binary", "transitions"),
        help="with labels_after: no_change/change, or one class per transition (forest→cropland)",
    ),
)


def csv_list(text: str | None) -> list[str] | None:
    """``"a, b,,c"`` → ``["a", "b", "c"]``; None (or nothing but commas) → None."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def integers(text: str | None, flag: str) -> list[int] | None:
    """``"0, 255"`` → ``[0, 255]``; None for nothing; a UserError naming ``flag`` otherwise."""
    try:
        return [int(v) for v in csv_list(text) or []] or None
    except ValueError:
        raise UserError(f"{flag} takes integers separated by commas, e.g. 0,255") from None


def split_fractions(text: str | None) -> dict[str, float] | None:
    """``"0.7,0.15,0.15"`` → the train, val and test shares; None for nothing."""
    if not text:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 3 or min(vals) < 0 or sum(vals) <= 0:
        raise UserError(
            "--split-fractions takes three non-negative numbers: train,val,test (e.g. 0.7,0.15,0.15)"
        )
    return dict(zip(("train", "val", "test"), vals, strict=True))
