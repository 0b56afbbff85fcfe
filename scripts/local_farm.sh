# Sourced by the scripts that run a farm on this machine (bench-farm,
# bench-print): a coordinator and its workers as processes, their pids in the
# caller's `pids` array, their logs in the run's folder. Needs B (the folder
# of the binaries).

# farm_up DIR WORKERS THREADS NAME [worker flags...]: a coordinator with its data
# in DIR/data, then WORKERS CPU workers named NAME-1.. with THREADS torch threads
# each; exports STYLEFARM_COORDINATOR and returns once the workers had time to register.
farm_up() {
  local dir=$1 workers=$2 threads=$3 name=$4
  shift 4
  mkdir -p "$dir"
  "$B/stylefarm-coordinator" --listen 127.0.0.1:0 --data-dir "$dir/data" --heartbeat-interval-ms 1000 --log warn > "$dir/addr" 2> "$dir/coordinator.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$dir/addr" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening on" "$dir/addr" || { echo "the coordinator did not start: $(tail -3 "$dir/coordinator.log")" >&2; return 1; }
  export STYLEFARM_COORDINATOR="http://$(sed -n 's/^listening on //p' "$dir/addr")"
  for i in $(seq "$workers"); do
    STYLEFARM_LOG=warn "$B/stylefarm-worker" --coordinator "$STYLEFARM_COORDINATOR" --devices cpu --torch-threads "$threads" \
      --name "$name-$i" --work-dir "$dir/worker-$i" "$@" 2> "$dir/worker-$i.log" &
    pids+=($!)
  done
  sleep 2 # workers registered and waiting
}

# farm_down: stops every process in `pids` and waits for them.
farm_down() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
