#!/usr/bin/env bash
# Host tools the tests use besides the Docker engine: haproxy (to check
# graceful/harness/haproxy.cfg with `haproxy -c`). Installs Debian's package when missing
# and we are root; quiet when present.
set -euo pipefail
if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "haproxy is missing: install it (Debian: apt-get install haproxy) to run its config test" >&2
  exit 1
fi
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >/dev/null
echo "installed haproxy"
