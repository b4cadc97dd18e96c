#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`.
#
# Already running: nothing to do, nothing printed. Otherwise, as root on
# Debian: install docker.io when dockerd is missing, start dockerd in the
# background (log: /var/log/dockerd.log) and wait until it answers.
# Anywhere else: say how to get an engine and exit 1.
set -euo pipefail

WAIT_S="${DOCKER_ENGINE_WAIT:-60}"
LOG=/var/log/dockerd.log

say() { printf '%s\n' "engine: $*" >&2; }

answers() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && answers; then
    exit 0
fi

if [[ $(id -u) -ne 0 || ! -f /etc/debian_version ]]; then
    say "no Docker engine answers 'docker info'."
    say "start one (e.g. 'sudo systemctl start docker', Docker Desktop, or as root on"
    say "Debian: 'apt-get install docker.io && dockerd &'), or point DOCKER_HOST at one."
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Debian's docker.io ships both dockerd and a CLI; a newer CLI elsewhere on
# PATH also works with it (the API version is negotiated).
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    say "installing docker.io"
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

PIDFILE=/var/run/docker.pid
if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    say "dockerd (pid $(cat "$PIDFILE")) is running but not answering yet; waiting"
else
    # A dockerd that died uncleanly leaves its pid file behind and refuses to start.
    rm -f "$PIDFILE"
    nohup dockerd >>"$LOG" 2>&1 </dev/null &
    disown || true
fi

deadline=$((SECONDS + WAIT_S))
until answers; do
    if ((SECONDS >= deadline)); then
        say "dockerd did not answer within ${WAIT_S} s; last lines of $LOG:"
        tail -n 20 "$LOG" 2>/dev/null >&2 || true
        exit 1
    fi
    sleep 0.5
done
say "dockerd $(docker version -f '{{.Server.Version}}' 2>/dev/null) up (log: $LOG)"
