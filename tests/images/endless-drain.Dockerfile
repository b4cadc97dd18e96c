# Broken: drains without a deadline, so a request longer than the stop timeout ends in SIGKILL.
ARG BASE_IMAGE=graceful-base:bookworm
FROM ${BASE_IMAGE}
COPY app.py /app/app.py
ENV APP_MODE=endless-drain PORT=8080 ADMIN_PORT=9090 STATE_PATH=/data/state.sqlite PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8080 9090
CMD ["python3", "/app/app.py"]
