"""A container worker: takes jobs from a spool directory, records results durably, exactly once.

Jobs are JSON files in ``JOBS_DIR`` (``{"id": "...", "work_ms": 20, ...}``; the id defaults to
the file name). A producer writes each job under a temporary name and renames it to
``*.json``, so the worker never reads half a file. The worker processes up to
``WORKER_CONCURRENCY`` jobs at a time (simulated work: it sleeps ``work_ms``), buffers the
results in a `Batcher` and writes them with `DurableStore.put_many`. Only once a batch is
committed are its job files deleted: deleting the file is the acknowledgement.

Why no acknowledged job is lost or done twice:

- SIGTERM (``docker stop``): new jobs stop being taken, jobs in progress finish (drain phase),
  the buffered results are committed (flush phase), their files deleted, the store closed.
- SIGKILL (``docker kill``): results that were only buffered are lost, but so is nothing
  acknowledged: their files are still there and the jobs run again after the restart.
- Killed between the commit and the deletion: on restart the job's id is found in the store,
  so its file is deleted without running the job again (``job.already_done``).

One result per id: the store keeps the first value written under a key. Two job files with
the same id (``a.json`` holding ``"id": "order-1"`` and ``order-1.json`` without an id) are two
submissions of one job: the first recorded wins, the other is acknowledged (its file deleted)
without being recorded, with a ``job.duplicate`` line naming its file, the id and the file of
the job that was recorded (kept in the result as ``file``). ``jobs.recorded`` counts the
results that were new.

A job file that can never be processed (not a regular file, over 1 MiB, not UTF-8 JSON, not
an object, nested too deeply, an id or ``work_ms`` that breaks the rules, a key the store
refuses: any error but a passing one) is moved to ``JOBS_DIR/rejected/`` once, with a
``job.rejected`` log line. Passing errors (the store failing, too many open files, out of
memory) leave the file in place, with a ``job.deferred`` line, for another try a second later.

Environment: ``STATE_PATH`` (SQLite file, default ``state.db``), ``JOBS_DIR`` (default
``jobs``), ``WORKER_CONCURRENCY`` (8), ``BATCH_MAX_ITEMS`` (100), ``BATCH_MAX_AGE`` (seconds,
0.2), ``JOBS_SCAN_INTERVAL`` (seconds between scans of an empty directory, 0.1), plus the
runtime's ``GRACEFUL_STOP_TIMEOUT`` and ``ADMIN_PORT``.

Run it as a container's exec-form entrypoint: ``python examples/worker.py``.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import math
import os
import stat
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import contract

import graceful
from graceful.runner import end_process
from graceful.state import Batcher, DurableStore

#: One processed job: its id, its result and the file that acknowledges it once deleted.
Done = tuple[str, dict[str, Any], Path]

#: The largest job file read; a larger one is rejected without being read.
MAX_JOB_BYTES = 1024 * 1024
#: Seconds before a job whose attempt failed for a passing reason is taken again.
RETRY_DELAY = 1.0
#: Errors of the machine, not of the job: they pass, so the job is tried again later.
PASSING_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EAGAIN, errno.EINTR}
)


class BadJob(ValueError):
    """A job file that will never be processed, whatever the number of tries."""


@dataclass(frozen=True, slots=True)
class Job:
    """A job file's content, checked."""

    id: str
    work_ms: float
    body: dict[str, Any]


