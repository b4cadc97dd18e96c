# Broken: after the stop begins it keeps its listener open and never answers what it accepts.
ARG BASE_IMAGE=graceful-base:bookworm
FROM ${BASE_IMAGE}
COPY app.py /app/app.py
ENV APP_MODE=abandon PORT=8080 ADMIN_PORT=9090 STATE_PATH=/data/state.sqlite PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8080 9090
CMD ["python3", "/app/app.py"]
