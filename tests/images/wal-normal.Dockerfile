# Broken for a power cut only: commits with SQLite's synchronous=NORMAL in WAL mode, so a
# commit is durable at the next checkpoint, not when it is acknowledged (SIGKILL loses nothing).
ARG BASE_IMAGE=graceful-base:bookworm
FROM ${BASE_IMAGE}
COPY app.py /app/app.py
ENV APP_MODE=wal-normal PORT=8080 ADMIN_PORT=9090 STATE_PATH=/data/state.sqlite PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8080 9090
CMD ["python3", "/app/app.py"]
