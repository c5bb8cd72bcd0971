"""Jobs: a scheduler that runs each job as its own process, and the kinds of jobs.

A job is a record in the job store (:mod:`serve.jobstore`, SQLite, shared by every server on a
GEOTUNE_HOME) and a folder ``$GEOTUNE_HOME/serve/jobs/<id>/`` with ``log.txt`` (the process's
output) and ``progress.json`` (written by the process: epoch/step and latest metrics for
training, tiles for prediction). Jobs run as separate processes (``geotune train ...``,
``python -m serve.predictions ...``, ``python -m serve.ingestion ...``), in their own session so
that a cancel stops the process and everything it started; a kind may add to the process's
environment and bound its run time.

States: queued → running → succeeded | failed | cancelled. At most ``limits[kind]`` jobs of a
kind run at once (counted over every server of the store); the rest wait in FIFO order. After a
restart queued jobs still run; a job that was running when its server went away has its
left-over process (if still alive and still the same process) stopped and is queued again where
its kind can resume it (at most ``MAX_RESUMES`` times), else failed with the reason; if its work
had finished it is marked succeeded and not run again.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from .jobstore import (  # noqa: F401 (the store's helpers are part of this module's interface)
    JobStore,
    new_server_id,
    now,
    proc_start_time,
    read_json,
    server_alive,
    write_json,
)

log = logging.getLogger("geotune.serve")

ACTIVE = ("queued", "running")
MAX_RESUMES = 3  # an interrupted job is taken up again at most this many times
FINISHED = ("succeeded", "failed", "cancelled")


class JobFailed(Exception):
    """Raised by a job kind's ``finalize`` when a process exited 0 but produced no result."""


class JobKind:
    """What the scheduler needs to know about one kind of job (training, prediction, ingest)."""

    env: dict[str, str] = {}  # added to the job process's environment
    timeout_s: float | None = None  # a job running longer is stopped and fails

    def finalize(self, record: dict, folder: Path) -> dict:
        """The result of a process that exited 0; raise :class:`JobFailed` if there is none."""
        return {}

    def abandon(self, record: dict, folder: Path, state: str) -> None:
        """Clean up after a failed, cancelled or interrupted job (e.g. close its MLflow run)."""

    def completed(self, record: dict, folder: Path) -> dict | None:
        """The result of an interrupted job whose process had finished its work (e.g. a fine-tune
        that registered its version before the server went away), else None."""
        return None

    def resume(self, record: dict, folder: Path) -> tuple[list[str], str] | None:
        """The command that takes an interrupted job up again and how it does (e.g. "from its
        last checkpoint"), or None when it cannot be: then it fails."""
        return None


def _alive(pid: int, start: str | None) -> bool:
    cur = proc_start_time(pid)
    return cur is not None and (start is None or cur == start)


def stop_process_group(pid: int, start: str | None, timeout: float = 10.0) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid, start):
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + timeout
        while time.time() < deadline and _alive(pid, start):
            time.sleep(0.1)


