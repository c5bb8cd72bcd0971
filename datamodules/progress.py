"""Progress of long work: a tqdm bar for people and a callback for machines (a service job's
``progress.json``), updated together."""

from __future__ import annotations

import threading
import time


class ProgressBar:
    """Units of work done: a tqdm bar (when ``show``) and ``report(done, total)`` (at most twice
    a second, and at the end)."""

    def __init__(self, total: int, show: bool, report=None, desc: str = "", unit: str = "it"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not show)
        self.total, self.done, self.report, self._last = total, 0, report, 0.0
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.bar.update(n)
            if self.report is not None and time.monotonic() - self._last > 0.5:
                self._last = time.monotonic()
                self.report(self.done, self.total)

    def close(self) -> None:
        self.bar.close()
        if self.report is not None:
            self.report(self.done, self.total)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
