# graceful-lb:bookworm: HAProxy from Debian 12 for the load-balancer scenarios,
# laid out like the official haproxy image (which users with a registry can use
# instead: same config path, same stop signal, not root).
#
#   docker/base-image.sh graceful-lb-base:bookworm haproxy
#   docker build -f docker/lb.Dockerfile -t graceful-lb:bookworm .
# (docker/build.sh does both.) The context is the repository root, for the one
# file the image takes from it: graceful/harness/haproxy.cfg, the config the
# harness ships, as the default config. The harness bind-mounts the same file
# over it; mount (or COPY, in a derived image) another one to change it. Bind
# ports above 1024, the process is not root.

ARG BASE_IMAGE=graceful-lb-base:bookworm
FROM ${BASE_IMAGE}
# Debian's package made the haproxy user and /var/lib/haproxy; give it a place
# for sockets and pid files it can write to.
RUN mkdir -p /usr/local/etc/haproxy /run/haproxy \
    && chown haproxy:haproxy /run/haproxy /var/lib/haproxy \
    && haproxy -v
COPY graceful/harness/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
WORKDIR /var/lib/haproxy
USER haproxy
# SIGUSR1 is HAProxy's soft stop: stop listening, let sessions finish.
STOPSIGNAL SIGUSR1
# Master-worker mode in the foreground: the master is PID 1 and passes
# signals on to the workers.
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