def read_job(path: Path) -> Job:
    """Read and check the job in ``path``.

    Raises:
        FileNotFoundError: the file is gone (taken by another worker, or already done).
        BadJob: the file is not a job this worker can ever process.
        OSError: reading failed (`PASSING_ERRNOS` say whether trying again can help).
    """
    # O_NONBLOCK: a FIFO named *.json would otherwise block the loop in open() forever.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if os.path.lexists(path):  # a symbolic link to nothing: it will not heal alone
            raise BadJob("a symbolic link to nothing") from None
        raise
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadJob("not a regular file")
        data = file.read(MAX_JOB_BYTES + 1)
    if len(data) > MAX_JOB_BYTES:
        raise BadJob(f"larger than {MAX_JOB_BYTES} bytes")
    try:
        body = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise BadJob("nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, too many digits
        raise BadJob(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadJob("a job is a JSON object")
    job_id = contract.check_id(body.get("id", path.stem))
    work_ms = body.get("work_ms", 0)
    if not (
        isinstance(work_ms, int | float)
        and not isinstance(work_ms, bool)
        and math.isfinite(work_ms)
        and 0 <= work_ms <= contract.MAX_WORK_MS
    ):
        raise BadJob(f"work_ms must be a number from 0 to {contract.MAX_WORK_MS}")
    return Job(id=job_id, work_ms=work_ms, body=body)


def passing(exc: Exception) -> bool:
    """Whether an attempt that failed with ``exc`` may succeed later, unchanged."""
    if isinstance(exc, graceful.StateError | MemoryError):
        return True
    return isinstance(exc, OSError) and exc.errno in PASSING_ERRNOS


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The worker's own settings (the runtime reads its own from the environment)."""

    state_path: str = "state.db"
    jobs_dir: str = "jobs"
    concurrency: int = 8
    batch_max_items: int = 100
    batch_max_age: float = 0.2
    scan_interval: float = 0.1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        d = cls()
        try:
            return cls(
                state_path=env.get("STATE_PATH", d.state_path),
                jobs_dir=env.get("JOBS_DIR", d.jobs_dir),
                concurrency=int(env.get("WORKER_CONCURRENCY", d.concurrency)),
                batch_max_items=int(env.get("BATCH_MAX_ITEMS", d.batch_max_items)),
                batch_max_age=float(env.get("BATCH_MAX_AGE", d.batch_max_age)),
                scan_interval=float(env.get("JOBS_SCAN_INTERVAL", d.scan_interval)),
            )
        except ValueError as exc:
            raise graceful.ConfigError(f"worker setting: {exc}") from None


class SpoolWorker:
    """Takes jobs from a directory until the runtime stops; acknowledges them once recorded."""

    def __init__(self, runtime: graceful.Runtime, store: DurableStore, settings: Settings) -> None:
        self.runtime = runtime
        self.store = store
        self.settings = settings
        self.jobs = Path(settings.jobs_dir)
        self.log = runtime.log
        # Files taken and not yet acknowledged (in progress or buffered): never taken twice.
        self.claimed: set[str] = set()
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.batcher: Batcher[Done] = Batcher(
            self.record,
            max_items=settings.batch_max_items,
            max_age=settings.batch_max_age,
            name="results",
        )

    async def run(self) -> None:
        """Take jobs until a stop begins; the runtime then drains the jobs in progress."""
        self.log.info("worker.started", jobs_dir=str(self.jobs), state_path=self.store.path)
        self.runtime.mark_ready()
        while not self.runtime.stopping:
            try:
                found = sorted(self.jobs.glob("*.json"))
            except OSError as exc:
                if not passing(exc):
                    raise
                # Out of descriptors or memory for a moment: look again later, keep running.
                self.log.warning("jobs.scan_deferred", error=describe(exc))
                await self.until_stop(asyncio.sleep(RETRY_DELAY))
                continue
            waiting = [p for p in found if p.name not in self.claimed]
            if not waiting:
                await self.until_stop(asyncio.sleep(self.settings.scan_interval))
                continue
            for path in waiting:
                if not await self.until_stop(self.slots.acquire()):
                    break
                if self.stop_has_begun():
                    # The slot and the stop came in the same tick: take no job the drain
                    # would not know about.
                    self.slots.release()
                    break
                self.claimed.add(path.name)
                _ = self.runtime.create_task(self.take(path), name=f"job {path.name}")
        self.log.info("worker.stopped_taking_jobs", in_progress=len(self.claimed))

    def stop_has_begun(self) -> bool:
        return self.runtime.stopping

    async def until_stop(self, aw: Awaitable[Any]) -> bool:
        """Await ``aw`` unless a stop begins first; True if ``aw`` finished."""
        work = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self.runtime.wait_stopping())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if work.done():
            return True
        work.cancel()
        await asyncio.wait({work})
        return False

    async def take(self, path: Path) -> None:
        # When the file may be taken again: now (0), after a while, or never by this call
        # (None: its batch acknowledges it, or reject() moved it away).
        release_after: float | None = 0.0
        try:
            job = read_job(path)
            recorded = await self.store.get(job.id)
            if recorded is not None:
                first = recorded.get("file") if isinstance(recorded, dict) else None
                if first is not None and first != path.name:
                    self.duplicate(path, job.id, first)
                else:  # an earlier run recorded it, and was killed before it deleted the file
                    self.log.info("job.already_done", job=job.id)
                self.acknowledge([path])
                return
            await asyncio.sleep(job.work_ms / 1000)
            result = {
                "id": job.id,
                "digest": hashlib.sha256(json.dumps(job.body, sort_keys=True).encode()).hexdigest(),
                "pid": os.getpid(),
                "file": path.name,
            }
            self.log.info("job.processed", job=job.id)
            await self.batcher.add((job.id, result, path))
            release_after = None
        except FileNotFoundError:
            pass  # gone: acknowledged by an earlier attempt, or removed by the producer
        except Exception as exc:
            if passing(exc):
                self.log.warning("job.deferred", file=path.name, error=describe(exc))
                release_after = RETRY_DELAY
            else:
                # The job's own fault (RecursionError, a key the store refuses, ...): another
                # try would fail the same way, forever.
                release_after = None
                self.reject(path, exc)
        finally:
            self.slots.release()
            if release_after == 0:
                self.claimed.discard(path.name)
            elif release_after is not None:
                loop = asyncio.get_running_loop()
                loop.call_later(release_after, self.claimed.discard, path.name)

    def reject(self, path: Path, exc: Exception) -> None:
        """Move a job that can never be processed out of the way, once."""
        rejected = self.jobs / "rejected"
        try:
            rejected.mkdir(exist_ok=True)
            path.rename(rejected / path.name)
        except OSError as move_error:
            # Keep it claimed: this run never takes it again.
            self.log.error(
                "job.reject_failed", file=path.name, error=describe(exc), move=describe(move_error)
            )
            return
        self.claimed.discard(path.name)
        self.log.error("job.rejected", file=path.name, error=describe(exc))

    async def record(self, batch: list[Done]) -> None:
        """Commit a batch of results, then acknowledge its jobs by deleting their files."""
        new = await self.store.put_many([(job_id, result) for job_id, result, _ in batch])
        if new < len(batch):
            await self.name_duplicates(batch)
        self.acknowledge([path for _, _, path in batch])
        self.log.info("jobs.recorded", count=new)

    async def name_duplicates(self, batch: list[Done]) -> None:
        """Say which results of ``batch`` the store kept out (their id was recorded already).

        The store's value under an id is the first job's result, which names its file: a job
        of another file is a duplicate (this batch's or an earlier one's).
        """
        for job_id, _, path in batch:
            recorded = await self.store.get(job_id)
            first = recorded.get("file") if isinstance(recorded, dict) else None
            if first != path.name:
                self.duplicate(path, job_id, first)

    def duplicate(self, path: Path, job_id: str, first: str | None) -> None:
        self.log.warning(
            "job.duplicate",
            file=path.name,
            job=job_id,
            first_file=first,
            action="not recorded: the first result for this id stays; the file is deleted",
        )

    def acknowledge(self, paths: list[Path]) -> None:
        # Deleting a spool file is a metadata update of a few microseconds: not worth a thread.
        for path in paths:
            path.unlink(missing_ok=True)
            self.claimed.discard(path.name)


def describe(exc: BaseException) -> str:
    """``exc`` for a log line: its type and the start of its message."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


async def main(runtime: graceful.Runtime) -> None:
    settings = Settings.from_env()
    # Closed in the close phase, after the batcher's final flush.
    store = await runtime.enter(DurableStore(settings.state_path, registry=runtime.registry))
    worker = SpoolWorker(runtime, store, settings)
    worker.batcher.attach(runtime)
    await worker.run()


if __name__ == "__main__":
    end_process(graceful.run(main, config=graceful.Config.from_env()))
