# syntax=docker/dockerfile:1
# The coordinator (and the `stylefarm` client): no libtorch; a static ffmpeg probes clips.
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t stylefarm-coordinator:0.1.0 .
#
# BINARIES=build (default) compiles in a Rust stage; BINARIES=prebuilt takes
# bin/stylefarm-coordinator, bin/stylefarm and bin/ffmpeg from the build context instead
# (how the tests here build it: no Rust image can be pulled on their machine).
# BASE is any Debian bookworm (glibc 2.36) image.
ARG BASE=docker.io/library/debian:bookworm-slim
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BINARIES=build
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG IMAGEIO_FFMPEG_VERSION=0.8.1

# ffmpeg: the static build in the PyPI wheel imageio-ffmpeg (one binary; probes,
# decodes and encodes clips for video batches)
FROM ${PYTHON_IMAGE} AS ffmpeg
ARG IMAGEIO_FFMPEG_VERSION
RUN pip download --no-cache-dir --no-deps --only-binary=:all: -d /tmp/wheel "imageio-ffmpeg==${IMAGEIO_FFMPEG_VERSION}" \
 && python -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('/tmp/wheel/*.whl')[0]); m = [n for n in z.namelist() if n.startswith('imageio_ffmpeg/binaries/ffmpeg-')][0]; open('/ffmpeg', 'wb').write(z.read(m))" \
 && chmod 755 /ffmpeg && /ffmpeg -hide_banner -version | head -1

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p stylefarm-coordinator -p stylefarm-client \
 && mkdir -p /out/bin \
 && cp target/release/stylefarm-coordinator target/release/stylefarm /out/bin/
COPY --from=ffmpeg /ffmpeg /out/bin/ffmpeg

FROM ${BASE} AS prebuilt
COPY bin/stylefarm-coordinator bin/stylefarm bin/ffmpeg /out/bin/

FROM ${BINARIES} AS binaries

FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="stylefarm-coordinator" \
      org.opencontainers.image.description="stylefarm coordinator: batches of neural style transfer jobs in, leases out to GPU workers, results kept" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/stylefarm/stylefarm"
# a fixed non-root user (no passwd package needed)
RUN echo 'stylefarm:x:10001:10001:stylefarm:/var/lib/stylefarm:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'stylefarm:x:10001:' >> /etc/group \
 && mkdir -p /var/lib/stylefarm /etc/stylefarm/bootstrap /etc/stylefarm/worker \
 && chown 10001:10001 /var/lib/stylefarm /etc/stylefarm/bootstrap /etc/stylefarm/worker
# the binaries and ffmpeg (the coordinator probes every submitted clip with it)
COPY --from=binaries /out/bin/ /usr/local/bin/
ENV STYLEFARM_DATA_DIR=/var/lib/stylefarm \
    STYLEFARM_LISTEN=0.0.0.0:50051
USER 10001:10001
WORKDIR /var/lib/stylefarm
VOLUME ["/var/lib/stylefarm"]
EXPOSE 50051 9464 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["stylefarm-coordinator", "health"]
ENTRYPOINT ["stylefarm-coordinator"]
