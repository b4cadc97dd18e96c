#!/usr/bin/env bash
# Build build/wheelhouse/: the project's wheel, and in build/wheelhouse/deps/
# every runtime dependency of graceful-stop[uvloop,uvicorn,aiohttp] as wheels
# for CPython 3.11 on Linux x86_64 (Debian 12's python3), so images install
# with `pip --no-index`. Two folders, so an image can install the dependencies
# in a layer of their own that a change to the project's code does not touch.
#
#   pip install --no-index --find-links build/wheelhouse/deps \
#       'build/wheelhouse/graceful_stop-0.1.0-py3-none-any.whl[uvloop,uvicorn,aiohttp]'
#
# The project's wheel is rebuilt every time, reproducibly (SOURCE_DATE_EPOCH):
# an unchanged tree gives a byte-identical wheel and Docker's layer cache hits.
# Dependencies are downloaded again only when pyproject.toml changes.
#
# build/wheelhouse/extra/ holds what test apps install on top (FastAPI, so Starlette
# and pydantic: the FastAPI workers image of tests/test_workers_images.py), without
# the wheels deps/ has. Apart, so the example images' dependency layer stays as it is.
set -euo pipefail

cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
OUT=build/wheelhouse
DEPS="$OUT/deps"
STAMP="$DEPS/.stamp"
EXTRAS="uvloop,uvicorn,aiohttp"
EXTRA="$OUT/extra"
EXTRA_PACKAGES=(fastapi)
# Target interpreter and platform of the base image, not of the host.
# pip does not widen manylinux_2_N to older glibc tags by itself: list them
# (Debian 12 has glibc 2.36; manylinux2014 also admits manylinux2010/1).
TARGET=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311
    --platform manylinux2014_x86_64)
for minor in $(seq 36 -1 17); do
    TARGET+=(--platform "manylinux_2_${minor}_x86_64")
done

log() { printf '%s\n' "wheelhouse: $*" >&2; }

if [[ ! -x $PIP ]]; then
    log "$PIP not found; run 'make venv' first (or set PIP=/path/to/pip)"
    exit 1
fi

mkdir -p "$DEPS"
want=$( (sha256sum pyproject.toml && printf '%s\n' "$EXTRAS" "${TARGET[*]}") | sha256sum | cut -d' ' -f1)

# 1980-01-01, the earliest time a zip entry can hold; any fixed value would do.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# What goes into the wheel: the package and the metadata's sources. Building
# it (pip's isolated build env) costs seconds, so skip that when none changed.
SRC_STAMP="$OUT/.src-stamp"
src=$(find graceful pyproject.toml README.md -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' \
    -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
wheel=$(find "$OUT" -maxdepth 1 -name 'graceful_stop-*.whl' -printf '%f\n' | head -n1)
if [[ -z $wheel || ! -f $SRC_STAMP || $(cat "$SRC_STAMP") != "$src:$SOURCE_DATE_EPOCH" ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$PIP" wheel --quiet --no-deps --wheel-dir "$tmp" . >&2
    wheel=$(cd "$tmp" && ls graceful_stop-*.whl)
    if ! cmp -s "$tmp/$wheel" "$OUT/$wheel"; then
        rm -f "$OUT"/graceful_stop-*.whl
        # Replace the file only when its bytes changed.
        mv "$tmp/$wheel" "$OUT/$wheel"
        log "project wheel: $wheel (changed)"
    fi
    printf '%s\n' "$src:$SOURCE_DATE_EPOCH" >"$SRC_STAMP"
fi

if [[ ! -f $STAMP || $(cat "$STAMP") != "$want" ]]; then
    log "downloading dependencies of graceful-stop[$EXTRAS] for cp311 manylinux x86_64"
    # Also drop what an older, flat layout left beside the project's wheel.
    find "$OUT" "$DEPS" -maxdepth 1 -name '*.whl' ! -path "$OUT/graceful_stop-*" -delete
    "$PIP" download -qq --dest "$DEPS" "${TARGET[@]}" "$OUT/${wheel}[$EXTRAS]" >&2
    rm -f "$DEPS"/graceful_stop-*.whl
    printf '%s\n' "$want" >"$STAMP"
    log "$(find "$DEPS" -maxdepth 1 -name '*.whl' | wc -l) dependency wheels in $DEPS"
    rm -f "$EXTRA/.stamp" # what deps/ holds changed, so does what extra/ must add
fi

mkdir -p "$EXTRA"
extra_want=$(printf '%s\n' "$want" "${EXTRA_PACKAGES[@]}" | sha256sum | cut -d' ' -f1)
if [[ ! -f $EXTRA/.stamp || $(cat "$EXTRA/.stamp") != "$extra_want" ]]; then
    log "downloading ${EXTRA_PACKAGES[*]} for cp311 manylinux x86_64 (test apps)"
    find "$EXTRA" -maxdepth 1 -name '*.whl' -delete
    "$PIP" download -qq --dest "$EXTRA" "${TARGET[@]}" --find-links "$DEPS" \
        "$OUT/${wheel}[$EXTRAS]" "${EXTRA_PACKAGES[@]}" >&2
    for whl in "$EXTRA"/*.whl; do
        name=$(basename "$whl")
        if [[ $name == graceful_stop-* || -f $DEPS/$name ]]; then
            rm -f "$whl"
        fi
    done
    printf '%s\n' "$extra_want" >"$EXTRA/.stamp"
    log "$(find "$EXTRA" -maxdepth 1 -name '*.whl' | wc -l) more wheels in $EXTRA"
fi
