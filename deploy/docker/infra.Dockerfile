# The stack's stores and Prometheus, from Debian's own packages on the base image
# (deploy/docker/base.sh), since no image registry is reachable:
#   docker build -f deploy/docker/infra.Dockerfile --target redis -t maas-redis deploy/docker
# (likewise postgres, prometheus). Each runs as its package's own system user.

ARG BASE_IMAGE=maas-base:latest

FROM ${BASE_IMAGE} AS apt
RUN printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
      > /etc/apt/apt.conf.d/90minimal

FROM apt AS redis
RUN apt-get update && apt-get install -y redis-server && apt-get clean && rm -rf /var/lib/apt/lists/*
USER redis
EXPOSE 6379
# Quota state is short-lived (minute windows, leases): kept in memory, not on disk.
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]

FROM apt AS postgres
RUN apt-get update && apt-get install -y postgresql-15 && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
CMD ["postgres-entrypoint"]

FROM apt AS prometheus
RUN apt-get update && apt-get install -y prometheus wget && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
EXPOSE 9090
CMD ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=0.0.0.0:9090"]
