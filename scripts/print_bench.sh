#!/usr/bin/env bash
# A print across the farm on this machine: the same SIZE px job rendered
#   1. whole, on one worker;
#   2. in tiles of at most TILE px, on one worker;
#   3. in the same tiles, on two workers,
# side by side, each worker given ONE core (one torch thread, as a worker on a
# GPU machine owns one device), so 3 against 2 is how the farm spreads a print
# over two devices and 2 against 1 is what tiling costs on one.
#   SIZE (2048), TILE (600), ITERATIONS (4), PRESET (keras) override.   make bench-print
set -euo pipefail
cd "$(dirname "$0")/.."
B=./target/debug
SIZE=${SIZE:-2048}
TILE=${TILE:-600}
ITERATIONS=${ITERATIONS:-4}
PRESET=${PRESET:-keras}
PY=.venv/bin/python
WORK=$(mktemp -d)
pids=()
. scripts/local_farm.sh
trap 'farm_down; rm -rf "$WORK"' EXIT

# run NAME WORKERS [extra submit flags]: wall seconds of one print, start to last assembly
run() {
  local name=$1 workers=$2 dir="$WORK/$1"
  shift 2
  farm_up "$dir" "$workers" 1 print
  local start end batch
  start=$(date +%s.%N)
  batch=$("$B/stylefarm" submit --content .samples/coffee.png --style .samples/retina.jpg \
    --size "$SIZE" --iterations "$ITERATIONS" --preset "$PRESET" "$@" 2>/dev/null)
  "$B/stylefarm" watch "$batch" > /dev/null 2>&1 || { echo "print_bench: $name: batch $batch failed" >&2; exit 1; }
  end=$(date +%s.%N)
  "$B/stylefarm" --json status "$batch" > "$dir/status.json"
  echo "$name $workers $start $end $dir/status.json" >> "$WORK/runs"
  farm_down
}

run whole 1
run tiled 1 --tile-size "$TILE"
run tiled 2 --tile-size "$TILE"
$PY - "$WORK/runs" "$SIZE" "$TILE" "$ITERATIONS" "$PRESET" <<'PY'
import json, sys
runs = [line.split() for line in open(sys.argv[1])]
size, tile, its, preset = sys.argv[2:6]
print(f"print on the farm: {preset}, {size} px (automatic scales), {its} iterations, coffee x retina; one core per worker")
print(f"{'run':<6} {'workers':>7} {'jobs':>5} {'wall s':>7} {'engine s':>8} {'ratio':>6}")
walls = {}
for name, workers, start, end, status in runs:
    jobs = json.load(open(status))["jobs"]
    wall = float(end) - float(start)
    walls[(name, workers)] = wall
    engine = sum(j.get("result", {}).get("engine_ms", 0) for j in jobs) / 1e3
    ratio = walls[("whole", "1")] / wall
    print(f"{name:<6} {workers:>7} {len(jobs):>5} {wall:>7.1f} {engine:>8.1f} {ratio:>6.2f}")
print(f"two workers against one, tiled: {walls[('tiled', '1')] / walls[('tiled', '2')]:.2f}x faster")
print(f"tiled against whole, one worker: {walls[('tiled', '1')] / walls[('whole', '1')]:.2f}x the time (tiles of at most {tile} px)")
PY
