"""The service's parts on their own, with real files, processes and SQLite: API keys, upload
names, the job scheduler (queue limit, recovery after a crash, cancel), log messages."""

import sqlite3
import sys
import time

import pytest

from serve.jobs import JobKind, JobStore, Scheduler, clean_log, error_from_log, proc_start_time
from serve.keys import ApiKeyError, KeyStore
from serve.owners import LOCAL, api_name, mlflow_name
from serve.uploads import display_name, rename_in_message, safe_stem, sniff


def test_keys_are_stored_hashed_and_revocable(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    key_id, key = store.create("alice", "laptop")
    assert key.startswith(f"gtk_{key_id}_") and len(key) > 40
    assert store.owner_for(key) == "alice"
    assert store.owner_for(key + "x") is None and store.owner_for("") is None
    raw = (tmp_path / "keys.db").read_bytes()
    assert key.encode() not in raw and key.split("_", 2)[2].encode() not in raw
    with sqlite3.connect(tmp_path / "keys.db") as db:
        assert db.execute("SELECT owner, note FROM keys").fetchall() == [("alice", "laptop")]
    assert store.revoke(key_id)["already_revoked"] is False
    assert store.owner_for(key) is None and store.active_count() == 0
    assert store.revoke(key_id)["already_revoked"] is True
    with pytest.raises(ApiKeyError, match="geotune keys list"):
        store.revoke("nope")
    with pytest.raises(ApiKeyError, match="lower-case"):
        store.create("Alice Smith")


def test_upload_names_never_become_paths():
    assert sniff(b"II*\x00rest") == "tif" and sniff(b"MM\x00+") == "tif"
    assert sniff(b"SQLite format 3\x00") == "gpkg" and sniff(b"PK\x03\x04") == "zip"
    assert sniff(b'\xef\xbb\xbf  {"type"') == "geojson" and sniff(b"PAR1") == "parquet"
    assert sniff(b"<VRTDataset>") is None and sniff(b"/vsicurl/http://x") is None
    for hostile in ("../../etc/passwd", "/vsicurl/http://h/x.tif", "C:\\win\\..\\a.tif", ".hidden"):
        stem = safe_stem(hostile)
        assert (
            "/" not in stem and "\\" not in stem and ".." not in stem and not stem.startswith(".")
        )
    assert safe_stem("T33UUP_20240601_B04.jp2") == "T33UUP_20240601_B04"
    assert display_name("/home/me/scene.tif", "image") == "scene.tif"
    assert display_name(None, "image") == "image"


def test_messages_name_the_clients_files_and_fields(tmp_path):
    names = {tmp_path / "labels-my_labels.geojson": "my labels.geojson"}
    msg = f"{tmp_path}/labels-my_labels.geojson has no column 'class'. Pass --class-column class_name."
    assert (
        rename_in_message(msg, names)
        == "my labels.geojson has no column 'class'. Pass class_column=class_name."
    )
    assert "the bands field in file order" in rename_in_message("Pass --bands in file order.", {})


def test_owner_namespaces():
    assert mlflow_name(LOCAL, "coast") == "coast" and mlflow_name("alice", "coast") == "alice.coast"
    assert api_name("alice", "alice.coast") == "coast" and api_name(LOCAL, "x.y") == "x.y"


def test_error_from_log_finds_the_message():
    log = "epoch 1\rprogress 50%\rprogress 100%\nerror: no dataset 'x'. Create one first\n"
    assert error_from_log(log, 2) == "no dataset 'x'. Create one first"
    hydra = "Error executing job with overrides: []\nError in call to target 'a.B':\nRuntimeError('boom')\nfull_key: task\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
    assert error_from_log(hydra, 1) == "RuntimeError('boom')"
    assert "signal 9" in error_from_log("", -9)
    assert clean_log("a\rb\rc\nd") == "c\nd"


class Sleep(JobKind):
    def __init__(self):
        self.abandoned = []

    def finalize(self, record, folder):
        return {"slept": True}

    def abandon(self, record, folder, state):
        self.abandoned.append((record["id"], state))


def sleeper(seconds: float):
    return lambda folder: [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def wait(cond, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_scheduler_queue_limit_cancel_and_recovery(tmp_path):
    store = JobStore(tmp_path / "jobs")
    kind = Sleep()
    sched = Scheduler(store, {"sleep": kind}, {"sleep": 1}, poll_seconds=0.05)
    sched.start()
    try:
        a = store.create("sleep", "alice", {}, sleeper(60))
        b = store.create("sleep", "alice", {}, sleeper(0.2))
        wait(lambda: store.get(a["id"])["state"] == "running")
        time.sleep(0.3)
        assert store.get(b["id"])["state"] == "queued"  # at most one at once
        pid = store.get(a["id"])["pid"]
        assert sched.cancel(a["id"])["state"] == "cancelled" and proc_start_time(pid) is None
        wait(lambda: store.get(b["id"])["state"] == "succeeded")
        assert store.get(b["id"])["result"] == {"slept": True}
        c = store.create("sleep", "alice", {}, sleeper(60))
        wait(lambda: store.get(c["id"])["state"] == "running")
    finally:
        sched._stop.set()  # a crash: the scheduler goes away without stopping its job ...
        sched._thread.join()
    pid = store.get(c["id"])["pid"]
    wait(lambda: proc_start_time(pid) is None, timeout=15)  # ... and the kernel kills the job
    d = store.create("sleep", "alice", {}, sleeper(0.1))

    again = Scheduler(store, {"sleep": kind}, {"sleep": 1}, poll_seconds=0.05)
    again.start()  # recovery: the orphan is stopped and its job failed, the queued one runs
    try:
        rec = store.get(c["id"])
        assert rec["state"] == "failed" and "server restarted" in rec["error"]
        wait(lambda: store.get(d["id"])["state"] == "succeeded")
    finally:
        again.stop()
    assert (a["id"], "cancelled") in kind.abandoned and (c["id"], "failed") in kind.abandoned


class Finished(Sleep):
    """A kind whose interrupted jobs had done their work (a fine-tune that registered)."""

    def completed(self, record, folder):
        return {"registered": 1} if (folder / "done").is_file() else None

    def resume(self, record, folder):
        return record["argv"], "from the start"


def test_an_interrupted_job_whose_work_is_done_is_not_run_again(tmp_path):
    store = JobStore(tmp_path / "jobs")
    kind = Finished()
    sched = Scheduler(store, {"sleep": kind}, {"sleep": 1}, poll_seconds=0.05)
    sched.start()
    try:
        done = store.create("sleep", "alice", {}, sleeper(60))
        wait(lambda: store.get(done["id"])["state"] == "running")
        (store.dir(done["id"]) / "done").touch()  # its result exists, then the server dies
    finally:
        sched._stop.set()
        sched._thread.join()
    other = store.create("sleep", "alice", {}, sleeper(60))
    store.update(other["id"], state="running", pid=None)  # interrupted before its work was done
    again = Scheduler(store, {"sleep": kind}, {"sleep": 1}, poll_seconds=0.05)
    again.start()
    try:
        rec = store.get(done["id"])
        assert rec["state"] == "succeeded" and rec["result"] == {"registered": 1}, rec
        assert "not run again" in rec["note"]
        rec = store.get(other["id"])
        assert rec["resumes"] == 1 and rec["state"] in ("queued", "running")
    finally:
        again.stop()


class Resumable(Sleep):
    """Resumes by sleeping a little, as a job would resume from its checkpoint."""

    def resume(self, record, folder):
        return sleeper(0.1)(folder), "with a short sleep"


def test_interrupted_jobs_resume_at_most_max_resumes_times(tmp_path):
    from serve.jobs import MAX_RESUMES

    store = JobStore(tmp_path / "jobs")
    kind = Resumable()
    job = store.create("sleep", "alice", {}, sleeper(60))
    for n in range(1, MAX_RESUMES + 2):
        sched = Scheduler(store, {"sleep": kind}, {"sleep": 1}, poll_seconds=0.05)
        if n == 1:
            sched.start()
            wait(lambda: store.get(job["id"])["state"] == "running")
            pid = store.get(job["id"])["pid"]
            sched.stop()  # a graceful stop: the job is queued again, its process stopped
            assert proc_start_time(pid) is None
        else:  # a crash while it runs: recovered at the next start
            store.update(job["id"], state="running")
            sched.recover()
        rec = store.get(job["id"])
        if n <= MAX_RESUMES:
            assert rec["state"] == "queued" and rec["resumes"] == n, rec
            assert rec["argv"] == sleeper(0.1)(None) and "queued again to resume" in rec["note"]
            assert (job["id"], "interrupted") in kind.abandoned
        else:  # taken up MAX_RESUMES times already: now it fails, with the reason
            assert rec["state"] == "failed" and "Submit the job again" in rec["error"]
    sched = Scheduler(store, {"sleep": kind}, {"sleep": 1}, poll_seconds=0.05)
    b = store.create("sleep", "alice", {}, sleeper(60))
    sched.start()
    try:
        wait(lambda: store.get(b["id"])["state"] == "running")
        sched._stop.set()
        sched._thread.join()
        Scheduler(store, {"sleep": kind}, {"sleep": 1}).recover()  # after a crash
        assert store.get(b["id"])["state"] == "queued"
    finally:
        pid = store.get(b["id"])["pid"]
        if pid and proc_start_time(pid):
            import os
            import signal

            os.kill(pid, signal.SIGKILL)


def test_failed_process_records_its_error(tmp_path):
    store = JobStore(tmp_path / "jobs")
    sched = Scheduler(store, {"x": JobKind()}, {"x": 2}, poll_seconds=0.05)
    sched.start()
    try:
        code = "import sys; print('working'); print('error: the dataset has no bands', file=sys.stderr); sys.exit(2)"
        job = store.create("x", "bob", {}, lambda folder: [sys.executable, "-c", code])
        missing = store.create("x", "bob", {}, lambda folder: ["/nonexistent/geotune"])
        wait(lambda: store.get(job["id"])["state"] == "failed")
        rec = store.get(job["id"])
        assert rec["exit_code"] == 2 and rec["error"].startswith("the dataset has no bands")
        wait(lambda: store.get(missing["id"])["state"] == "failed")
        assert "cannot start the job" in store.get(missing["id"])["error"]
    finally:
        sched.stop()


def test_finished_predictions_expire_and_running_ones_stay(tmp_path):
    """``keep_hours``: a prediction finished longer ago is gone for every request and removed
    by a clean-up; one still running (a job's, or in the server) is never removed; 0 keeps all."""
    import os
    import time

    from serve.jobs import write_json
    from serve.predictions import PredictionStore

    store = PredictionStore(tmp_path / "p", keep_hours=1.0)
    ids = {}
    for name in ("old", "young", "unfinished", "busy", "here", "failed_old"):
        pid, folder = store.new()
        ids[name] = pid
        write_json(folder / "request.json", {"owner": "alice"})
        if name != "unfinished":
            marker = folder / ("failed.json" if name == "failed_old" else "done.json")
            write_json(marker, {})
            if name != "young":
                two_hours_ago = time.time() - 7200
                os.utime(marker, (two_hours_ago, two_hours_ago))
    orphan = tmp_path / "p" / "pred-0123456789ab"  # a crash before its request was written
    orphan.mkdir()
    os.utime(orphan, (time.time() - 2 * 86400,) * 2)
    assert store.folder(ids["old"], "alice") is None  # expired: as if it did not exist
    assert store.folder(ids["young"], "alice") is not None
    with store.running(ids["here"]):
        removed = store.clean(busy={ids["busy"]})
    assert sorted(removed) == sorted([ids["old"], ids["failed_old"], orphan.name])
    left = {p.name for p in (tmp_path / "p").iterdir()}
    assert left == {ids[n] for n in ("young", "unfinished", "busy", "here")}
    forever = PredictionStore(tmp_path / "p", keep_hours=0)
    assert forever.clean() == [] and forever.folder(ids["here"], "alice") is not None


def test_serve_flags_become_settings():
    from datamodules.errors import UserError
    from serve.cli import settings_from
    from trainer.cli import build_parser

    args = build_parser().parse_args(["serve", "--dev", "--keep-predictions", "0.5"])
    assert settings_from(args).keep_predictions_hours == 0.5
    assert settings_from(build_parser().parse_args(["serve"])).keep_predictions_hours == 168
    with pytest.raises(UserError, match="--keep-predictions must be 0"):
        settings_from(build_parser().parse_args(["serve", "--keep-predictions", "-1"]))
    with pytest.raises(UserError, match="--dev serves without API keys"):
        settings_from(build_parser().parse_args(["serve", "--dev", "--host", "0.0.0.0"]))
