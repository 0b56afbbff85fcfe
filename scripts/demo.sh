#!/usr/bin/env bash
# `make demo`: the whole farm on this machine. Starts a coordinator (SQLite +
# file:// store in ./stylefarm-data) and one local worker, submits the sample
# photos x sample styles, shows live progress, fetches every output into
# out/demo/, prints where everything is, and stops both processes cleanly.
#   DEMO_SIZE, DEMO_ITERATIONS, DEMO_WORKERS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
B=./target/debug
SIZE=${DEMO_SIZE:-256}
ITERATIONS=${DEMO_ITERATIONS:-60}
# gatys from the content image: the photo stays recognisable and takes the style's
# texture within 60 iterations (the keras recipe at this budget leaves abstract blobs)
PRESET=${DEMO_PRESET:-gatys}
WORKERS=${DEMO_WORKERS:-1}
DATA=./stylefarm-data
mkdir -p "$DATA" out
LOG=out/demo-logs
mkdir -p "$LOG"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# the web dashboard on loopback: port 8080 unless taken (DEMO_HTTP overrides)
HTTP=${DEMO_HTTP:-127.0.0.1:8080}
if ! python3 -c "import socket,sys; h,p=sys.argv[1].rsplit(':',1); socket.socket().bind((h,int(p)))" "$HTTP" 2>/dev/null; then
  HTTP=127.0.0.1:0
fi
"$B/stylefarm-coordinator" --listen 127.0.0.1:0 --http-listen "$HTTP" --data-dir "$DATA" --heartbeat-interval-ms 1000 \
  > "$LOG/coordinator.addr" 2> "$LOG/coordinator.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "dashboard on" "$LOG/coordinator.addr" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening on //p' "$LOG/coordinator.addr")
DASHBOARD=$(sed -n 's/^dashboard on //p' "$LOG/coordinator.addr")
export STYLEFARM_COORDINATOR="http://$ADDR"
echo "coordinator: $STYLEFARM_COORDINATOR  (state: $DATA/state.sqlite, objects: $DATA/objects/, log: $LOG/coordinator.log)"
echo "dashboard:   $DASHBOARD  (open it in a browser: batches, live loss curves, outputs, workers)"

THREADS=$(( $(nproc) / WORKERS )); [ "$THREADS" -ge 1 ] || THREADS=1
for i in $(seq "$WORKERS"); do
  "$B/stylefarm-worker" --coordinator "$STYLEFARM_COORDINATOR" --devices auto --name "demo-worker-$i" \
    --torch-threads "$THREADS" 2> "$LOG/worker-$i.log" &
  pids+=($!)
done
echo "workers: $WORKERS local (logs: $LOG/worker-*.log)"

S=.samples
BATCH=$("$B/stylefarm" submit --name demo --label source=make-demo \
  --content "$S/chelsea.png" "$S/coffee.png" "$S/astronaut.png" \
  --style "$S/ihc.png" "$S/retina.jpg" \
  --size "$SIZE" --iterations "$ITERATIONS" --preset "$PRESET" --init content --snapshot-every 5)
echo "batch $BATCH submitted: 3 photos x 2 styles, $SIZE px, $ITERATIONS iterations, $PRESET preset from the content"
"$B/stylefarm" watch "$BATCH" || true
"$B/stylefarm" status "$BATCH"
rm -rf "out/demo/$BATCH"
"$B/stylefarm" fetch "$BATCH" --out "out/demo/$BATCH" > "$LOG/fetched.txt"
.venv/bin/python scripts/contact_sheet.py "out/demo/$BATCH" "out/demo/$BATCH/contact-sheet.png"
echo
echo "outputs of every job (image, loss trace, metadata, snapshots, animation):"
for d in "out/demo/$BATCH"/*/; do echo "  $d"; done
echo "contact sheet: out/demo/$BATCH/contact-sheet.png"
echo "in the object store: $DATA/objects/batches/$BATCH/"
"$B/stylefarm" workers
echo "dashboard:  ${DASHBOARD}batches/$BATCH"
# at a terminal the farm stays up for the dashboard until Ctrl-C (DEMO_KEEP=0: stop now)
if [[ -t 0 && -t 1 && "${DEMO_KEEP:-1}" != 0 ]]; then
  echo "the farm keeps serving the dashboard; Ctrl-C stops it"
  wait "${pids[0]}" || true
fi
