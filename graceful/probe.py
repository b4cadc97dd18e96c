"""``graceful probe livez|readyz``: a container's HEALTHCHECK, with no curl in the image.

Asks the admin server of this container directly (``ADMIN_HOST``/``ADMIN_PORT``, or
options), ignoring proxy variables, and exits 0 only on HTTP 200; every other outcome is one
line on stderr and exit 1.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import sys

from graceful.config import Config
from graceful.exceptions import ConfigError

__all__ = ["DEFAULT_ADMIN_PORT", "probe"]

#: Admin port the probe asks when ADMIN_PORT is not set (the examples' contract).
DEFAULT_ADMIN_PORT = 9090


def probe(endpoint: str, host: str | None, port: int | None, timeout: float) -> int:
    """``graceful probe``: GET the endpoint straight from the admin server; 0 when it is 200.

    http.client, not urllib: the probe talks to its own container, and urllib would send it
    through ``http_proxy``/``ALL_PROXY`` (Docker sets those from the client's proxy config).
    """
    try:
        host, port = _probe_address(host, port)
    except ConfigError as exc:
        print(f"graceful probe: {exc}", file=sys.stderr)
        return 1
    url = f"http://{_url_host(host)}:{port}/{endpoint}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", f"/{endpoint}", headers={"Connection": "close"})
        status = connection.getresponse().status
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"graceful probe: {url}: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if status != 200:
        print(f"graceful probe: {url}: HTTP {status}", file=sys.stderr)
    return 0 if status == 200 else 1


def _probe_address(host: str | None, port: int | None) -> tuple[str, int]:
    """Where the admin server of this container listens: options, else ADMIN_HOST/ADMIN_PORT.

    Raises:
        ConfigError: a variable the probe needs is invalid, or the admin server is off.
    """
    needed = {"ADMIN_HOST": host is None, "ADMIN_PORT": port is None}
    environ = {var: os.environ[var] for var, need in needed.items() if need and var in os.environ}
    config = Config.from_env(environ)  # validates just these two, naming the variable
    if port is None:
        raw = environ.get("ADMIN_PORT", "").strip()
        if config.admin_port is None and raw:
            raise ConfigError(f"ADMIN_PORT={raw!r}: the admin server is off, nothing to probe")
        if config.admin_port == 0:
            raise ConfigError("ADMIN_PORT='0' picks a free port at startup: pass --port")
        port = DEFAULT_ADMIN_PORT if config.admin_port is None else config.admin_port
    host = config.admin_host if host is None else host
    try:
        if ipaddress.ip_address(host).is_unspecified:  # 0.0.0.0 or ::: bound on loopback too
            host = "::1" if ":" in host else "127.0.0.1"
    except ValueError:  # a host name
        pass
    return host, port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
