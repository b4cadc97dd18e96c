"""The ``power-loss`` scenario: acknowledged writes must survive the machine losing power.

``kill-under-load`` cannot tell a store that fsyncs before it acknowledges from one that does
not: after SIGKILL the kernel's page cache still holds what the process wrote. Here the
service's state volume is a :class:`~graceful.harness.powerloss.PowerLossVolume` (a FUSE file
system on the host, bind-mounted at the workload's volume path) and the container is
SIGKILLed at the same instant as everything not fsynced is dropped, as when a node loses
power. A new container on the same volume must then start, become ready and list every
acknowledged write. The model and its limits: docs/power-loss.md.

The scenario is opt-in (``--scenario power-loss``): it needs FUSE and root on the host, and
is SKIPPED with the reason where :func:`~graceful.harness.powerloss.unavailable` gives one.
:func:`power_volume` and :func:`power_cut` are shared with ``graceful harness soak``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from graceful.harness.container import ContainerError, StopResult
from graceful.harness.context import HANG_GUARD_S, Context, Findings, Service
from graceful.harness.contract import Capability
from graceful.harness.durability import READ_ERRORS, UnverifiableRead, read_back
from graceful.harness.engine import remove
from graceful.harness.load import Ledger
from graceful.harness.powerloss import CutReport, PowerLossVolume, unavailable
from graceful.harness.report import ScenarioResult
from graceful.harness.scenarios.kill import writes_under_way

__all__ = [
    "POWER_PREFIX",
    "PowerLoss",
    "PowerVolume",
    "describe_cut",
    "power_cut",
    "power_unavailable",
    "power_volume",
]

#: The prefix of the temporary directory that holds a power-loss volume (backing directory
#: and mount point), so what a run mounted can be found.
POWER_PREFIX = "graceful-power-"


def power_unavailable() -> str | None:
    """Why the power-loss volume cannot be used here, in a finding's words, or None.

    .. versionadded:: 0.1
    """
    reason = unavailable()
    if reason is None:
        return None
    return f"needs a power-loss volume (FUSE, mounted as root on the host): {reason}"


class PowerVolume:
    """A mounted power-loss volume, safe to cut from a worker thread while the event loop
    tears it down (the teardown waits for a cut in progress).

    Attributes:
        top: the temporary directory that holds the backing directory and the mount point.
        path: the mount point on the host, bind-mounted into the service's containers.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        top = Path(tempfile.mkdtemp(prefix=POWER_PREFIX))
        top.chmod(0o755)  # the service's user must reach the mount point through it
        self.top = top
        self._volume = PowerLossVolume(top / "backing", top / "mnt")
        self._lock = threading.Lock()
        self.path = str(self._volume.mountpoint)

    def mount(self) -> None:
        """Mount the volume over its (seeded) backing directory."""
        with self._lock:
            self._volume.mount()

    def cut(self) -> CutReport:
        """Drop everything not synced and mount afresh (see :meth:`PowerLossVolume.cut`)."""
        with self._lock:
            return self._volume.cut()

    def close(self) -> None:
        """Unmount (never leaving a mount behind) and remove the temporary directory."""
        with self._lock:
            try:
                self._volume.unmount()
            finally:
                shutil.rmtree(self.top, ignore_errors=True)


@contextlib.asynccontextmanager
async def power_volume(ctx: Context) -> AsyncIterator[PowerVolume]:
    """A power-loss volume for ``ctx``'s image, holding what a new named volume would (the
    image's files at the workload's volume path, with their owners), mounted for the block.

    On the way out, also by an exception or a cancellation (Ctrl-C), the scenario's
    containers are removed first (they have the mount bound), then the volume is unmounted
    and its directory removed.

    Raises:
        PowerLossError: the volume could not be mounted.

    .. versionadded:: 0.1
    """
    volume = PowerVolume()
    try:
        ctx.step("preparing the power-loss volume")
        await asyncio.to_thread(_seed, ctx, volume.top)
        await asyncio.to_thread(volume.mount)
        yield volume
    finally:
        # Blocking on purpose: nothing here may be cancelled half-way.
        ctx.remove_now()
        volume.close()


def _seed(ctx: Context, top: Path) -> None:
    """Fill ``top/backing`` with what Docker copies into a new named volume: the image's
    files at the volume path, owners and modes included (an empty directory, owned by root,
    when the image has none there)."""
    import docker.errors

    backing = top / "backing"
    client = ctx.engine.client
    raw = client.containers.create(ctx.image.ref, labels=dict(ctx.engine.labels))
    try:
        chunks, _ = raw.get_archive(ctx.workload.volume_path)
        archive = b"".join(chunks)
    except docker.errors.NotFound:
        backing.mkdir()
        return
    finally:
        remove(client, containers=[str(raw.id)])
    staging = top / "image"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(staging, numeric_owner=True, filter=_image_files)
    (root,) = staging.iterdir()
    root.rename(backing)
    staging.rmdir()


