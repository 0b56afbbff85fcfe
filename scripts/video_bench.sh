#!/usr/bin/env bash
# `make bench-video`: temporal consistency of the farm's video path against the
# same frames stylised each on its own, measured with OpenCV's Farneback flow
# (independent of the engine's), for a pan, a zoom and a rotation at 96, 256
# and 512 px with both presets (scripts/video_consistency.py says how).
# OpenCV lives in a venv of its own (the tests do not need it).
#   WORKER (target/release/stylefarm-worker); arguments go to the script,
#   e.g. --sizes 96 --presets gatys --motions pan
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}"
venv="$cache/venv-bench"
requirements="opencv-python-headless<5 numpy<3 pillow<12"
if [[ "$(cat "$venv/.stylefarm-ok" 2>/dev/null)" != "$requirements" ]]; then
  echo "bench-video: installing $requirements into $venv" >&2
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check $requirements
  printf '%s' "$requirements" > "$venv/.stylefarm-ok"
fi
exec "$venv/bin/python" scripts/video_consistency.py --worker "${WORKER:-target/release/stylefarm-worker}" "$@"
