#!/bin/sh
# A wrapper that does not `exec`: the shell stays PID 1 and never forwards SIGTERM.
echo "starting the service"
python3 /app/app.py