def _die_with_parent() -> None:
    """In a job's process before it starts: the kernel kills it when the server dies (even by
    SIGKILL), so no job outlives its server to finish, or register a model, unseen."""
    import ctypes

    PR_SET_PDEATHSIG = 1  # noqa: N806 (the kernel's name)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def error_from_log(text: str, exit_code: int | None) -> str:
    """The message that explains a failed process: its ``error:`` line, else its exception."""
    lines = [ln.split("\r")[-1].strip() for ln in text.splitlines()]
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[len("error: ") :]
    pattern = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt))(:|\(|$)")
    for ln in reversed(lines):
        if pattern.match(ln):
            return ln[:2000]
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else ""
        return f"the process was killed by signal {-exit_code} {name} (out of memory?)"
    return f"the process exited with code {exit_code}"


def clean_log(text: str, folder: Path | None = None) -> str:
    """A job's output as its owner sees it: progress bars at their last state (they redraw lines
    with carriage returns) and, with ``folder``, no server paths (see :func:`redact_paths`)."""
    text = "\n".join(ln.split("\r")[-1] for ln in text.split("\n"))
    return redact_paths(text, folder) if folder is not None else text


def redact_paths(text: str, folder: Path) -> str:
    """``text`` with the server's paths replaced by names: the job's folder by ``<job>``, the
    geotune home by ``<geotune-home>``, the Python installation by ``<python>``."""
    from datamodules.paths import home

    places = [
        (folder, "<job>"),
        (home(), "<geotune-home>"),
        (Path(sys.prefix), "<python>"),
        (Path(sys.base_prefix), "<python>"),
    ]
    pairs = {str(p): name for p, name in places} | {str(p.resolve()): n for p, n in places}
    for path in sorted(pairs, key=len, reverse=True):
        text = text.replace(path, pairs[path])
    return text


class Scheduler:
    """Starts queued jobs up to the limits, follows running ones, records how they end.

    Several schedulers (one per server process) may share one store: each claims queued jobs
    atomically, follows the jobs it started, and takes up the running jobs of a server that is
    gone (:func:`serve.jobstore.server_alive`), never those of one that still runs. The limits
    count the jobs running on every server of the store."""

    def __init__(
        self,
        store: JobStore,
        kinds: dict[str, JobKind],
        limits: dict[str, int],
        poll_seconds: float = 0.5,
        env: dict | None = None,
    ):
        self.store, self.kinds, self.limits = store, kinds, limits
        self.poll, self.env = poll_seconds, env
        self.procs: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.server = new_server_id(self)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="geotune-jobs", daemon=True)
        self.recover()
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Server shutdown: stop running jobs and queue them again to resume at the next start
        (or fail them, for kinds that cannot resume); queued jobs stay queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for job_id in list(self.procs):
            rec = self.store.get(job_id)
            stop_process_group(rec["pid"], rec.get("pid_start"))
            self.procs.pop(job_id, None)
            self._interrupted(rec, "the server was stopped while this job was running")

    def recover(self, why: str = "the server restarted while this job was running") -> None:
        """Take up the running jobs whose server is gone (each by one scheduler only): stop
        what is left of their processes, then queue them again to resume, or fail them."""
        for rec in self.store.all("running"):
            ours = rec["server"] == self.server
            if ours or rec["kind"] not in self.kinds or server_alive(rec["server"]):
                continue
            rec = self.store.update_if(
                rec["id"], {"state": "running", "server": rec["server"]}, server=self.server
            )
            if rec is None:  # another server took it up first
                continue
            if rec.get("pid") and _alive(rec["pid"], rec.get("pid_start")):
                stop_process_group(rec["pid"], rec.get("pid_start"))
            self._interrupted(rec, why)

    def _interrupted(self, rec: dict, why: str) -> None:
        """A running job lost its server: queue it again where its kind can resume it (at most
        ``MAX_RESUMES`` times), else fail it with the reason."""
        self._merge_progress(rec)
        rec = self.store.get(rec["id"])
        folder = self.store.dir(rec["id"])
        try:
            result = self.kinds[rec["kind"]].completed(rec, folder)
        except Exception:
            log.exception("cannot tell whether job %s had finished", rec["id"])
            result = None
        if result is not None:  # its work was done: never do it twice
            note = f"{why}; its work had finished, so it was not run again"
            self.store.update(
                rec["id"], state="succeeded", finished=now(), result=result, pid=None, note=note
            )
            return
        where = _progress_text(rec.get("progress") or {})
        when = f"started {rec.get('started')}{', ' + where if where else ''}"
        again = None
        if rec.get("resumes", 0) < MAX_RESUMES and not rec.get("cancel_requested"):
            try:
                again = self.kinds[rec["kind"]].resume(rec, folder)
            except Exception:
                log.exception("cannot resume job %s", rec["id"])
        if again is None:
            self._abandon(rec, "failed")
            msg = f"{why} ({when}); its process was stopped. Submit the job again."
            self.store.update(rec["id"], state="failed", finished=now(), error=msg)
            return
        argv, how = again
        self._abandon(rec, "interrupted")
        self.store.update(
            rec["id"],
            state="queued",
            argv=argv,
            pid=None,
            pid_start=None,
            resumes=rec.get("resumes", 0) + 1,
            note=f"{why} ({when}); queued again to resume {how}",
        )

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # keep scheduling; the log has the traceback
                log.exception("job scheduler tick failed")
            self._stop.wait(self.poll)

    def tick(self) -> None:
        for job_id, proc in list(self.procs.items()):
            rec = self.store.get(job_id)
            self._merge_progress(rec)
            self._stop_overdue(rec)
            code = proc.poll()
            if code is not None and self.procs.pop(job_id, None) is not None:
                self._finish(job_id, code)
        self.recover("the server running this job went away")
        limits = {kind: self.limits.get(kind, 1) for kind in self.kinds}
        while not self._stop.is_set() and (rec := self.store.claim(self.server, limits)):
            self._popen(rec)

    def _popen(self, rec: dict) -> dict:
        """Start the process of a job this scheduler has claimed."""
        folder = self.store.dir(rec["id"])
        try:
            with open(folder / "log.txt", "ab") as out:
                proc = subprocess.Popen(
                    rec["argv"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=folder,
                    env=self._env(rec["kind"]),
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        except (OSError, ValueError, TypeError) as e:  # no such program, a bad command
            return self.store.update(
                rec["id"], state="failed", finished=now(), error=f"cannot start the job: {e}"
            )
        self.procs[rec["id"]] = proc
        rec = self.store.update(rec["id"], pid=proc.pid, pid_start=proc_start_time(proc.pid))
        if rec.get("cancel_requested"):  # cancelled between the claim and now
            stop_process_group(rec["pid"], rec["pid_start"])
        return rec

    def _env(self, kind: str) -> dict | None:
        extra = self.kinds[kind].env
        if not extra:
            return self.env
        return {**(self.env if self.env is not None else os.environ), **extra}

    def _stop_overdue(self, rec: dict) -> None:
        """Stop a job that has run longer than its kind allows; it fails saying so."""
        limit = self.kinds[rec["kind"]].timeout_s
        started = rec.get("started")
        if limit is None or not started or rec.get("timed_out"):
            return
        elapsed = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
        if elapsed > limit:
            self.store.update(rec["id"], timed_out=limit)
            stop_process_group(rec["pid"], rec.get("pid_start"), timeout=5)

    def _merge_progress(self, rec: dict) -> None:
        progress = read_json(self.store.dir(rec["id"]) / "progress.json")
        if progress and progress != rec.get("progress"):
            self.store.update(rec["id"], progress=progress)

    def _finish(self, job_id: str, code: int) -> None:
        rec = self.store.get(job_id)
        self._merge_progress(rec)
        rec = self.store.get(job_id)
        folder = self.store.dir(job_id)
        if rec.get("cancel_requested"):
            self._abandon(rec, "cancelled")
            self.store.update(job_id, state="cancelled", finished=now(), exit_code=code)
            return
        if code == 0:
            try:
                result = self.kinds[rec["kind"]].finalize(rec, folder)
            except JobFailed as e:
                self._abandon(rec, "failed")
                self.store.update(job_id, state="failed", finished=now(), exit_code=0, error=str(e))
                return
            self.store.update(job_id, state="succeeded", finished=now(), exit_code=0, result=result)
            return
        text = (folder / "log.txt").read_text(errors="replace")
        self._abandon(rec, "failed")
        reason = redact_paths(error_from_log(text, code), folder)
        if rec.get("timed_out"):
            reason = (
                f"the job ran longer than this server's limit of {rec['timed_out']:g} s for a "
                f"{rec['kind']} job and was stopped; make the input smaller"
            )
        self.store.update(
            job_id,
            state="failed",
            finished=now(),
            exit_code=code,
            error=f"{reason} (full log: GET /v1/jobs/{job_id}/logs)",
        )

    def _abandon(self, rec: dict, state: str) -> None:
        try:
            self.kinds[rec["kind"]].abandon(rec, self.store.dir(rec["id"]), state)
        except Exception:
            log.exception("cleaning up job %s failed", rec["id"])

    # -- requests ---------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job (on any server of the store); returns the record once
        it is cancelled."""
        rec = self.store.update_if(job_id, {"state": "queued"}, state="cancelled", finished=now())
        if rec is not None:
            self._abandon(rec, "cancelled")
            return rec
        rec = self.store.update_if(job_id, {"state": "running"}, cancel_requested=True)
        if rec is None:
            return self.store.get(job_id)
        proc = self.procs.get(job_id)
        if rec.get("pid"):  # else its server is starting it and stops it once started
            stop_process_group(rec["pid"], rec.get("pid_start"))
        if proc is not None:
            code = proc.wait(timeout=30)
            if self.procs.pop(job_id, None) is not None:
                self._finish(job_id, code)
        deadline = time.time() + 30
        while self.store.get(job_id)["state"] == "running" and time.time() < deadline:
            time.sleep(0.1)  # the scheduler thread is finishing it
        return self.store.get(job_id)


def job_view(rec: dict) -> dict:
    """A job record as the API shows it: its state, progress and result, and links."""
    jid = rec["id"]
    params = {k: v for k, v in rec["params"].items() if k not in ("mlflow_name",)}
    links = {"self": f"/v1/jobs/{jid}", "logs": f"/v1/jobs/{jid}/logs"}
    if rec["kind"] == "predict":
        links["result"] = f"/v1/jobs/{jid}/result"
    if rec["state"] == "succeeded" and rec["kind"] == "finetune":
        links["model"] = f"/v1/models/{rec['result']['model']}"
    if rec["state"] == "succeeded" and rec["kind"] == "ingest":
        links["dataset"] = f"/v1/datasets/{rec['params']['dataset']}"
    return {
        k: rec.get(k)
        for k in (
            "id",
            "kind",
            "state",
            "created",
            "started",
            "finished",
            "progress",
            "error",
            "result",
            "resumes",
            "note",
        )
    } | {"params": params, "links": links}


def _progress_text(p: dict) -> str:
    if p.get("epoch") is not None:
        total = f" of {p['max_epochs']}" if p.get("max_epochs") else ""
        return f"at epoch {p['epoch']}{total}, step {p.get('step', 0)}"
    if p.get("tiles_done") is not None:
        return f"after {p['tiles_done']} of {p.get('tiles_total', '?')} tiles"
    if p.get("blocks_done") is not None:
        return f"compositing, {p['blocks_done']} of {p.get('blocks_total', '?')} blocks"
    return ""
