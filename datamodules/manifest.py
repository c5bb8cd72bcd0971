"""Dataset folders and their ``dataset.json`` manifest: read, list, resolve, write atomically.

A dataset is a folder holding ``image.tif`` (one or more dates: ``images``), ``mask.tif`` (model
class ids, ``ignore_index`` where unlabelled), ``units.tif`` (which label unit each labelled
pixel came from, 0 = none), ``units.csv`` (unit id, class id, pixels, split, bounding box, the
unit a cut piece came from; :mod:`datamodules.label_units`) and
``dataset.json``. The folder is built under a hidden temporary name and renamed into place
after ``dataset.json`` is written, so a dataset exists whole or not at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .paths import datasets_dir
from .records import FileRecord

MANIFEST = "dataset.json"
FORMAT_VERSION = 1


class DatasetError(UserError):
    """Bad dataset request: unknown id, name clash, broken folder."""


MAX_NAME = 64
NAME_RULE = (
    f"1-{MAX_NAME} characters with at least one letter or digit; the id is the name in lower "
    "case with every run of other characters as '_' (e.g. 'Coast 2024' → coast_2024)"
)


def check_name(name: str) -> str:
    """The id of a new dataset called ``name``, or a :class:`DatasetError` naming the rule. The
    one check of dataset names, for the CLI and the service, made before anything is written."""
    text = str(name)
    if not text.strip() or len(text) > MAX_NAME or not text.isprintable():
        shown = f"{text[:40]}…" if len(text) > 40 else text
        raise DatasetError(
            f"dataset name {shown!r} ({len(text)} characters) is not valid: use {NAME_RULE}"
        )
    dataset_id = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not dataset_id:
        raise DatasetError(f"dataset name {text!r} has no letter or digit: use {NAME_RULE}")
    return dataset_id


def slugify(text: str) -> str:
    """Lower-case ASCII letters, digits and ``_`` ("Forêt dense" → ``foret_dense``)."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return slug or "class"


@dataclass(frozen=True)
class DatasetManifest(FileRecord):
    """``dataset.json``, typed: what the code reads, with the defaults of keys older files lack.

    :meth:`from_dict` checks the format version (``geotune_dataset``; a newer one is refused)
    and the keys every version has. The mapping view (``m["key"]``, ``to_dict()``) is the file
    as written, for JSON answers and the keys that only ingestion and the data module read
    (``mask``, ``units``, ``chips``, ...).
    """

    id: str
    classes: list[dict]
    ignore_index: int
    bands: list[str]
    images: list[dict]
    resolution: list[float]
    crs_wkt: str
    bounds: list[float]
    shape: list[int]
    stats: dict
    splits: dict
    geotune_dataset: int = FORMAT_VERSION
    name: str | None = None
    owner: str = "local"
    task: str = "segmentation"
    output_nodata: int = 255
    sensor: str | None = None
    scales: list[float] | None = None
    offsets: list[float] | None = None
    dates: list[str | None] = field(default_factory=list)
    chip_size: int | None = None  # classification: the chips' edge
    multi_label: bool = False  # classification: several classes per chip
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict, where: str = "dataset.json") -> DatasetManifest:
        version = int(data.get("geotune_dataset", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise DatasetError(
                f"{where} is dataset format {version}; this geotune reads up to "
                f"{FORMAT_VERSION}. Upgrade geotune to use it."
            )
        values, missing = cls.typed_values(data)
        if missing:
            raise DatasetError(
                f"{where} lacks {', '.join(missing)}: it is not a dataset manifest geotune wrote. "
                "Add the dataset again with geotune data add."
            )
        return cls(**values | {"geotune_dataset": version}, raw=dict(data))


@dataclass
class Dataset:
    """A dataset folder and its manifest."""

    path: Path
    manifest: DatasetManifest

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def classes(self) -> list[dict]:
        return self.manifest.classes

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ignore_index(self) -> int:
        return int(self.manifest.ignore_index)

    @property
    def bands(self) -> list[str]:
        return list(self.manifest.bands)

    @property
    def images(self) -> list[Path]:
        return [self.path / im["path"] for im in self.manifest.images]

    def file(self, key: str) -> Path:
        return self.path / self.manifest[key]


def read_manifest(folder: str | Path) -> DatasetManifest:
    path = Path(folder) / MANIFEST
    with open(path) as f:
        return DatasetManifest.from_dict(json.load(f), str(path))


def load_dataset(ref: str | Path, root: Path | None = None) -> Dataset:
    """A dataset by id (in the datasets directory) or by folder path."""
    root = root or datasets_dir()
    candidates = [Path(str(ref)).expanduser()]
    if "/" not in str(ref) and not str(ref).startswith("."):
        candidates.insert(0, root / str(ref))
    for folder in candidates:
        if (folder / MANIFEST).is_file():
            return Dataset(folder.resolve(), read_manifest(folder))
    known = [d.id for d in list_datasets(root)]
    raise DatasetError(
        f"no dataset {str(ref)!r} (looked in {root}). "
        + (f"Known datasets: {', '.join(known)}. " if known else "There are no datasets yet. ")
        + "Create one with `geotune data add --name NAME --image scene.tif --labels labels.geojson`."
    )


def list_datasets(root: Path | None = None) -> list[Dataset]:
    root = root or datasets_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        out.append(Dataset(folder, read_manifest(folder)))
    return out


def delete_dataset(ref: str | Path, root: Path | None = None) -> None:
    ds = load_dataset(ref, root)
    trash = ds.path.with_name(f".deleting-{ds.path.name}-{os.getpid()}")
    ds.path.rename(trash)  # atomic: the dataset disappears from listings at once
    shutil.rmtree(trash, ignore_errors=True)


class DatasetWriter:
    """Build a dataset in a hidden temporary folder; ``commit`` makes it appear atomically."""

    def __init__(self, dataset_id: str, root: Path | None = None):
        self.root = root or datasets_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.final = self.root / dataset_id
        if self.final.exists():
            raise DatasetError(
                f"dataset {dataset_id!r} already exists at {self.final}. Choose another --name, "
                f"or delete it first: geotune data delete {dataset_id}"
            )
        self._clean_stale()
        self.tmp = self.root / f".tmp-{dataset_id}-{os.getpid()}-{int(time.time() * 1000)}"
        self.tmp.mkdir()

    def _clean_stale(self, age_s: float = 24 * 3600) -> None:
        """Remove temporary folders left by killed ingests (older than a day, or dead pid)."""
        for folder in self.root.glob(".tmp-*"):
            try:
                pid = int(folder.name.split("-")[-2])
            except (ValueError, IndexError):
                continue
            alive = _pid_alive(pid)
            if not alive or time.time() - folder.stat().st_mtime > age_s:
                shutil.rmtree(folder, ignore_errors=True)

    def commit(self, manifest: dict) -> Dataset:
        manifest = {"geotune_dataset": FORMAT_VERSION, **manifest}
        typed = DatasetManifest.from_dict(manifest)  # what is written reads back
        tmp_json = self.tmp / (MANIFEST + ".part")
        with open(tmp_json, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_json, self.tmp / MANIFEST)
        if self.final.exists():
            raise DatasetError(f"dataset {self.final.name!r} was created by someone else meanwhile")
        os.rename(self.tmp, self.final)
        return Dataset(self.final, typed)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
