#!/usr/bin/env bash
# Builds the container images from deploy/docker/*.Dockerfile with podman, on
# a machine that reaches no image registry: the base is a Debian bookworm
# minbase made by mmdebstrap from Debian's packages and `podman import`-ed, and
# the binaries are this checkout's (built on the host: BINARIES=prebuilt).
#
#   bash scripts/images.sh [coordinator] [s3] [worker]     (default: coordinator s3)
#
# Installs podman, runc, catatonit (kube play's pause image) and mmdebstrap (Debian packages) when missing, and
# sets `default_ulimits = []` in podman's containers.conf (needed in this
# sandbox). Images: localhost/stylefarm-{coordinator,s3,worker}:VERSION.
# Env: PROFILE=debug|release (binaries; default debug, what `make test` built),
#      IMAGES_PREBUILT=1 (do not run cargo build first),
#      CARGO_TARGET_DIR, STYLEFARM_CACHE (where the base tarball is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PROFILE=${PROFILE:-debug}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CACHE=${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}
BASE_IMAGE=localhost/stylefarm-base:bookworm
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(coordinator s3)
log() { printf 'images: %s\n' "$*" >&2; }

# --- podman, runc, mmdebstrap --------------------------------------------------
need=()
for tool in podman runc mmdebstrap catatonit; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends podman runc mmdebstrap catatonit uidmap fuse-overlayfs slirp4netns >/dev/null
fi
conf=/etc/containers/containers.conf
if ! grep -qs '^default_ulimits *= *\[\]' "$conf"; then
  log "setting default_ulimits = [] in $conf"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO mkdir -p /etc/containers
  if grep -qs '^\[containers\]' "$conf"; then
    $SUDO sed -i 's/^\[containers\]/[containers]\ndefault_ulimits = []/' "$conf"
  else
    printf '[containers]\ndefault_ulimits = []\n' | $SUDO tee -a "$conf" >/dev/null
  fi
fi

# --- the base image: Debian bookworm minbase -------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
  tarball="$CACHE/images/debian-bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    log "mmdebstrap --variant=minbase bookworm (one-time, ~100 MB)"
    mkdir -p "$(dirname "$tarball")"
    # mmdebstrap picks the output format from the name: keep .tar at the end
    mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "${tarball%.tar}.partial.tar"
    mv "${tarball%.tar}.partial.tar" "$tarball"
  fi
  log "podman import $tarball as $BASE_IMAGE"
  podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
fi

# --- images ----------------------------------------------------------------------
# this checkout's binaries, built the way `make setup` builds them (a no-op after it);
# IMAGES_PREBUILT=1 takes target/$PROFILE as it is (make test, right after the tests built it)
if [ -n "${IMAGES_PREBUILT:-}" ]; then
  :
elif [ "$PROFILE" = release ]; then
  cargo build --release -p stylefarm-coordinator -p stylefarm-client -p stylefarm-worker
else
  cargo build --workspace --all-targets
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
build() { # name, dockerfile
  log "building localhost/stylefarm-$1:$VERSION"
  podman build --quiet --format docker --network host --build-arg BASE="$BASE_IMAGE" --build-arg BINARIES=prebuilt \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -f "$ROOT/deploy/docker/$2" -t "localhost/stylefarm-$1:$VERSION" "$context" >/dev/null
}
# the static ffmpeg `make setup` put in the cache (PyPI wheel imageio-ffmpeg): probes, decodes, encodes clips
copy_ffmpeg() {
  [ -x "$CACHE/bin/ffmpeg" ] || { echo "images: $CACHE/bin/ffmpeg is missing; run make setup" >&2; exit 1; }
  cp "$CACHE/bin/ffmpeg" "$context/bin/"
}
for image in "${images[@]}"; do
  rm -rf "${context:?}"/*
  mkdir -p "$context/bin"
  case "$image" in
    coordinator)
      cp "$TARGET/$PROFILE/stylefarm-coordinator" "$TARGET/$PROFILE/stylefarm" "$context/bin/"
      copy_ffmpeg
      build coordinator coordinator.Dockerfile ;;
    s3)
      s3s="$CACHE/bin/s3s-fs"
      if [ ! -x "$s3s" ]; then
        log "cargo install s3s-fs 0.14.1 (one-time)"
        cargo install --quiet --locked --root "$CACHE" s3s-fs --version 0.14.1 --features binary
      fi
      cp "$s3s" "$context/bin/"
      build s3 s3.Dockerfile ;;
    worker)
      cp "$TARGET/$PROFILE/stylefarm-worker" "$context/bin/"
      copy_ffmpeg
      # torch's and CUDA's shared libraries from the venv `make setup` made (no Python needed at run time)
      site=$(readlink -f "$ROOT/.libtorch")/..
      mkdir -p "$context/site-packages/torch"
      cp -a "$(readlink -f "$site")/torch/lib" "$context/site-packages/torch/lib"
      [ -d "$site/nvidia" ] && cp -a "$(readlink -f "$site")/nvidia" "$context/site-packages/nvidia"
      build worker worker.Dockerfile ;;
    *) echo "unknown image $image (coordinator, s3, worker)" >&2; exit 2 ;;
  esac
done
podman image prune -f >/dev/null   # the previous builds' layers
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep stylefarm- >&2 || true
