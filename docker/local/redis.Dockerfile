# Redis for running the chart's pods on this machine: the chart's default image
# (docker.io/library/redis) cannot be pulled where no registry is reachable, so this is
# Debian's redis-server on the same local base. The chart runs it as it runs its own
# image: `redis-server /etc/redis/redis.conf --requirepass …` as uid 10001, read-only.
ARG BASE_IMAGE=localhost/ksc-python-base:bookworm
FROM ${BASE_IMAGE}
# /usr/local/bin: where the official image has them, which the chart's command names.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/redis-server /usr/bin/redis-cli /usr/local/bin/
USER 10001:10001
EXPOSE 6379
CMD ["redis-server"]
