"""Dates of imagery: read from a file's tags, parsed from what people type, and as numbers
(the day number a network's metadata input and a dataset's time axis use)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from .errors import ImageryError

# acquisition dates in the product names of the missions' own files (the first date of a
# Landsat name is the acquisition, the second the processing; a Sentinel-2 name's first
# date-time is the sensing start, the last the product's discriminator)
_SENTINEL2 = re.compile(r"(?:^|_)(?:S2[ABCD]_MSIL[12][AC]_|T\d{2}[A-Z]{3}_)(\d{8})T(\d{6})(?:_|$)")
_LANDSAT = re.compile(r"^L[COTEM]0\d_L[12][A-Z]{2}_\d{6}_(\d{8})_\d{8}_\d{2}_(?:T1|T2|RT)")
_HLS = re.compile(r"^HLS\.[LS]30\.T\d{2}[A-Z]{3}\.(\d{4})(\d{3})T(\d{6})\.")


def name_date(path: str | Path) -> date | None:
    """The acquisition date (a UTC ``datetime`` where the name gives the time) in a Sentinel-2
    (``S2B_MSIL2A_20240315T101021_...``, ``T33UUP_20240315T101021_B04_10m.jp2``), Landsat
    Collection 2 (``LC09_L2SP_191026_20230612_20230620_02_T1_SR_B4.TIF``) or HLS
    (``HLS.S30.T33UUP.2024075T101021.v2.0.B04.tif``) file name; None for other names."""
    name = Path(path).name
    try:
        if m := _SENTINEL2.search(name):
            return datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        if m := _LANDSAT.match(name):
            return datetime.strptime(m[1], "%Y%m%d").date()
        if m := _HLS.match(name):
            day = datetime.strptime(m[1] + m[2] + m[3], "%Y%j%H%M%S")
            return day.replace(tzinfo=UTC)
    except ValueError:  # digits that are no calendar date
        return None
    return None


def file_date(ds) -> date | None:
    """The acquisition date in the file's tags: a UTC ``datetime`` when the tag gives the time
    of day (as composites' ``ACQUISITION_DATE`` does), else a ``date``; without such a tag, the
    date in a mission's product name (:func:`name_date`)."""
    found = _tag_date(ds)
    return found if found is not None else name_date(ds.name)


def _tag_date(ds) -> date | None:
    tags = {k.upper(): v for k, v in ds.tags().items()}
    for key in ("ACQUISITION_DATE", "DATETIME", "TIFFTAG_DATETIME", "DATE"):
        if key in tags:
            text = (
                tags[key].strip().replace(":", "-", 2) if key == "TIFFTAG_DATETIME" else tags[key]
            )
            m = re.match(r"(\d{4})-(\d{2})-(\d{2})", text)
            if m:
                if key == "ACQUISITION_DATE" and "T" in text:
                    try:
                        return parse_when(text.strip())
                    except ImageryError:
                        pass
                return date(int(m[1]), int(m[2]), int(m[3]))
    return None


def parse_when(text: str) -> date:
    """An ISO date (``YYYY-MM-DD``) as a ``date``, or an ISO date and time as a UTC
    ``datetime`` (no zone: UTC)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ImageryError(f"{text!r} is not an ISO date or date and time") from None
    if "T" not in text and " " not in text.strip():
        return when.date()
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def day_number(when: date | None) -> float:
    """A date as a number: the proleptic ordinal, plus the fraction of the (UTC) day for a
    ``datetime``; 0 for unknown. :func:`from_day_number` inverts it."""
    if when is None:
        return 0.0
    if isinstance(when, datetime):
        when = when.astimezone(UTC) if when.tzinfo else when
        t = when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6
        return when.toordinal() + t / 86400
    return float(when.toordinal())


def from_day_number(x: float) -> date | None:
    """A :func:`day_number` back: ``None`` for 0, a ``date`` for a whole day, else a UTC
    ``datetime`` (to the second)."""
    if x <= 0:
        return None
    day = int(x)
    seconds = round((x - day) * 86400)
    if seconds == 0:
        return date.fromordinal(day)
    return datetime.fromordinal(day).replace(tzinfo=UTC) + timedelta(seconds=seconds)


def parse_date(text: str | None) -> date | None:
    if text in (None, "", "unknown"):
        return None
    try:
        return datetime.fromisoformat(str(text)).date()
    except ValueError:
        raise ImageryError(f"date {text!r} is not an ISO date (YYYY-MM-DD)") from None


def check_distinct(files: list[Path]) -> None:
    """Refuse dates that are the same image: one file given twice, or byte-identical files."""
    for i, a in enumerate(files):
        for b in files[i + 1 :]:
            same = a.resolve() == b.resolve()
            if same or _same_bytes(a, b):
                what = (
                    f"{a.name} is given twice"
                    if same
                    else f"{a.name} and {b.name} are byte-identical"
                )
                raise ImageryError(
                    f"the dates must be different images, but {what}: a change or a time series "
                    "between an image and itself is only noise. Give one image per date."
                )


def _same_bytes(a: Path, b: Path, block: int = 1 << 20) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(block), fb.read(block)
            if x != y:
                return False
            if not x:
                return True
