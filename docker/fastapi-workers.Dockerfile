ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 app && mkdir /data && chown app /data
WORKDIR /app
# graceful-stop is not on PyPI: copy in the wheel built from a clone (`pip wheel . -w dist --no-deps`);
# with --build-arg PIP_NO_INDEX=1 everything installs from dist/ alone (put every wheel there)
COPY dist/ /tmp/dist/
ARG PIP_NO_INDEX
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --find-links /tmp/dist \
        'graceful-stop[uvloop,uvicorn]' fastapi \
    && rm -rf /tmp/dist
ENV PATH=/opt/venv/bin:$PATH STATE_PATH=/data/state.sqlite ADMIN_PORT=9090
COPY app.py .
USER app
VOLUME /data
EXPOSE 8000
HEALTHCHECK CMD ["graceful", "probe", "livez"]
CMD ["graceful", "serve", "app:app", "--workers", "4"]
