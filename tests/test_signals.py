"""graceful.signals.shell_pid1_warning, in a real PID namespace (``unshare``) as in a container:
a shell between PID 1's stop signal and the service is named, whatever its shape.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to make a PID namespace",
)

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]
REPO = Path(__file__).resolve().parent.parent
# What the service would log: the warning, or None.
PROBE = "from graceful.signals import shell_pid1_warning; print(shell_pid1_warning())"


def warning_under(argv: list[str], tmp_path: Path, script: str | None = None) -> str:
    """Run the probe as the service under ``argv`` (``{py}``: this Python running it) in a
    new PID namespace, and return what it printed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if script is not None:
        path = tmp_path / "entrypoint.sh"
        path.write_text(script.format(py=sys.executable, probe=PROBE))
        path.chmod(0o755)
    argv = [a.replace("{script}", str(tmp_path / "entrypoint.sh")) for a in argv]
    argv = [a.replace("{py}", sys.executable).replace("{probe}", PROBE) for a in argv]
    done = subprocess.run(
        [*UNSHARE, *argv], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def test_a_script_run_by_a_shell_as_pid1_is_named(tmp_path: Path) -> None:
    """``ENTRYPOINT ["/entrypoint.sh"]`` whose script does not exec: PID 1 is
    ``/bin/sh /entrypoint.sh`` (what the old check, which knew only ``sh -c``, missed)."""
    script = '#!/bin/sh\necho starting\n{py} -c "{probe}"\n'
    text = warning_under(["{script}"], tmp_path, script)
    assert text.startswith("PID 1 is a shell (/bin/sh ")
    assert "entrypoint.sh" in text
    assert "`exec`" in text


def test_shell_form_cmd_is_still_named(tmp_path: Path) -> None:
    # A second command after the server keeps dash from exec'ing it.
    text = warning_under(["/bin/sh", "-c", '{py} -c "{probe}"; true'], tmp_path)
    assert text.startswith("PID 1 is a shell (/bin/sh -c")


def test_a_shell_under_an_init_is_named(tmp_path: Path) -> None:
    """``docker run --init`` with that script: the init passes SIGTERM to the shell, which
    dies of it (the service goes down with the container, exit 143)."""
    tini = shutil.which("tini") or shutil.which("docker-init")
    if tini is None:
        pytest.skip("no tini/docker-init on this machine")
    script = '#!/bin/sh\n{py} -c "{probe}"\n'
    text = warning_under([tini, "-s", "--", "{script}"], tmp_path, script)
    assert text.startswith("PID 1 is an init (")
    assert "whose child is a shell (/bin/sh " in text


def test_no_warning_when_the_server_is_execed(tmp_path: Path) -> None:
    """Control: a script that execs the server leaves it PID 1 (nothing to warn about), and a
    shell that is neither PID 1 nor an init's child is a developer's terminal."""
    script = '#!/bin/sh\nexec {py} -c "{probe}"\n'
    assert warning_under(["{script}"], tmp_path, script) == "None"
    nested = "#!/bin/sh\n/bin/sh -c '{py} -c \"{probe}\"; true'\n"
    assert warning_under(["{script}"], tmp_path, nested) == "None"
