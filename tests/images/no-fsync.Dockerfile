# Broken for a power cut only: acknowledges a write once write() returned, without fsync (the
# page cache keeps it across SIGKILL, a power cut does not).
ARG BASE_IMAGE=graceful-base:bookworm
FROM ${BASE_IMAGE}
COPY app.py /app/app.py
ENV APP_MODE=no-fsync PORT=8080 ADMIN_PORT=9090 STATE_PATH=/data/state.sqlite PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8080 9090
CMD ["python3", "/app/app.py"]
