#!/usr/bin/env bash
# Farm throughput on this machine: the same batch of small jobs with 1 and with
# 2 local workers (CPU threads split between them), side by side; and the
# share of each job's time on the farm that is not engine time (leases,
# heartbeats, input fetch, output upload, reporting: what the device waited
# for) as a fraction of engine time.
#   JOBS (8), SIZE (128), ITERATIONS (30) override.     make bench-farm
set -euo pipefail
cd "$(dirname "$0")/.."
B=./target/debug
JOBS=${JOBS:-8}
SIZE=${SIZE:-128}
ITERATIONS=${ITERATIONS:-30}
PY=.venv/bin/python
WORK=$(mktemp -d)
pids=()
. scripts/local_farm.sh
trap 'farm_down; rm -rf "$WORK"' EXIT
contents=()
for _ in $(seq $(( JOBS / 2 ))); do contents+=(.samples/chelsea.png); done

run() {
  local workers=$1 dir="$WORK/w$1"
  local threads=$(( $(nproc) / workers )); [ "$threads" -ge 1 ] || threads=1
  farm_up "$dir" "$workers" "$threads" bench
  local start end batch
  start=$(date +%s.%N)
  batch=$("$B/stylefarm" submit --content "${contents[@]}" --style .samples/retina.jpg .samples/gravel.png \
    --size "$SIZE" --iterations "$ITERATIONS" --preset keras 2>/dev/null)
  "$B/stylefarm" watch "$batch" > /dev/null 2>&1 || { echo "batch $batch failed"; exit 1; }
  end=$(date +%s.%N)
  "$B/stylefarm" --json status "$batch" > "$dir/status.json"
  echo "$workers $start $end $dir/status.json" >> "$WORK/runs"
  farm_down
}

run 1
run 2
$PY - "$WORK/runs" "$JOBS" "$SIZE" "$ITERATIONS" <<'PY'
import json, sys
runs = [line.split() for line in open(sys.argv[1])]
jobs, size, its = sys.argv[2], sys.argv[3], sys.argv[4]
print(f"farm throughput: {jobs} jobs (keras, {size} px, {its} iterations) on CPU; the cores are split between the workers")
print(f"{'workers':>7} {'wall s':>7} {'jobs/hour':>9} {'ratio':>6} {'engine s':>8} {'coordinator':>11} {'worker-side':>11} {'end-to-end':>10}")
base = None
for workers, start, end, status in runs:
    data = json.load(open(status))
    wall = float(end) - float(start)
    per_hour = len(data["jobs"]) / wall * 3600
    base = base or per_hour
    engine = sum(j["result"]["engine_ms"] for j in data["jobs"]) / 1e3
    # coordinator: from one job's committed result to the same worker's next lease
    gaps = 0.0
    by_worker = {}
    for j in data["jobs"]:
        by_worker.setdefault(j["worker_id"], []).append(j)
    for js in by_worker.values():
        js.sort(key=lambda j: j["started_at_ms"])
        # a job leased ahead (the worker's pipeline) hides the coordinator: no gap
        gaps += sum(max(0, b["started_at_ms"] - a["finished_at_ms"]) for a, b in zip(js, js[1:])) / 1e3
    coordinator = gaps / engine
    # worker-side: each worker's span (first lease to last committed result) not
    # spent in the engine: what its device waited for (fetch, decode, weights,
    # encoding, upload, reporting not overlapped with a render)
    span = sum(max(j["finished_at_ms"] for j in js) - min(j["started_at_ms"] for j in js) for js in by_worker.values()) / 1e3
    overhead = (span - engine) / engine
    # all worker time (wall x workers) not spent in the engine, incl. idle tails
    end_to_end = (wall * int(workers) - engine) / engine
    print(f"{workers:>7} {wall:>7.1f} {per_hour:>9.0f} {per_hour / base:>6.2f} {engine:>8.1f} {coordinator:>11.3%} {overhead:>11.2%} {end_to_end:>10.2%}")
PY