def _image_files(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    # The "tar" filter refuses paths and links that leave the directory; it also clears
    # group/other write bits, which a volume directory may need (a world-writable /data), so
    # the image's mode comes back without set-user-ID (and set-group-ID on files): these
    # files sit in a world-readable directory on the host.
    checked = tarfile.tar_filter(member, path)
    mode = member.mode & ~stat.S_ISUID
    if not member.isdir():
        mode &= ~stat.S_ISGID
    return checked.replace(mode=mode, deep=False)


async def power_cut(
    ctx: Context, service: Service, volume: PowerVolume
) -> tuple[StopResult | None, CutReport]:
    """The power goes out: SIGKILL to the container and the volume's unsynced data dropped
    at the same instant, then the container's exit (None when it did not exit).

    .. versionadded:: 0.1
    """
    ctx.step("power cut: docker kill and the unsynced data dropped at once")
    started = time.monotonic()
    _, report = await asyncio.gather(ctx.kill(service, "SIGKILL"), asyncio.to_thread(volume.cut))
    stop = await ctx.wait_exit(service, started, HANG_GUARD_S)
    return stop, report


def describe_cut(report: CutReport) -> str:
    """What a cut dropped, in plain words: ``reverted state.sqlite-wal; removed items.log``.

    .. versionadded:: 0.1
    """
    parts = []
    for verb, paths in (
        ("reverted", report.reverted),
        ("removed", report.removed),
        ("restored", report.restored),
    ):
        if paths:
            parts.append(f"{verb} {_names(paths)}")
    return "; ".join(parts) or "nothing (everything was synced)"


def _names(paths: Sequence[str], limit: int = 5) -> str:
    return ", ".join(paths[:limit]) + (
        f" and {len(paths) - limit} more" if len(paths) > limit else ""
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerLoss:
    """Writers under load, then the power cut (SIGKILL and the volume's unsynced data dropped
    at once), then a new container on the same volume: it must start, become ready and list
    every acknowledged write.

    Args:
        writers: concurrent writers.
        min_acked: acknowledged writes to wait for before the cut.
        max_wait: the longest to wait for them, seconds.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "power-loss"
    summary: ClassVar[str] = (
        "power cut under write load (SIGKILL, unsynced data dropped): the store opens and "
        "every acked write is there (opt-in: FUSE, root)"
    )
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.ITEMS})
    opt_in: ClassVar[bool] = True
    writers: int = 16
    min_acked: int = 30
    max_wait: float = 10.0

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        reason = power_unavailable()
        if reason is not None:
            f.skip(reason)
            return f.result(self.name)
        if not ctx.workload.volume_path:
            f.skip(
                "needs a state volume to cut the power under (volume_path in "
                "[tool.graceful.harness], --graceful-volume-path or --volume-path)"
            )
            return f.result(self.name)
        ledger = Ledger()
        async with power_volume(ctx) as volume:
            service = await ctx.start(volume.path, what="a container on the power-loss volume")
            under_way = writes_under_way(
                ctx, service, ledger, self.writers, self.min_acked, self.max_wait
            )
            async with under_way:
                stop, cut = await power_cut(ctx, service, volume)
            if stop is None:
                f.problem("the container did not exit after SIGKILL")
            elif stop.exit_code != 137:
                f.problem(f"exited {stop.exit_code} after SIGKILL (expected 137)")
            lost = await _judge_after_cut(f, ctx, volume, ledger, cut)
        return f.result(self.name, stop=stop, ledger=ledger, lost=lost)


async def _judge_after_cut(
    f: Findings, ctx: Context, volume: PowerVolume, ledger: Ledger, cut: CutReport
) -> int:
    """A new container on the volume must open the store and list every acknowledged write.
    Returns how many were lost."""
    acked = ledger.acked_ids()
    dropped = describe_cut(cut)
    if not acked:
        f.problem("no write was acknowledged before the power cut, so nothing could be checked")
        return 0
    try:
        stored = await read_back(ctx, volume.path, acked)
    except ContainerError as exc:  # only this is the store failing to open
        f.problem(
            "after a power cut the store did not open cleanly: a new container on the same "
            f"volume did not start and become ready (the cut {dropped}): {exc}"
        )
        return 0
    except UnverifiableRead as exc:
        f.problem(
            f"after a power cut the {len(acked)} acknowledged writes could not be checked: {exc}"
        )
        return 0
    except READ_ERRORS as exc:
        f.problem(
            f"after a power cut the stored writes could not be read ({ctx.workload.reads_from}; "
            f"the cut {dropped}): {exc}"
        )
        return 0
    lost = [i for i in acked if i not in stored]
    if lost:
        f.problem(
            f"acknowledged writes lost after a power cut ({len(lost)} of {len(acked)}): ids "
            f"{_names(lost)}: the service acknowledged before fsync (the cut {dropped})"
        )
    else:
        # With a read template the ids were read back one by one, not listed.
        how = (
            f"read back all {len(acked)} by id ({ctx.workload.read})"
            if ctx.workload.read
            else f"listed {len(stored)} items"
        )
        f.note(
            f"all {len(acked)} acknowledged writes were there after a power cut, and the store "
            f"opened cleanly (a new container started, became ready and {how})"
        )
        f.note(f"the cut dropped what was not synced: {dropped}")
    return len(lost)
