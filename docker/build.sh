#!/usr/bin/env bash
# Build the example images:
#   graceful-example-asgi     examples/asgi_service.py
#   graceful-example-aiohttp  examples/aiohttp_service.py
#   graceful-example-worker   examples/worker.py
# plus graceful-lb:bookworm (HAProxy) for the load-balancer scenarios.
#
# Environment:
#   BASE_IMAGE  base of the example images (default graceful-base:bookworm, built
#               here with docker/base-image.sh; e.g. python:3.12-slim with a registry).
#   INDEX_URL   passed to docker/example.Dockerfile; needed when BASE_IMAGE's Python
#               is not 3.11 (e.g. INDEX_URL=https://pypi.org/simple).
#   SKIP_LB=1   do not build graceful-lb:bookworm.
#
# Re-runs are cheap: the base images are built once, the wheelhouse is reused
# and Docker's layer cache skips every unchanged step.
set -euo pipefail

cd "$(dirname "$0")/.."
BASE_IMAGE="${BASE_IMAGE:-graceful-base:bookworm}"
INDEX_URL="${INDEX_URL:-}"

log() { printf '%s\n' "build: $*" >&2; }

# BuildKit needs the buildx plugin with a current CLI; Debian's 20.10 engine
# is often paired with a CLI that has none, and the classic builder caches
# just as well for this Dockerfile.
if [[ -z ${DOCKER_BUILDKIT:-} ]]; then
    if docker buildx version >/dev/null 2>&1; then
        export DOCKER_BUILDKIT=1
    else
        export DOCKER_BUILDKIT=0
    fi
fi

if [[ $BASE_IMAGE == graceful-base:* ]]; then
    bash docker/base-image.sh "$BASE_IMAGE"
fi
bash docker/wheelhouse.sh

# name  example module
IMAGES=(
    "graceful-example-asgi asgi_service"
    "graceful-example-aiohttp aiohttp_service"
    "graceful-example-worker worker"
)

# docker build, quiet unless it fails (the classic builder also warns on stderr
# that it is deprecated; that is expected here).
quiet_build() {
    local out
    out=$(mktemp)
    if ! docker build --quiet "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        return 1
    fi
    rm -f "$out"
}

built=0
for entry in "${IMAGES[@]}"; do
    read -r name example <<<"$entry"
    if [[ ! -f examples/$example.py ]]; then
        log "skipping $name: examples/$example.py does not exist yet"
        continue
    fi
    quiet_build -f docker/example.Dockerfile \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "INDEX_URL=$INDEX_URL" \
        --build-arg "EXAMPLE=$example" \
        -t "$name" . || { log "building $name failed"; exit 1; }
    log "$name: $(docker image inspect -f '{{.Id}}' "$name" | cut -c8-19)"
    built=$((built + 1))
done

if [[ ${SKIP_LB:-0} != 1 ]]; then
    BASE_PACKAGES=ca-certificates bash docker/base-image.sh graceful-lb-base:bookworm haproxy
    # The repository is the context for one file: graceful/harness/haproxy.cfg.
    quiet_build -f docker/lb.Dockerfile -t graceful-lb:bookworm . ||
        { log "building graceful-lb:bookworm failed"; exit 1; }
    log "graceful-lb:bookworm: $(docker image inspect -f '{{.Id}}' graceful-lb:bookworm | cut -c8-19)"
fi

log "$built example image(s) ready"
