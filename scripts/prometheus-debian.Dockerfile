# A stand-in for docker.io/prom/prometheus in the compose test here (no image
# registry is reachable): Debian's prometheus binary (the host's, from the
# `prometheus` package setup installs) on the Debian minbase, laid out as the
# upstream image is (entrypoint, /prometheus owned by nobody), so
# deploy/compose.yaml runs it unchanged. Built by scripts/compose_test.sh.
ARG BASE=localhost/stylefarm-base:bookworm
FROM ${BASE}
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
