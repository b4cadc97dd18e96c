# One image per example service: examples/${EXAMPLE}.py on graceful-stop.
#
# Build from the repository root after docker/wheelhouse.sh has filled build/wheelhouse/:
#   docker build -f docker/example.Dockerfile --build-arg EXAMPLE=asgi_service \
#       --build-arg BASE_IMAGE=graceful-base:bookworm -t graceful-example-asgi .
# (docker/build.sh does all of it.)
#
# Build args:
#   BASE_IMAGE  any Debian-like image with python3 and the venv module; the default
#               needs a registry, here docker/base-image.sh makes graceful-base:bookworm.
#   EXAMPLE     module under examples/ to run (asgi_service, aiohttp_service, worker).
#   INDEX_URL   empty (default): install offline, every wheel from build/wheelhouse/
#               (built for CPython 3.11 on x86_64 Linux). Set it, e.g. to
#               https://pypi.org/simple, when BASE_IMAGE has another Python (such as
#               python:3.12-slim): the project's wheel still comes from the wheelhouse,
#               its dependencies from that index.

ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG INDEX_URL=
# The service's venv gets no pip of its own: a throwaway venv holds the pip
# that installs into it (pip --python), and only /opt/venv reaches the image.
RUN python3 -m venv /opt/pip && python3 -m venv --without-pip /opt/venv
ENV PIP="/opt/pip/bin/python -m pip --python /opt/venv/bin/python --disable-pip-version-check"
# Dependencies first, in a layer of their own: a change to the project's code
# reinstalls only the project's wheel. With an index they come in the next step.
COPY build/wheelhouse/deps/ /wheelhouse/deps/
RUN set -eu; \
    if [ -z "$INDEX_URL" ]; then \
        $PIP install --no-cache-dir --no-index --no-deps /wheelhouse/deps/*.whl; \
    fi
COPY build/wheelhouse/graceful_stop-*.whl /wheelhouse/
# Installing the wheel by its path (not by name) means an index can never
# substitute another distribution called graceful-stop.
RUN set -eu; \
    if [ -n "$INDEX_URL" ]; then source="--index-url $INDEX_URL"; else source="--no-index"; fi; \
    $PIP install --no-cache-dir $source --find-links /wheelhouse/deps \
        "$(ls /wheelhouse/graceful_stop-*.whl)[uvloop,uvicorn,aiohttp]"

FROM ${BASE_IMAGE}
# Everything that does not depend on the code or the example comes first, so
# the three images share these layers and a code change does not redo them.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data/jobs \
    && chown -R app:app /data
# The admin server stays on loopback, where the HEALTHCHECK probes it: set
# ADMIN_HOST=0.0.0.0 when something outside the container must reach it (the kubelet,
# a load balancer's checks, the harness: deploy/kubernetes/ and the harness do).
ENV PATH=/opt/venv/bin:$PATH \
    PORT=8080 \
    ADMIN_PORT=9090 \
    ADMIN_HOST=127.0.0.1 \
    GRACEFUL_STOP_TIMEOUT=10 \
    STATE_PATH=/data/state.sqlite \
    JOBS_DIR=/data/jobs \
    PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/graceful", "probe", "livez"]
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY examples/ /app/examples/
ARG EXAMPLE=asgi_service
# Exec-form CMD cannot expand ${EXAMPLE}: point a fixed path at the chosen module.
# Python resolves the link, so the example still imports its siblings.
RUN set -eu; \
    if [ ! -f "/app/examples/${EXAMPLE}.py" ]; then \
        echo "examples/${EXAMPLE}.py does not exist" >&2; exit 1; \
    fi; \
    ln -s "examples/${EXAMPLE}.py" /app/service.py
USER 10001:10001
# Exec form, no shell and no init: Python is PID 1 and receives SIGTERM itself.
CMD ["/opt/venv/bin/python", "/app/service.py"]
