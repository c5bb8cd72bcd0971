"""The job store: one SQLite table (WAL mode) that every server on a GEOTUNE_HOME shares.

``$GEOTUNE_HOME/serve/jobs.db`` holds one row per job: the columns the queue is queried by
(``id``, ``seq``, ``kind``, ``owner``, ``state``, ``server``) and the rest of the record as
JSON. Each job keeps its folder ``$GEOTUNE_HOME/serve/jobs/<id>/`` (log, progress, inputs, run
folder). Every change is one short write transaction, so several server processes can use one
store: :meth:`JobStore.claim` moves the oldest queued job whose kind has room to ``running`` in
a single ``UPDATE ... RETURNING`` and records which server took it, so no job starts twice.

A server is named by :func:`new_server_id` (boot, pid, process start time and a token per
scheduler): a job whose server is gone (:func:`server_alive`) can be taken up by another.
The servers must share the machine (SQLite's WAL needs shared memory; a Postgres URL would be
the next step for servers on several machines).

Job folders written by the JSON store before this one (``<id>/job.json``) are moved into the
table when a store opens them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

JOB_ID_RE = re.compile(r"^job-[0-9a-f]{12}$")
COLUMNS = ("id", "seq", "kind", "owner", "state", "server")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    server TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
"""
# the oldest queued job of a kind with room (running jobs of the kind, on any server, below the
# kind's limit) becomes running on :server, in one statement
CLAIM = """
WITH lim(kind, n) AS (VALUES {values})
UPDATE jobs SET state = 'running', server = :server,
    record = json_set(record, '$.started', :started)
WHERE id = (
    SELECT q.id FROM jobs AS q JOIN lim ON lim.kind = q.kind
    WHERE q.state = 'queued'
      AND (SELECT COUNT(*) FROM jobs AS r WHERE r.state = 'running' AND r.kind = q.kind) < lim.n
    ORDER BY q.seq LIMIT 1
)
RETURNING *
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# -- servers --------------------------------------------------------------------------------------
def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a live ``pid`` (to tell a left-over process from a reused
    pid); None when there is no such process or only its zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]


_SCHEDULERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # token -> scheduler


def new_server_id(scheduler) -> str:
    """``<boot>:<pid>:<start>:<token>`` for a scheduler of this process; it counts as alive
    while this process runs and ``scheduler.alive()`` is true."""
    token = secrets.token_hex(4)
    _SCHEDULERS[token] = scheduler
    return f"{_boot_id()}:{os.getpid()}:{proc_start_time(os.getpid())}:{token}"


def server_alive(server: str | None) -> bool:
    """Whether the server that claimed a job still runs (False for None: a job from before
    servers were recorded, or one set running by hand)."""
    try:
        boot, pid, start, token = (server or "").split(":")
    except ValueError:
        return False
    if boot != _boot_id() or proc_start_time(int(pid)) != start:
        return False  # rebooted since, or that process is gone
    if int(pid) != os.getpid():
        return True
    scheduler = _SCHEDULERS.get(token)  # a scheduler of this process
    return scheduler is not None and scheduler.alive()


class StoreLock:
    """A lock held by one thread of one process at a time: reentrant within a thread, and
    exclusive across the processes that share the store (``flock`` on a file). Routes hold it
    while they check a name and create the job that will use it."""

    def __init__(self, path: Path):
        self._rlock = threading.RLock()
        self._path = path
        self._file = None
        self._depth = 0

    def __enter__(self):
        self._rlock.acquire()
        if self._depth == 0:
            self._file = open(self._path, "a+")  # noqa: SIM115 (closed in __exit__)
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self._file.close()  # releases the flock
            self._file = None
        self._rlock.release()


# -- the store ------------------------------------------------------------------------------------
class JobStore:
    """Job records in SQLite (``db``, by default ``<root>.db`` beside the folders in ``root``)."""

    def __init__(self, root: Path, db: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = Path(db) if db is not None else self.root.with_name(f"{self.root.name}.db")
        self.lock = StoreLock(self.db.with_name(f"{self.db.name}.lock"))
        with closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db, timeout=60, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at its start, so reads in it see what it changes)."""
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def dir(self, job_id: str) -> Path:
        if not JOB_ID_RE.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def create(
        self,
        kind: str,
        owner: str,
        params: dict,
        build_argv: Callable[[Path], list[str]],
        prepare: Callable[[Path], None] | None = None,
    ) -> dict:
        """A queued job; ``prepare(folder)`` fills its folder before the record exists (the
        scheduler sees only jobs with a record)."""
        job_id = f"job-{secrets.token_hex(6)}"
        folder = self.root / job_id
        folder.mkdir()
        if prepare is not None:
            try:
                prepare(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        record = {
            "id": job_id,
            "kind": kind,
            "owner": owner,
            "state": "queued",
            "server": None,
            "created": now(),
            "seq": time.time_ns(),  # queue order (created has whole seconds)
            "started": None,
            "finished": None,
            "params": params,
            "argv": build_argv(folder),
            "pid": None,
            "pid_start": None,
            "exit_code": None,
            "progress": {},
            "error": None,
            "result": None,
            "cancel_requested": False,
        }
        with self._write() as con:
            _insert(con, record)
        return record

    def get(self, job_id: str) -> dict | None:
        if not JOB_ID_RE.match(job_id or ""):
            return None
        with closing(self._connect()) as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row is not None else None

    def update(self, job_id: str, **changes) -> dict:
        rec = self.update_if(job_id, {}, **changes)
        if rec is None:
            raise KeyError(job_id)
        return rec

    def update_if(self, job_id: str, expect: dict, **changes) -> dict | None:
        """Apply ``changes`` if the job's columns have the ``expect``ed values (e.g. only while
        it is queued); returns the changed record, or None (no such job, or not as expected)."""
        with self._write() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or any(row[k] != v for k, v in expect.items()):
                return None
            rec = _record(row) | changes
            cols = {k: rec[k] for k in COLUMNS if k != "id"}
            sets = ", ".join(f"{k} = ?" for k in cols)
            con.execute(
                f"UPDATE jobs SET {sets}, record = ? WHERE id = ?",
                (*cols.values(), _rest(rec), job_id),
            )
        return rec

    def all(self, state: str | None = None) -> list[dict]:
        """Every job (or those in ``state``), oldest first."""
        sql, args = "SELECT * FROM jobs", ()
        if state is not None:
            sql, args = sql + " WHERE state = ?", (state,)
        with closing(self._connect()) as con:
            rows = con.execute(sql + " ORDER BY seq, id", args).fetchall()
        return [_record(r) for r in rows]

    def claim(self, server: str, limits: dict[str, int]) -> dict | None:
        """The oldest queued job of a kind in ``limits`` with fewer than ``limits[kind]`` jobs
        running (on any server), now running on ``server``; None when there is none."""
        if not limits:
            return None
        values = ", ".join(f"(:kind{i}, :n{i})" for i in range(len(limits)))
        args = {"server": server, "started": now()}
        for i, (kind, n) in enumerate(limits.items()):
            args |= {f"kind{i}": kind, f"n{i}": n}
        with self._write() as con:
            row = con.execute(CLAIM.format(values=values), args).fetchone()
        return _record(row) if row is not None else None

    def _migrate(self) -> None:
        """Move job records of the JSON store (``<id>/job.json``) into the table."""
        for path in sorted(self.root.glob("job-*/job.json")):
            rec = read_json(path)
            if rec is None or not JOB_ID_RE.match(rec.get("id", "")):
                continue
            rec.setdefault("server", None)
            if "seq" not in rec:  # records older than the seq field: creation order
                rec["seq"] = int(datetime.fromisoformat(rec["created"]).timestamp() * 1e9)
            with self._write() as con:
                _insert(con, rec, or_ignore=True)
            path.unlink(missing_ok=True)


def _insert(con: sqlite3.Connection, rec: dict, or_ignore: bool = False) -> None:
    verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
    con.execute(
        f"{verb} INTO jobs ({', '.join(COLUMNS)}, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*(rec[k] for k in COLUMNS), _rest(rec)),
    )


def _rest(rec: dict) -> str:
    return json.dumps({k: v for k, v in rec.items() if k not in COLUMNS})


def _record(row: sqlite3.Row) -> dict:
    return {k: row[k] for k in COLUMNS} | json.loads(row["record"])
