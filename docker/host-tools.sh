#!/usr/bin/env bash
# Host tools the tests use besides the Docker engine, each installed from Debian's packages
# when missing and we are root; quiet when all are present:
# - haproxy: to check graceful/harness/haproxy.cfg with `haproxy -c`;
# - fuse3: libfuse 3 (loaded by the mfusepy binding) and fusermount3, for the power-loss
#   volume (graceful/harness/powerloss/). The kernel side, /dev/fuse, cannot be installed.
set -euo pipefail
missing=()
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  missing+=(haproxy)
fi
if ! command -v fusermount3 >/dev/null 2>&1 \
  || ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3 '; then
  missing+=(fuse3)
fi
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${missing[*]}: install (Debian: apt-get install ${missing[*]}) to run the tests that use them" >&2
  exit 1
fi
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
echo "installed ${missing[*]}"
