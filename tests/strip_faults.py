"""Faults for the workers of a Dask cluster, installed with ``client.run(install, ...)``: the
strip whose first tile row starts at ``row`` raises, or hangs (its worker is then killed by the
test), the first ``times`` times it runs on any worker."""

import os
import time
from pathlib import Path

import trainer.strips as strips

REAL = strips.predicted_tiles


def install(kind: str, row: int, marker: str, times: int = 1) -> None:
    def faulty(pred, windows, cache, bar=None, threads=None):
        m = Path(marker)
        n = int(m.read_text()) if m.exists() else 0
        if windows[0].row_off == row and n < times:
            m.write_text(str(n + 1))
            if kind == "raise":
                raise RuntimeError("injected fault")
            Path(f"{marker}.pid").write_text(str(os.getpid()))
            time.sleep(300)  # until the test kills this worker
        return REAL(pred, windows, cache, bar, threads)

    strips.predicted_tiles = faulty


def remove() -> None:
    strips.predicted_tiles = REAL


def break_composites(user: bool = False) -> None:
    """Every composite strip raises on this worker: its reads fail (``user``: they need
    credentials, an error the user fixes)."""
    from datamodules.composite_write import Writer
    from datamodules.stac_access import AccessError

    def outputs(self, kind, pool, obs, blocks):
        if user:
            raise AccessError("injected: set EARTHDATA_TOKEN")
        raise OSError("injected read failure")
        yield

    Writer.outputs = outputs


def hang_composite(row: int, marker: str) -> None:
    """The composite strip whose first block starts at ``row`` hangs the first time it runs on
    any worker (the test then kills that worker), after its first block."""
    from datamodules.composite_write import Writer

    def outputs(self, kind, pool, obs, blocks):
        m = Path(marker)
        for n, out in enumerate(WRITER_OUTPUTS(self, kind, pool, obs, blocks)):
            if n == 1 and blocks[0].row_off == row and not m.exists():
                m.write_text(str(os.getpid()))
                time.sleep(300)  # until the test kills this worker
            yield out

    Writer.outputs = outputs


def mend_composites() -> None:
    from datamodules.composite_write import Writer

    Writer.outputs = WRITER_OUTPUTS


from datamodules.composite_write import Writer as _Writer  # noqa: E402

WRITER_OUTPUTS = _Writer.outputs
