"""examples/worker.py under real SIGTERM and SIGKILL: no acknowledged job lost, none done twice.

A job is acknowledged when the worker deletes its file, which it does only after the job's
result is committed. The worker logs ``job.processed`` each time it runs a job, so the tests
can count runs across restarts.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, ServiceProcess

WORKER = ROOT / "examples" / "worker.py"
HANG_GUARD = 60.0

pytestmark = pytest.mark.slow


def make_jobs(jobs: Path, n: int, *, work_ms: int = 10) -> set[str]:
    """Write jobs the way a producer must: under a temporary name, then renamed."""
    jobs.mkdir(exist_ok=True)
    ids = set()
    for i in range(n):
        job_id = f"job-{i:04d}"
        tmp = jobs / f"{job_id}.tmp"
        tmp.write_text(json.dumps({"id": job_id, "work_ms": work_ms, "n": i}))
        tmp.rename(jobs / f"{job_id}.json")
        ids.add(job_id)
    return ids


def remaining(jobs: Path) -> set[str]:
    return {p.stem for p in jobs.glob("*.json")}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def records(path: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT key, value FROM graceful_items").fetchall()
    finally:
        conn.close()
    return {key: json.loads(value) for key, value in rows}


def processed(proc: ServiceProcess) -> list[str]:
    return [e["job"] for e in proc.events() if e.get("event") == "job.processed"]


@contextmanager
def running_worker(tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess.python(
        WORKER,
        env={
            "STATE_PATH": str(tmp_path / "state.db"),
            "JOBS_DIR": str(tmp_path / "jobs"),
            "GRACEFUL_STOP_TIMEOUT": "10",
            "WORKER_CONCURRENCY": "8",
            "BATCH_MAX_ITEMS": "16",
            "BATCH_MAX_AGE": "0.2",
        },
    )
    try:
        proc.wait_event("worker.started")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        if proc.proc.stdout is not None:
            proc.proc.stdout.close()


def finish(tmp_path: Path) -> ServiceProcess:
    """Restart the worker, let it finish every job, stop it cleanly."""
    jobs = tmp_path / "jobs"
    with running_worker(tmp_path) as proc:
        wait_until(lambda: not remaining(jobs), "every job acknowledged")
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    return proc


def test_sigterm_mid_run_then_restart(tmp_path: Path) -> None:
    """SIGTERM while jobs are running, then a restart.

    1. 150 jobs; SIGTERM once 30 are acknowledged, with jobs in progress and results buffered.
    2. Restart and let it finish.
    Result: exit 0 both times; the first run recorded and acknowledged every job it ran (the
    drain finished them, the flush wrote them); the second ran only the others; every job is
    recorded, by the run that processed it, and none ran twice.
    """
    jobs = tmp_path / "jobs"
    all_ids = make_jobs(jobs, 150)
    with running_worker(tmp_path) as first:
        wait_until(lambda: len(remaining(jobs)) <= 120, "30 jobs acknowledged")
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.output()
    run1 = processed(first)
    rec1 = records(tmp_path / "state.db")
    assert len(run1) == len(set(run1))
    assert set(run1) == set(rec1) == all_ids - remaining(jobs)
    assert len(rec1) < len(all_ids), "the stop came after all the work: nothing was tested"
    report = next(e for e in first.events() if e.get("event") == "shutdown.report")
    assert report["exit_code"] == 0
    assert report["flushed"] == len(rec1)

    second = finish(tmp_path)
    run2 = processed(second)
    assert len(run2) == len(set(run2))
    assert not set(run1) & set(run2)
    rec = records(tmp_path / "state.db")
    assert set(rec) == all_ids
    assert all(rec[j]["pid"] == first.pid for j in run1)
    assert all(rec[j]["pid"] == second.pid for j in run2)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_mid_run_then_restart(tmp_path: Path, seed: int) -> None:
    """SIGKILL at a random moment, then a restart.

    1. 150 jobs; SIGKILL once a random number of them (by seed) are acknowledged.
    2. Restart and let it finish.
    Result: every job acknowledged before the kill was recorded; after the restart, no job
    recorded by the first run is run again; every job is recorded exactly once, by the run
    whose processing was committed.
    """
    rng = random.Random(seed)
    jobs = tmp_path / "jobs"
    all_ids = make_jobs(jobs, 150)
    target = rng.randrange(1, 120)
    with running_worker(tmp_path) as first:
        wait_until(lambda: len(all_ids - remaining(jobs)) >= target, f"{target} acks")
        time.sleep(rng.random() * 0.05)
        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    acked = all_ids - remaining(jobs)
    rec1 = records(tmp_path / "state.db")
    assert acked <= set(rec1), f"acknowledged, not recorded: {sorted(acked - set(rec1))[:5]}"
    assert all(r["pid"] == first.pid for r in rec1.values())

    second = finish(tmp_path)
    run2 = processed(second)
    assert len(run2) == len(set(run2))
    assert not set(run2) & set(rec1), "a job recorded before the kill ran again"
    rec = records(tmp_path / "state.db")
    assert set(rec) == all_ids
    assert all(rec[j]["pid"] == second.pid for j in run2)
    assert set(rec) - set(rec1) == set(run2)


def test_recorded_job_whose_file_survived_is_not_run_again(tmp_path: Path) -> None:
    """The kill landed between the commit and the file's deletion.

    1. The worker records 3 jobs and stops.
    2. job-0001's file reappears (as if the deletion had not happened).
    Result: the restarted worker deletes it without running it.
    """
    jobs = tmp_path / "jobs"
    make_jobs(jobs, 3)
    finish(tmp_path)
    make_jobs(jobs, 2)  # job-0000 and job-0001 are back
    second = finish(tmp_path)
    assert processed(second) == []
    skipped = {e["job"] for e in second.events() if e.get("event") == "job.already_done"}
    assert skipped == {"job-0000", "job-0001"}
    assert set(records(tmp_path / "state.db")) == {"job-0000", "job-0001", "job-0002"}


def test_malformed_job_is_set_aside(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    make_jobs(jobs, 2)
    (jobs / "broken.json").write_text("{not json")
    proc = finish(tmp_path)
    assert (jobs / "rejected" / "broken.json").read_text() == "{not json"
    assert set(records(tmp_path / "state.db")) == {"job-0000", "job-0001"}
    assert "job.rejected" in proc.event_names()


def test_bad_state_path_exits_non_zero(tmp_path: Path) -> None:
    proc = ServiceProcess.python(
        WORKER,
        env={"STATE_PATH": str(tmp_path / "missing" / "s.db"), "JOBS_DIR": str(tmp_path)},
    )
    try:
        assert proc.wait() == 1
    finally:
        proc.kill()
        if proc.proc.stdout is not None:
            proc.proc.stdout.close()
    assert str(tmp_path / "missing" / "s.db") in proc.output()
    assert "does not exist" in proc.output()
    assert not os.path.exists(tmp_path / "missing")


def test_a_job_that_raises_recursion_error_is_rejected_once(tmp_path: Path) -> None:
    """A job nested 100 000 deep: ``json.loads`` raises RecursionError, not ValueError.

    Result: the file is moved to ``rejected/`` with one ``job.rejected`` line (it used to be
    taken again every scan, forever); the good job beside it is recorded; exit 0.
    """
    jobs = tmp_path / "jobs"
    good = make_jobs(jobs, 1)
    deep = b"[" * 100_000 + b"]" * 100_000
    (jobs / "deep.json").write_bytes(deep)
    with running_worker(tmp_path) as proc:
        wait_until(lambda: (jobs / "rejected" / "deep.json").exists(), "deep.json rejected")
        wait_until(lambda: not remaining(jobs), "every job acknowledged or rejected")
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    rejected = [e for e in proc.events() if e.get("event") == "job.rejected"]
    assert [e["file"] for e in rejected] == ["deep.json"]
    assert "nested too deeply" in rejected[0]["error"]
    assert (jobs / "rejected" / "deep.json").read_bytes() == deep
    assert set(records(tmp_path / "state.db")) == good
    assert "Traceback" not in proc.output()


def test_a_job_that_can_never_run_is_rejected_once(tmp_path: Path) -> None:
    """Job files that fail with anything but a passing error, beside two good jobs.

    1. Deep nesting (RecursionError), not UTF-8, over 1 MiB, a number as id, a NUL in the id,
       ``work_ms`` that is text, NaN or negative, a FIFO, a directory and a dangling link,
       all named ``*.json``.
    2. The worker runs until every good job is acknowledged and every bad one is moved.
    Result: each bad file is in ``rejected/`` after one ``job.rejected`` line naming it (never
    tried again, never deferred); the good jobs are recorded; exit 0.
    """
    jobs = tmp_path / "jobs"
    good = make_jobs(jobs, 2)
    bad = {
        "deep.json": b"[" * 100_000 + b"]" * 100_000,
        "latin1.json": b'{"id": "caf\xe9"}',
        "huge.json": b'{"id": "huge", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        "number-id.json": b'{"id": 1}',
        "nul-id.json": b'{"id": "a\\u0000b"}',
        "text-ms.json": b'{"id": "t", "work_ms": "soon"}',
        "nan-ms.json": b'{"id": "n", "work_ms": NaN}',
        "negative-ms.json": b'{"id": "m", "work_ms": -1}',
    }
    for name, data in bad.items():
        (jobs / name).write_bytes(data)
    os.mkfifo(jobs / "fifo.json")
    (jobs / "dir.json").mkdir()
    (jobs / "dangling.json").symlink_to(tmp_path / "nowhere")
    expected = set(bad) | {"fifo.json", "dir.json", "dangling.json"}
    rejected = jobs / "rejected"

    def moved() -> set[str]:
        return {p.name for p in rejected.iterdir()} if rejected.exists() else set()

    with running_worker(tmp_path) as proc:
        wait_until(lambda: not remaining(jobs) & good, "the good jobs acknowledged")
        wait_until(lambda: moved() == expected, "the bad jobs moved to rejected/")
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    events = proc.events()
    logged = [e["file"] for e in events if e.get("event") == "job.rejected"]
    assert sorted(logged) == sorted(expected)
    assert "job.deferred" not in proc.event_names()
    deep = next(e for e in events if e.get("file") == "deep.json")
    assert "nested too deeply" in deep["error"]
    assert not {p.name for p in jobs.glob("*.json")}
    assert set(records(tmp_path / "state.db")) == good
    assert (rejected / "deep.json").read_bytes() == bad["deep.json"]
    assert "Traceback" not in proc.output()


def test_a_job_that_meets_a_passing_error_is_deferred_then_done(tmp_path: Path) -> None:
    """1. The worker runs out of file descriptors (its limit lowered to what it holds).
    2. A job arrives: opening it fails with EMFILE, a passing error.
    3. The limit is raised again.

    Result: ``jobs.scan_deferred`` (listing the directory needs a descriptor too) or
    ``job.deferred`` lines, the file stays in place meanwhile, then the job is processed and
    recorded; nothing is rejected, the worker keeps running (it used to crash with exit 1).
    """
    jobs = tmp_path / "jobs"
    with running_worker(tmp_path) as proc:
        limits = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        held = len(os.listdir(f"/proc/{proc.pid}/fd"))
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (held, limits[1]))
        try:
            good = make_jobs(jobs, 1)
            wait_until(
                lambda: bool({"job.deferred", "jobs.scan_deferred"} & set(proc.event_names())),
                "a job.deferred or jobs.scan_deferred line",
            )
            assert remaining(jobs) == good
            assert proc.proc.poll() is None
        finally:
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, limits)
        wait_until(lambda: not remaining(jobs), "the job done once the limit is back")
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    deferred = [
        e for e in proc.events() if e.get("event") in ("job.deferred", "jobs.scan_deferred")
    ]
    assert "Too many open files" in deferred[0]["error"]
    assert set(records(tmp_path / "state.db")) == good
    assert not [e for e in proc.events() if e.get("event") == "job.rejected"]


def test_two_job_files_with_one_id_record_one_result_and_say_so(tmp_path: Path) -> None:
    """Issue C: ``a.json`` holds ``"id": "order-1"``; ``order-1.json`` has no id, so its id is
    its file name: the same id. Both were processed and deleted, ``jobs.recorded`` counted 2,
    the store kept one row, and nothing said the other result was dropped.

    1. Both files and an ordinary job, taken at once (same batch, or not).
    2. Later a third file with the id, ``b.json``, after the first result is recorded.
    Result: one result for order-1, naming the file it came from; a ``job.duplicate`` line
    for each other file, naming the recorded one; ``jobs.recorded`` adds up to the new
    records only; every file deleted. The control is
    ``test_recorded_job_whose_file_survived_is_not_run_again``: the same file back after a
    kill is ``job.already_done``, not a duplicate.
    """
    jobs = tmp_path / "jobs"
    other = make_jobs(jobs, 1)
    (jobs / "a.json").write_text(json.dumps({"id": "order-1", "work_ms": 20, "n": "a"}))
    (jobs / "order-1.json").write_text(json.dumps({"work_ms": 20, "n": "order-1"}))
    with running_worker(tmp_path) as proc:
        wait_until(lambda: not remaining(jobs), "every job acknowledged")
        (jobs / "b.json").write_text(json.dumps({"id": "order-1", "n": "b"}))
        wait_until(lambda: not remaining(jobs), "b.json acknowledged")
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    rec = records(tmp_path / "state.db")
    assert set(rec) == other | {"order-1"}
    first = rec["order-1"]["file"]
    assert first in ("a.json", "order-1.json")
    events = proc.events()
    duplicates = [e for e in events if e.get("event") == "job.duplicate"]
    assert sorted(e["file"] for e in duplicates) == sorted(
        {"a.json", "order-1.json", "b.json"} - {first}
    )
    assert all((e["job"], e["first_file"]) == ("order-1", first) for e in duplicates)
    recorded = sum(e["count"] for e in events if e.get("event") == "jobs.recorded")
    assert recorded == len(rec) == 2
    assert "job.already_done" not in proc.event_names()
