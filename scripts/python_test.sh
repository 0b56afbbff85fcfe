#!/usr/bin/env bash
# The Python client's tests as CI runs them (part of `make test`): the wheel
# built from proto/ (make wheel), installed into a fresh virtual environment
# as a user would install it, then pytest in that environment against the
# project's own coordinator and worker binaries (CPU; built by `make setup`),
# including the examples/ run from there.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
bash scripts/python_wheel.sh
VENV=$(realpath -m "$TARGET/python-venv")
rm -rf "$VENV"
python3 -m venv "$VENV"
WHEEL=$(ls "$TARGET"/dist/stylefarm-*-py3-none-any.whl)
# the package needs only grpcio and protobuf; the rest is for the tests and examples
"$VENV/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "$WHEEL[progress]" \
  "pytest>=8,<10" "cryptography>=42" "pillow>=10" "matplotlib>=3.8" "mypy>=1.10"
for bin in stylefarm-coordinator stylefarm-worker stylefarm; do
  [ -x "$TARGET/debug/$bin" ] || { echo "python_test: $TARGET/debug/$bin is missing (run make setup)" >&2; exit 1; }
done
cd "$TARGET"  # not the repo root: the tests import the installed package, never python/stylefarm
STYLEFARM_BIN="$PWD/debug" STYLEFARM_SAMPLES="${STYLEFARM_SAMPLES:-$OLDPWD/.samples}" \
  "$VENV/bin/python" -m pytest -p no:cacheprovider -q "$OLDPWD/python/tests" "$@"
