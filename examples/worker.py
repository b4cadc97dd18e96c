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
  so its file is deleted without running the job again.

Environment: ``STATE_PATH`` (SQLite file, default ``state.db``), ``JOBS_DIR`` (default
``jobs``), ``WORKER_CONCURRENCY`` (8), ``BATCH_MAX_ITEMS`` (100), ``BATCH_MAX_AGE`` (seconds,
0.2), ``JOBS_SCAN_INTERVAL`` (seconds between scans of an empty directory, 0.1), plus the
runtime's ``GRACEFUL_STOP_TIMEOUT`` and ``ADMIN_PORT``.

Run it as a container's exec-form entrypoint: ``python examples/worker.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import graceful
from graceful.state import Batcher, DurableStore

#: One processed job: its id, its result and the file that acknowledges it once deleted.
Done = tuple[str, dict[str, Any], Path]


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
            waiting = [p for p in sorted(self.jobs.glob("*.json")) if p.name not in self.claimed]
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
        handed_over = False
        try:
            job = self.read(path)
            if job is None:
                return
            job_id = str(job.get("id") or path.stem)
            if await self.store.get(job_id) is not None:
                # Recorded by an earlier run that was killed before it deleted the file.
                self.log.info("job.already_done", job=job_id)
                self.acknowledge([path])
                return
            await asyncio.sleep(float(job.get("work_ms", 0)) / 1000)
            result = {
                "id": job_id,
                "digest": hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest(),
                "pid": os.getpid(),
            }
            self.log.info("job.processed", job=job_id)
            await self.batcher.add((job_id, result, path))
            handed_over = True
        finally:
            self.slots.release()
            if not handed_over:
                self.claimed.discard(path.name)

    def read(self, path: Path) -> dict[str, Any] | None:
        try:
            job = json.loads(path.read_bytes())
            if not isinstance(job, dict):
                raise ValueError("a job is a JSON object")
        except FileNotFoundError:
            return None
        except ValueError as exc:
            rejected = self.jobs / "rejected"
            rejected.mkdir(exist_ok=True)
            path.rename(rejected / path.name)
            self.log.error("job.rejected", file=path.name, error=str(exc))
            return None
        return job

    async def record(self, batch: list[Done]) -> None:
        """Commit a batch of results, then acknowledge its jobs by deleting their files."""
        await self.store.put_many([(job_id, result) for job_id, result, _ in batch])
        self.acknowledge([path for _, _, path in batch])
        self.log.info("jobs.recorded", count=len(batch))

    def acknowledge(self, paths: list[Path]) -> None:
        # Deleting a spool file is a metadata update of a few microseconds: not worth a thread.
        for path in paths:
            path.unlink(missing_ok=True)
            self.claimed.discard(path.name)


async def main(runtime: graceful.Runtime) -> None:
    settings = Settings.from_env()
    store = DurableStore(settings.state_path, registry=runtime.registry)
    await store.open()
    # Close after the batcher's final flush: close hooks run after the flush phase.
    runtime.on_shutdown(phase=graceful.Phase.CLOSE, name="state.close")(store.close)
    worker = SpoolWorker(runtime, store, settings)
    worker.batcher.attach(runtime)
    await worker.run()


if __name__ == "__main__":
    raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))
