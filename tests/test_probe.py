"""``graceful probe``, the images' HEALTHCHECK, run as the real command (issue 9, item 10).

It talks to the admin server of its own container: proxy variables must not reroute it,
``ADMIN_HOST`` says where the server listens, and a setting it cannot use is one clear line
and exit 1, never a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping

import pytest

from tests.support import free_port
from tests.test_health import Admin, serving

PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
)
ADMIN_VARIABLES = ("ADMIN_HOST", "ADMIN_PORT", "no_proxy", "NO_PROXY")


def run(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command with this environment minus any admin or proxy settings, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES + ADMIN_VARIABLES}
    return subprocess.run(
        argv,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def probe(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "graceful", "probe", *args], env)


@pytest.fixture(scope="module")
def admin() -> Iterator[Admin]:
    with serving("asyncio") as server:
        yield server


@pytest.fixture
def dead_proxy() -> dict[str, str]:
    """Every proxy variable, pointing at a port where nothing listens."""
    url = f"http://127.0.0.1:{free_port()}"
    return dict.fromkeys(PROXY_VARIABLES, url)


def test_probe_ignores_proxy_variables(admin: Admin, dead_proxy: dict[str, str]) -> None:
    env = {**dead_proxy, "ADMIN_PORT": str(admin.port)}
    # Control: these variables do reroute an ordinary HTTP client (urllib, the old probe).
    urllib = run(
        [
            sys.executable,
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)",
            f"http://127.0.0.1:{admin.port}/livez",
        ],
        env,
    )
    assert urllib.returncode != 0
    assert "Connection refused" in urllib.stderr
    result = probe("livez", **env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_probe_asks_admin_host() -> None:
    with serving("asyncio", host="127.0.0.2") as elsewhere:
        port = str(elsewhere.port)
        # Control: nothing answers on the default host at that port.
        assert probe("livez", ADMIN_PORT=port).returncode == 1
        result = probe("livez", ADMIN_PORT=port, ADMIN_HOST="127.0.0.2")
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("bind", "wildcard"), [("127.0.0.1", "0.0.0.0"), ("::1", "::")])
def test_probe_asks_loopback_when_bound_on_every_address(bind: str, wildcard: str) -> None:
    """A server bound on ``::`` listens on IPv6 only (asyncio sets IPV6_V6ONLY): ``::1``."""
    if ":" in bind and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with serving("asyncio", host=bind) as server:
        result = probe("livez", ADMIN_PORT=str(server.port), ADMIN_HOST=wildcard)
        assert result.returncode == 0, result.stderr


def test_probe_options_win_over_the_environment(admin: Admin) -> None:
    result = probe("livez", "--host", "127.0.0.1", "--port", str(admin.port), ADMIN_PORT="off")
    assert result.returncode == 0, result.stderr


def test_probe_fails_on_an_unready_server() -> None:
    with serving("asyncio") as server:
        server.server._is_ready = lambda: False
        result = probe("readyz", ADMIN_PORT=str(server.port))
    assert result.returncode == 1
    assert result.stderr.strip().endswith("HTTP 503")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ADMIN_PORT": "off"}, "ADMIN_PORT='off': the admin server is off"),
        ({"ADMIN_PORT": "none"}, "ADMIN_PORT='none': the admin server is off"),
        ({"ADMIN_PORT": "http"}, "ADMIN_PORT='http' is not a port number"),
        ({"ADMIN_PORT": "70000"}, "ADMIN_PORT='70000' must be a TCP port number"),
        ({"ADMIN_PORT": "0"}, "ADMIN_PORT='0' picks a free port"),
        ({"ADMIN_HOST": "a..b"}, "ADMIN_HOST='a..b' must be an IP address"),
    ],
)
def test_probe_explains_an_unusable_setting_in_one_line(env: dict[str, str], expected: str) -> None:
    result = probe("livez", **env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("graceful probe: ")
    assert expected in result.stderr


def test_probe_explains_a_refused_connection_in_one_line() -> None:
    result = probe("livez", ADMIN_PORT=str(free_port()))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Connection refused" in result.stderr
