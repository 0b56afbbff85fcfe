# syntax=docker/dockerfile:1
# The worker with libtorch 2.11 (the CUDA 13 build from PyPI): runs on NVIDIA
# GPUs through the NVIDIA container runtime (NVIDIA_VISIBLE_DEVICES) and on the
# CPU. No Python at run time: only torch's and CUDA's shared libraries, found
# through the binary's rpath ($ORIGIN/../site-packages/torch/lib). ~5 GB.
#
#   docker build -f deploy/docker/worker.Dockerfile -t stylefarm-worker:0.1.0 .
#   docker run --gpus all -e STYLEFARM_COORDINATOR=http://coordinator:50051 stylefarm-worker:0.1.0
#
# BINARIES=build (default) compiles in a Rust stage against the same torch;
# BINARIES=prebuilt takes bin/stylefarm-worker, bin/ffmpeg and site-packages/{torch/lib,nvidia}
# from the build context (how the tests here build it).
ARG BASE=docker.io/library/debian:bookworm-slim
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG BINARIES=build
ARG TORCH_VERSION=2.11.0
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG IMAGEIO_FFMPEG_VERSION=0.8.1

# ffmpeg: the static build in the PyPI wheel imageio-ffmpeg (one binary; probes,
# decodes and encodes clips for video batches)
FROM ${PYTHON_IMAGE} AS ffmpeg
ARG IMAGEIO_FFMPEG_VERSION
RUN pip download --no-cache-dir --no-deps --only-binary=:all: -d /tmp/wheel "imageio-ffmpeg==${IMAGEIO_FFMPEG_VERSION}" \
 && python -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('/tmp/wheel/*.whl')[0]); m = [n for n in z.namelist() if n.startswith('imageio_ffmpeg/binaries/ffmpeg-')][0]; open('/ffmpeg', 'wb').write(z.read(m))" \
 && chmod 755 /ffmpeg && /ffmpeg -hide_banner -version | head -1

# torch's libraries from the PyPI wheel (and its nvidia-* dependencies)
FROM ${RUST_IMAGE} AS build
ARG TORCH_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
RUN pip3 install --break-system-packages --no-cache-dir --target /out/site-packages "torch==${TORCH_VERSION}"
WORKDIR /src
COPY . .
RUN ln -sfn /out/site-packages/torch .libtorch \
 && cargo build --release --locked -p stylefarm-worker \
 && mkdir -p /out/bin && cp target/release/stylefarm-worker /out/bin/ \
 && find /out/site-packages -mindepth 1 -maxdepth 1 ! -name torch ! -name nvidia -exec rm -rf {} + \
 && find /out/site-packages/torch -mindepth 1 -maxdepth 1 ! -name lib -exec rm -rf {} +
COPY --from=ffmpeg /ffmpeg /out/bin/ffmpeg

FROM ${BASE} AS prebuilt
COPY bin/stylefarm-worker bin/ffmpeg /out/bin/
COPY site-packages/ /out/site-packages/

FROM ${BINARIES} AS binaries

FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG TORCH_VERSION
LABEL org.opencontainers.image.title="stylefarm-worker" \
      org.opencontainers.image.description="stylefarm worker: neural style transfer (VGG-16 + L-BFGS on libtorch ${TORCH_VERSION}, CUDA 13) for a stylefarm coordinator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/stylefarm/stylefarm"
RUN echo 'stylefarm:x:10001:10001:stylefarm:/var/lib/stylefarm:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'stylefarm:x:10001:' >> /etc/group \
 && mkdir -p /var/lib/stylefarm /var/cache/stylefarm && chown 10001:10001 /var/lib/stylefarm /var/cache/stylefarm
COPY --from=binaries /out/site-packages/ /opt/stylefarm/site-packages/
COPY --from=binaries /out/bin/stylefarm-worker /opt/stylefarm/bin/stylefarm-worker
# ffmpeg decodes clips and encodes stylised ones (video batches)
COPY --from=binaries /out/bin/ffmpeg /usr/local/bin/ffmpeg
RUN ln -s /opt/stylefarm/bin/stylefarm-worker /usr/local/bin/stylefarm-worker
# the NVIDIA container runtime mounts the driver for these; CUDA numbers GPUs as
# nvidia-smi does (bus order), so each cuda:N's memory figure is certain
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    STYLEFARM_CACHE=/var/cache/stylefarm \
    STYLEFARM_WORK_DIR=/var/lib/stylefarm \
    STYLEFARM_HEALTH_LISTEN=0.0.0.0:50052 \
    STYLEFARM_DEVICES=auto
USER 10001:10001
WORKDIR /var/lib/stylefarm
VOLUME ["/var/lib/stylefarm", "/var/cache/stylefarm"]
EXPOSE 50052 9465
# SIGTERM drains: the running job finishes (or is handed back after --drain-timeout-s)
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["stylefarm-worker", "health"]
# flags given to the container (compose `command:`, Kubernetes `args:`) add to
# or override the environment above
ENTRYPOINT ["stylefarm-worker"]
