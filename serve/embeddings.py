"""Embedding sets over HTTP: each is a job that runs ``python -m serve.embeddings FOLDER`` in a
process of its own, and a folder its owner searches and downloads.

``$GEOTUNE_HOME/serve/embeddings/<id>/`` holds ``request.json`` (owner, encoder, options, the
uploaded scene's names or the AOI and dates), ``inputs/`` (an uploaded scene, under names the
server chose; removed when the job ends), ``imagery/`` (a STAC composite), and when the job
succeeds ``embeddings.parquet`` (:mod:`trainer.embedfile`) and ``summary.json``. A job that ends
otherwise leaves ``failed.json``.

An uploaded scene is opened only by the job's process, which runs with GDAL's driver allow-list
(:func:`serve.untrusted.job_env`), without network and with a memory cap
(:func:`serve.untrusted.isolate`), as dataset uploads are. Imagery by area and dates is read
from the STAC catalogue as predictions read it.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sys
from functools import lru_cache
from pathlib import Path

from .jobs import JobFailed, JobKind, now, read_json, write_json
from .untrusted import Limits, job_env

EMB_ID_RE = re.compile(r"^emb-[0-9a-f]{12}$")
FILE = "embeddings.parquet"
REQUEST, SUMMARY, INPUTS = "request.json", "summary.json", "inputs"


class EmbeddingStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def new(self) -> tuple[str, Path]:
        emb_id = f"emb-{secrets.token_hex(6)}"
        folder = self.root / emb_id
        folder.mkdir(parents=True)
        return emb_id, folder

    def folder(self, emb_id: str, owner: str) -> Path | None:
        """The folder of ``owner``'s set ``emb_id``; None for anyone else's or none."""
        if not EMB_ID_RE.match(emb_id or ""):
            return None
        req = read_json(self.root / emb_id / REQUEST)
        return self.root / emb_id if req is not None and req.get("owner") == owner else None

    def all(self, owner: str) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [self.folder(p.name, owner) for p in sorted(self.root.iterdir())]
        return [f for f in found if f is not None]

    def delete(self, emb_id: str) -> None:
        shutil.rmtree(self.root / emb_id, ignore_errors=True)


def state(folder: Path) -> str:
    if (folder / SUMMARY).is_file():
        return "ready"
    return "failed" if (folder / "failed.json").is_file() else "running"


def embed_argv(folder: Path) -> list[str]:
    return [sys.executable, "-m", "serve.embeddings", str(folder)]


class EmbedKind(JobKind):
    """Embedding jobs: their result is the set's id and chip count."""

    timeout_s = None

    @property
    def env(self) -> dict[str, str]:
        return job_env()

    def _folder(self, record: dict) -> Path:
        from .settings import serve_dir

        return serve_dir() / "embeddings" / record["params"]["embeddings_id"]

    def finalize(self, record: dict, folder: Path) -> dict:
        emb = self._folder(record)
        shutil.rmtree(emb / INPUTS, ignore_errors=True)
        summary = read_json(emb / SUMMARY)
        if summary is None:
            raise JobFailed("the embedding process ended without writing its file; see the logs")
        emb_id = emb.name
        return {
            "embeddings_id": emb_id,
            "chips": summary["chips"],
            "links": {"embeddings": f"/v1/embeddings/{emb_id}"},
        }

    def completed(self, record: dict, folder: Path) -> dict | None:
        emb = self._folder(record)
        return self.finalize(record, folder) if (emb / SUMMARY).is_file() else None

    def abandon(self, record: dict, folder: Path, state: str) -> None:
        emb = self._folder(record)
        if emb.is_dir() and state != "interrupted":
            shutil.rmtree(emb / INPUTS, ignore_errors=True)
            write_json(emb / "failed.json", {"state": state, "finished": now()})

    def resume(self, record: dict, folder: Path) -> tuple[list[str], str] | None:
        """Embedding writes its file under a temporary name, so it simply runs again."""
        return record["argv"], "from the start (the file appears only when complete)"


@lru_cache(maxsize=2)
def _index(path: str, mtime_ns: int):
    from trainer.search import EmbeddingIndex

    return EmbeddingIndex(path)


def index(folder: Path):
    """The loaded index of a finished set (the two most recently searched stay loaded)."""
    path = folder / FILE
    return _index(str(path), path.stat().st_mtime_ns)


# -- the job's process ----------------------------------------------------------------------------
def run(folder: Path) -> dict:
    from trainer.embed import (
        EmbedOptions,
        EncoderSource,
        embed_images,
        embed_scene,
        encoder_for_area,
    )

    req = read_json(folder / REQUEST)
    if req.get("inputs"):
        from . import untrusted

        for note in untrusted.isolate(Limits(**req["limits"]).memory_mb):
            print(f"note: {note}", flush=True)
    enc = req["encoder"]
    source = EncoderSource(
        backbone=enc.get("backbone"),
        weights=enc.get("weights"),
        size=enc.get("size"),
        model=enc.get("registered_name"),
        version=enc.get("version"),
        pool=enc["pool"],
        record_paths=False,
    )
    o = req["options"]
    opts = EmbedOptions(**o)
    out = folder / FILE
    if req.get("aoi"):
        from datamodules.composite import composite_for_model

        encoder = encoder_for_area(source, req.get("sensor"), o.get("chip_size"), req.get("bands"))
        comp = composite_for_model(
            req["aoi"],
            req["start_date"],
            req["end_date"],
            encoder.record,
            folder / "imagery",
            sensor=req.get("sensor"),
            progress=True,
        )
        items = [i["id"] for i in comp.provenance["items"]]
        prov = {
            "imagery": comp.provenance,
            "source": f"{comp.provenance['catalog']}: {', '.join(items)}",
        }
        opts.chip_size = opts.chip_size or encoder.record["patch_size"]
        opts.mask_clouds = False  # the composite is cloud-masked already
        summary = embed_scene(
            encoder, comp.images, out, sensor=comp.sensor, options=opts, provenance=prov
        )
    else:
        images = [folder / INPUTS / f for f in req["inputs"]]
        prov = {"source": ", ".join(req["input_names"])}
        summary = embed_images(
            source,
            images,
            out,
            bands=req.get("bands"),
            sensor=req.get("sensor"),
            dates=req.get("dates"),
            options=opts,
            provenance=prov,
        )
    write_json(folder / SUMMARY, summary | {"out": FILE, "finished": now()})
    return summary


def main(argv: list[str] | None = None) -> int:
    from datamodules.errors import UserError

    from .uploads import rename_in_message

    folder = Path((argv or sys.argv[1:])[0])
    try:
        summary = run(folder)
    except UserError as e:
        req = read_json(folder / REQUEST) or {}
        names = {
            folder / INPUTS / f: s
            for f, s in zip(req.get("inputs", []), req.get("input_names", []), strict=False)
        }
        print(f"error: {rename_in_message(str(e), names)}", file=sys.stderr, flush=True)
        return 2
    except MemoryError:
        print(
            "error: embedding this scene needs more memory than this server allows one job; "
            "crop the scene or use a larger stride",
            file=sys.stderr,
            flush=True,
        )
        return 2
    print(json.dumps({k: summary[k] for k in ("chips", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
