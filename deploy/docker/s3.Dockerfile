# syntax=docker/dockerfile:1
# A small S3-compatible store for one box: s3s-fs (crates.io) serving /data,
# each top-level folder a bucket. For a studio, any S3 service (MinIO, Ceph,
# a cloud bucket) does the same job: point STYLEFARM_STORE and AWS_* at it.
ARG BASE=docker.io/library/debian:bookworm-slim
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BINARIES=build
ARG S3S_FS_VERSION=0.14.1

FROM ${RUST_IMAGE} AS build
ARG S3S_FS_VERSION
RUN cargo install --locked --root /out s3s-fs --version "${S3S_FS_VERSION}" --features binary

FROM ${BASE} AS prebuilt
COPY bin/s3s-fs /out/bin/

FROM ${BINARIES} AS binaries

FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="stylefarm-s3" \
      org.opencontainers.image.description="s3s-fs: an S3-compatible object store on a folder, for stylefarm on one box" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN echo 'stylefarm:x:10001:10001:stylefarm:/data:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'stylefarm:x:10001:' >> /etc/group \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=binaries /out/bin/s3s-fs /usr/local/bin/s3s-fs
USER 10001:10001
VOLUME ["/data"]
EXPOSE 9000
ENV S3_BUCKETS=renders S3_PORT=9000
# the buckets are folders: make them, then serve
ENTRYPOINT ["/bin/sh", "-c", "for b in $S3_BUCKETS; do mkdir -p \"/data/$b\"; done; exec s3s-fs --host 0.0.0.0 --port \"$S3_PORT\" --access-key \"$S3_ACCESS_KEY\" --secret-key \"$S3_SECRET_KEY\" /data"]
