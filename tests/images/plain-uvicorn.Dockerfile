# A FastAPI-style app on plain uvicorn (no graceful), its SSE stream endless: docker stop ends
# in SIGKILL while a client listens. Built from a context holding the project's wheelhouse.
ARG BASE_IMAGE=graceful-base:bookworm
FROM ${BASE_IMAGE}
COPY wheelhouse/deps/ /wheelhouse/deps/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-cache-dir --no-index \
        --find-links /wheelhouse/deps uvicorn \
    && rm -rf /wheelhouse
COPY plain_uvicorn_app.py /app/plain_uvicorn_app.py
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
# Exec form: uvicorn is PID 1 and handles SIGTERM (then waits for every open response).
CMD ["/opt/venv/bin/uvicorn", "plain_uvicorn_app:app", "--app-dir", "/app", "--host", "0.0.0.0", "--port", "8080"]
