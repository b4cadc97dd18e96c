# Broken: at a stop, answers every work request in flight 200 at once without doing the work.
ARG BASE_IMAGE=graceful-base:bookworm
FROM ${BASE_IMAGE}
COPY app.py /app/app.py
ENV APP_MODE=fake-done PORT=8080 ADMIN_PORT=9090 STATE_PATH=/data/state.sqlite PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8080 9090
CMD ["python3", "/app/app.py"]
