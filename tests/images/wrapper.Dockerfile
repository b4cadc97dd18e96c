# Broken: a wrapper script that starts the server without `exec`, so /bin/sh stays PID 1.
ARG BASE_IMAGE=graceful-base:bookworm
FROM ${BASE_IMAGE}
COPY app.py /app/app.py
COPY run.sh /app/run.sh
ENV APP_MODE=good PORT=8080 ADMIN_PORT=9090 STATE_PATH=/data/state.sqlite PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8080 9090
ENTRYPOINT ["/app/run.sh"]
