#!/usr/bin/env bash
# Build a local Debian 12 base image without an image registry:
# debootstrap a minimal root file system and `docker import` it.
#
#   docker/base-image.sh [TAG] [EXTRA_DEBIAN_PACKAGES...]
#
# TAG defaults to graceful-base:bookworm. Extra packages are added to the
# debootstrap --include list (e.g. `docker/base-image.sh graceful-lb-base:bookworm haproxy`);
# BASE_PACKAGES (default python3,python3-venv,ca-certificates) is the rest of
# that list: an image that needs no Python sets it to ca-certificates.
# The Debian mirror is read from this machine's apt sources. Nothing is done
# when TAG already exists, so the script is cheap to call before every build.
set -euo pipefail

TAG="${1:-graceful-base:bookworm}"
shift || true
EXTRAS=("$@")
SUITE=bookworm

log() { printf '%s\n' "base-image: $*" >&2; }

if docker image inspect "$TAG" >/dev/null 2>&1; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    log "building $TAG needs root (debootstrap); run as root or set BASE_IMAGE=python:3.12-slim"
    exit 1
fi

# First deb URI for the plain Debian archive (not -security/-updates),
# from deb822 .sources files first, then one-line .list files.
find_mirror() {
    local f uri
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        uri=$(awk '
            BEGIN { IGNORECASE = 1 }
            /^[[:space:]]*$/ { if (deb && suite && uri) { print uri; exit } deb = suite = 0; uri = ""; next }
            /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "'"$SUITE"'") suite = 1 }
            END { if (deb && suite && uri) print uri }
        ' "$f" | head -n1)
        if [[ -n $uri ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # deb [options] URI SUITE COMPONENTS...
        uri=$(sed -E 's/\[[^]]*\]//' "$f" |
            awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2; exit }')
        if [[ -n $uri ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    return 1
}

if ! MIRROR=$(find_mirror); then
    log "no '$SUITE' deb source found in /etc/apt/sources.list{,.d/*}; cannot pick a mirror"
    exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

INCLUDE="${BASE_PACKAGES:-python3,python3-venv,ca-certificates}"
for pkg in "${EXTRAS[@]}"; do
    INCLUDE+=",$pkg"
done

ROOT=$(mktemp -d /var/tmp/graceful-rootfs.XXXXXX)
cleanup() { rm -rf --one-file-system "$ROOT"; }
trap cleanup EXIT

log "debootstrap $SUITE from $MIRROR (include: $INCLUDE) -> $TAG"
start=$(date +%s)
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT" "$MIRROR" \
    >"$ROOT.log" 2>&1 || {
    tail -n 30 "$ROOT.log" >&2
    log "debootstrap failed (full log: $ROOT.log)"
    exit 1
}
rm -f "$ROOT.log"

# Size: nothing below is needed at run time in a container.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* "$ROOT"/var/cache/debconf/*-old \
    "$ROOT"/var/log/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
    "$ROOT"/usr/share/locale/* "$ROOT"/usr/share/lintian/* "$ROOT"/tmp/* "$ROOT"/var/tmp/*
find "$ROOT"/usr/lib/python3* -depth -name __pycache__ -type d -exec rm -rf {} + 2>/dev/null || true
# A container gets its own resolv.conf and hostname from the engine.
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/hostname"
# Keep the machine's mirror so `apt-get update` works in derived images.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOT/etc/apt/sources.list"

tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE ($INCLUDE)" \
    - "$TAG" >/dev/null

log "built $TAG in $(($(date +%s) - start)) s, $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
