#!/usr/bin/env bash
# The release bundle as a GPU host gets it: `scripts/dist.sh` (make dist)
# builds it, its install.sh installs the worker into a temporary prefix with
# this machine's PyTorch 2.11 (the venv `make setup` made), and the installed
# worker renders a picture with nothing set: libtorch is found through the
# binary's relative rpath ($ORIGIN/../site-packages/torch/lib), not through
# LD_LIBRARY_PATH or the build tree. Prints the bundle's size.
#   PROFILE=release|debug (default release: what `make dist` ships)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
export PROFILE=${PROFILE:-release}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "dist test: FAILED: $*" >&2; exit 1; }

start=$SECONDS
DIST_DIR="$T/dist" bash scripts/dist.sh
bundle="$T/dist/stylefarm-$VERSION-linux-$(uname -m).tar.gz"
[ -s "$bundle" ] || fail "no $bundle"
echo "dist test: $(basename "$bundle"): $(du -m "$bundle" | cut -f1) MB packed, $(tar tzf "$bundle" | wc -l) files ($PROFILE, built in $((SECONDS - start)) s)"
tar tzvf "$bundle" | awk '{printf "  %6.1f MB  %s\n", $3/1048576, $6}'
tar xzf "$bundle" -C "$T"
dir="$T/stylefarm-$VERSION-linux-$(uname -m)"

# install.sh worker: binaries, units, settings into temporary dirs; torch from the host's 2.11
"$dir/install.sh" worker --prefix "$T/opt" --etc "$T/etc" --units "$T/units" --python "$ROOT/.venv/bin/python" \
  --coordinator http://127.0.0.1:1 --no-start --no-user
ls "$T/units"/stylefarm-worker.service "$T/etc/worker.env" >/dev/null || fail "units or settings not installed"

worker="$T/opt/bin/stylefarm-worker"
libtorch=$(env -u LD_LIBRARY_PATH ldd "$worker" | awk '/libtorch_cpu.so/ {print $3}')
echo "dist test: the installed worker loads libtorch from $libtorch"
case "$(readlink -f "$libtorch")" in
  "$(readlink -f "$ROOT/.venv")"/*) ;;
  *) fail "libtorch from '$libtorch', not through the installed site-packages" ;;
esac
case "$libtorch" in
  "$T/opt/"*) ;;
  *) fail "libtorch resolved outside the install prefix: '$libtorch' (the rpath is not relative)" ;;
esac
# a render with the environment emptied of anything that could point at torch
out="$T/render.png"
env -i HOME="$HOME" PATH=/usr/bin:/bin STYLEFARM_CACHE="${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}" \
  "$worker" render --content .samples/chelsea.png --style .samples/ihc.png --size 64 --iterations 5 \
  --device cpu --output "$out" >/dev/null
[ -s "$out" ] || fail "the installed worker rendered nothing"
echo "dist test: the installed worker rendered $(basename "$out") with an empty environment"
