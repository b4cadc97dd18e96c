# graceful on uvicorn with an SSE stream (STREAM_MODE=await ends it at the stop, ignore does
# not). Built from a context holding the project's wheelhouse (docker/wheelhouse.sh).
ARG BASE_IMAGE=graceful-base:bookworm
FROM ${BASE_IMAGE}
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-cache-dir --no-index \
        --find-links /wheelhouse/deps "$(ls /wheelhouse/graceful_stop-*.whl)[uvicorn]" \
    && rm -rf /wheelhouse
COPY graceful_stream_app.py /app/graceful_stream_app.py
ENV PYTHONUNBUFFERED=1 PORT=8080 ADMIN_PORT=9090 STREAM_MODE=await
EXPOSE 8080 9090
CMD ["/opt/venv/bin/python", "/app/graceful_stream_app.py"]
