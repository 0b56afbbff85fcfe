#!/usr/bin/env bash
# How busy the worker keeps its device: a stream of small jobs (engine time
# short, so per-job work around the render dominates as it will on a GPU)
# with 1 and 2 local workers, each run three ways side by side:
#   off       `--pipeline off`: one step at a time (the reference)
#   on        `--pipeline on` (the default): lease/fetch/decode ahead, encode/upload behind
#   on, lean  `--pipeline on --previews off`: no snapshots, no animation
# Busy = the device's engine time (the `engine` stage of each job's metadata)
# over its wall time (a worker's first lease to its last committed result). JOBS (24), SIZE (64), ITERATIONS (20),
# PRESET (keras), WORKERS ("1 2"), ROUNDS (1; medians over them), THREADS (torch threads per worker; the
# cores split between the workers) override; KEEP=1 keeps the runs' files; on a
# GPU machine BIN (the binaries' folder), DEVICES (auto), SAMPLES, PYTHON too.
#                                                          make bench-pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BIN:-./target/debug}
SAMPLES=${SAMPLES:-.samples}
JOBS=${JOBS:-24}
SIZE=${SIZE:-64}
ITERATIONS=${ITERATIONS:-20}
PRESET=${PRESET:-keras}
PY=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT
contents=()
for _ in $(seq $(( JOBS / 2 ))); do contents+=("$SAMPLES/chelsea.png"); done

# run WORKERS NAME ROUND WORKER-FLAGS...
run() {
  local workers=$1 name=$2 round=$3; shift 3
  local dir="$WORK/$name-w$workers-r$round" started=()
  mkdir -p "$dir"
  "$B/stylefarm-coordinator" --listen 127.0.0.1:0 --data-dir "$dir/data" --heartbeat-interval-ms 1000 --log warn > "$dir/addr" 2> "$dir/coordinator.log" &
  local coordinator=$!
  pids+=($coordinator)
  for _ in $(seq 100); do grep -q "listening on" "$dir/addr" 2>/dev/null && break; sleep 0.1; done
  export STYLEFARM_COORDINATOR="http://$(sed -n 's/^listening on //p' "$dir/addr")"
  local threads=${THREADS:-$(( $(nproc) / workers ))}; [ "$threads" -ge 1 ] || threads=1
  for i in $(seq "$workers"); do
    STYLEFARM_LOG=warn "$B/stylefarm-worker" --coordinator "$STYLEFARM_COORDINATOR" --devices "${DEVICES:-cpu}" --torch-threads "$threads" \
      --name "bench-$i" --work-dir "$dir/worker-$i" "$@" 2> "$dir/worker-$i.log" &
    started+=($!)
    pids+=($!)
  done
  # workers registered and their weights loaded by a first batch, not counted
  local warm=()
  for _ in $(seq $(( workers * 2 ))); do warm+=("$SAMPLES/coffee.png"); done
  "$B/stylefarm" watch "$("$B/stylefarm" submit --content "${warm[@]}" --style "$SAMPLES/gravel.png" \
    --size "$SIZE" --iterations 2 --preset "$PRESET" 2>/dev/null)" > /dev/null 2>&1
  if [ "$workers" -gt 1 ]; then sleep 1; fi
  local batch
  batch=$("$B/stylefarm" submit --content "${contents[@]}" --style "$SAMPLES/retina.jpg" "$SAMPLES/gravel.png" \
    --size "$SIZE" --iterations "$ITERATIONS" --preset "$PRESET" 2>/dev/null)
  "$B/stylefarm" watch "$batch" > /dev/null 2>&1 || { echo "batch $batch failed (logs in $dir)"; trap - EXIT; exit 1; }
  "$B/stylefarm" --json status "$batch" > "$dir/status.json"
  echo "$workers $name $round $dir" >> "$WORK/runs"
  kill -TERM "${started[@]}" "$coordinator" 2>/dev/null || true
  wait "${started[@]}" "$coordinator" 2>/dev/null || true
}

# the three ways interleaved, ROUNDS times: this machine's drift hits them alike
for round in $(seq "${ROUNDS:-1}"); do
  for workers in ${WORKERS:-1 2}; do
    run "$workers" off "$round" --pipeline off
    run "$workers" on "$round" --pipeline on
    run "$workers" lean "$round" --pipeline on --previews off
  done
done

$PY - "$WORK/runs" "$JOBS" "$SIZE" "$ITERATIONS" "$PRESET" "${THREADS:-$(nproc) / workers}" "${DEVICES:-cpu}" <<'PY'
import json, statistics, sys
from pathlib import Path
runs = [line.split() for line in open(sys.argv[1])]
jobs, size, its, preset = sys.argv[2:6]
threads = sys.argv[6]
print(f"pipeline: {jobs} jobs ({preset}, {size} px, {its} iterations), devices {sys.argv[7]}, {threads} torch threads per worker")
print(f"{'workers':>7} {'mode':<9} {'wall s':>7} {'jobs/hour':>9} {'vs off':>6} {'vs lean':>7} {'busy':>7} {'engine ms/job':>13} {'wait':>6} {'encode':>7} {'ms/job':<0}")
names = {"off": "off", "on": "on", "lean": "on, lean"}
table = {}
for workers, name, round_, dir_ in runs:
    data = json.load(open(Path(dir_) / "status.json"))
    js = data["jobs"]
    wall = (max(j["finished_at_ms"] for j in js) - min(j["started_at_ms"] for j in js)) / 1e3
    per_hour = len(js) / wall * 3600
    by_worker = {}
    for j in js:
        by_worker.setdefault(j["worker_id"], []).append(j)
    # each device: its engine time over its own span (first lease to last committed result)
    stages, engine = {}, {}
    for j in js:
        meta = json.load(open(Path(dir_) / "data" / "objects" / j["result"]["prefix"] / "metadata.json"))
        for k, v in meta["worker"]["stage_ms"].items():
            stages.setdefault(k, []).append(v)
        engine[j["id"]] = meta["worker"]["stage_ms"]["engine"]
    busy = statistics.mean(
        sum(engine[j["id"]] for j in w) / (max(j["finished_at_ms"] for j in w) - min(j["started_at_ms"] for j in w))
        for w in by_worker.values()
    )
    table.setdefault((workers, name), []).append(dict(wall=wall, per_hour=per_hour, busy=busy,
        engine=statistics.median(stages["engine"]), wait=statistics.median(stages.get("wait_device", [0])),
        encode=statistics.median(stages.get("encode", [0]))))
rounds = len(next(iter(table.values())))
table = {key: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for key, rs in table.items()}
if rounds > 1:
    print(f"medians of {rounds} rounds")
for (workers, name), r in table.items():
    ref, lean = table[(workers, "off")], table[(workers, "lean")]
    print(f"{workers:>7} {names[name]:<9} {r['wall']:>7.1f} {r['per_hour']:>9.0f} {r['per_hour'] / ref['per_hour']:>6.2f} "
          f"{r['per_hour'] / lean['per_hour']:>7.3f} {r['busy']:>7.1%} {r['engine']:>13.0f} {r['wait']:>6.0f} {r['encode']:>7.0f}")
PY
