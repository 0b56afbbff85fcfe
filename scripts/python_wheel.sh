#!/usr/bin/env bash
# `make wheel`: the Python client as target/dist/stylefarm-VERSION-py3-none-any.whl.
# The in-tree backend (python/build_support) generates the gRPC stubs from
# proto/ and takes the version from Cargo.toml; pip fetches grpcio-tools for
# the build in an isolated environment.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/dist}
mkdir -p "$OUT"
rm -f "$OUT"/stylefarm-*-py3-none-any.whl
python3 -m pip wheel --no-deps --quiet --disable-pip-version-check -w "$OUT" ./python
ls "$OUT"/stylefarm-*-py3-none-any.whl
