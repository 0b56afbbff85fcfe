#!/usr/bin/env bash
# `make deploy-test`: the farm from its container images, on this machine
# (podman + runc, CPU workers, host networking). Every step asserts; the
# script exits non-zero at the first failure and prints what it measured.
#
#   1. images      coordinator, s3 and worker images from deploy/docker/ (scripts/images.sh)
#   2. batch       an S3 container, a coordinator container (auth required) and
#                  two worker containers complete a batch; every output is fetched
#   3. drain       `podman stop` (SIGTERM) of a worker while it renders: the job
#                  still succeeds on that worker in its first attempt, exit code 0
#   4. restart     the coordinator container stopped mid-batch (while a
#                  `stylefarm watch` is open) exits within 10 s; started again on
#                  its volume, the batch completes and the watch follows it to the end
#   5. kube play   the rendered cpu overlay (deploy/k8s) under `podman kube play`
#                  runs a batch (scripts/kube_play.py adapts what podman lacks)
#   6. compose     deploy/compose.yaml parses with podman-compose and its
#                  services start and run a batch (scripts/compose_test.sh)
#   7. dist        the release bundle (make dist) installed into a temporary
#                  prefix renders with an empty environment (scripts/dist_test.sh)
#
# Steps: DEPLOY_STEPS="batch drain restart kube compose dist" (default all);
# DEPLOY_SKIP_IMAGES=1 uses the images already built.
# Needs `make setup` (torch, weights, samples). The worker image is ~5 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
STEPS=${DEPLOY_STEPS:-batch drain restart kube compose dist}
CACHE=${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
P=sf-dt                       # prefix of every container, volume and secret made here
COORD_PORT=15151 S3_PORT=15190
export STYLEFARM_COORDINATOR=http://127.0.0.1:$COORD_PORT
T=$(mktemp -d)
# without systemd here podman cannot schedule the images' HEALTHCHECK timers and
# logs an error at every run/start/stop; the checks run on demand (podman
# healthcheck run) instead, and real failures still exit non-zero with "Error:"
pq() { podman --log-level=fatal "$@"; }
prun() { pq run "$@"; }
log() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'deploy-test: FAILED: %s\n' "$*" >&2; exit 1; }
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

cleanup() {
  podman ps -a --format '{{.Names}}' | grep "^$P-" | xargs -r podman rm -f -t 0 -v >/dev/null 2>&1 || true
  podman volume ls --format '{{.Name}}' | grep "^$P-" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
  podman secret ls --format '{{.Name}}' | grep "^$P-" | xargs -r podman secret rm >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
cleanup; T=$(mktemp -d)

[ -s "$CACHE/weights/vgg16-keras-imagenet-caffe-rgb.safetensors" ] || fail "no weights in $CACHE/weights: run make setup"
log "1. images"
start=$SECONDS
[ -n "${DEPLOY_SKIP_IMAGES:-}" ] || bash scripts/images.sh coordinator s3 worker
echo "images built in $((SECONDS - start)) s"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "stylefarm-.*:$VERSION"

S3_ENV=(-e AWS_ACCESS_KEY_ID=stylefarm -e AWS_SECRET_ACCESS_KEY=stylefarm-test-secret -e AWS_ENDPOINT=http://127.0.0.1:$S3_PORT
  -e AWS_REGION=us-east-1 -e AWS_ALLOW_HTTP=true)
client() { "$BIN/stylefarm" --token-file "$T/submit.token" "$@"; }
admin() { "$BIN/stylefarm" --token-file "$T/admin.token" "$@"; }
wait_healthy() { # container, seconds
  for _ in $(seq "$2"); do podman healthcheck run "$1" >/dev/null 2>&1 && return 0; sleep 1; done
  podman logs "$1" | tail -20 >&2; fail "$1 not healthy after $2 s"
}
job_field() { # batch, python expression over the status JSON `s`
  client status "$1" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}
wait_for() { # description, seconds, command...
  local what=$1 limit=$2; shift 2
  for _ in $(seq "$limit"); do "$@" && return 0; sleep 1; done
  [ -z "${batch:-}" ] || client status "$batch" >&2 || true
  fail "$what: not within $limit s"
}

start_coordinator() {
  prun -d --name $P-coordinator --network host -v $P-state:/var/lib/stylefarm \
    -e STYLEFARM_LISTEN=127.0.0.1:$COORD_PORT -e STYLEFARM_STORE=s3://renders/ "${S3_ENV[@]}" \
    localhost/stylefarm-coordinator:"$VERSION" --auth required --heartbeat-interval-ms 1000 >/dev/null
  wait_healthy $P-coordinator 30
}
start_worker() { # n
  prun -d --name $P-worker-$1 --network host --secret $P-worker-token \
    -v "$CACHE/weights:/var/cache/stylefarm/weights:ro" \
    -e STYLEFARM_COORDINATOR -e STYLEFARM_DEVICES=cpu -e STYLEFARM_TORCH_THREADS=1 -e STYLEFARM_WORKER_NAME=container-$1 \
    -e STYLEFARM_HEALTH_LISTEN=127.0.0.1:$((15160 + $1)) "${S3_ENV[@]}" \
    localhost/stylefarm-worker:"$VERSION" --token-file /run/secrets/$P-worker-token --drain-timeout-s 120 >/dev/null
  wait_healthy $P-worker-$1 60
}

if has_step batch || has_step drain || has_step restart; then
  log "2. s3 + coordinator + two workers complete a batch"
  prun -d --name $P-s3 --network host -v $P-objects:/data -e S3_PORT=$S3_PORT \
    -e S3_ACCESS_KEY=stylefarm -e S3_SECRET_KEY=stylefarm-test-secret -e S3_BUCKETS=renders \
    localhost/stylefarm-s3:"$VERSION" >/dev/null
  # tokens, made in the coordinator's image against its volume (as an operator would)
  pq run --rm -v $P-state:/var/lib/stylefarm localhost/stylefarm-coordinator:"$VERSION" \
    token create --role worker --name workers > "$T/worker.token"
  pq run --rm -v $P-state:/var/lib/stylefarm localhost/stylefarm-coordinator:"$VERSION" \
    token create --role submit --name deploy-test > "$T/submit.token"
  pq run --rm -v $P-state:/var/lib/stylefarm localhost/stylefarm-coordinator:"$VERSION" \
    token create --role admin --name operator > "$T/admin.token"
  podman secret create $P-worker-token "$T/worker.token" >/dev/null
  start_coordinator
  start_worker 1
  start_worker 2
  S=.samples
  start=$SECONDS
  batch=$(client submit --name containers --content $S/chelsea.png $S/coffee.png --style $S/ihc.png $S/retina.jpg \
    --size 128 --iterations 40 --preset gatys --init content)
  client watch "$batch" > "$T/watch-1.txt" || { client status "$batch"; fail "batch $batch did not succeed"; }
  echo "batch $batch: 4 jobs, 128 px x 40 iterations, done in $((SECONDS - start)) s"
  client fetch "$batch" --out "$T/fetched" >/dev/null
  n=$(find "$T/fetched" -mindepth 2 -maxdepth 2 -name output.png -size +1k | wc -l)
  [ "$n" = 4 ] || fail "fetched $n output images, expected 4 (find $T/fetched)"
  by=$(job_field "$batch" "sorted(set(j['worker_id'] for j in s['jobs']))")
  echo "images fetched: $n; jobs rendered by workers $by"
  [ "$(job_field "$batch" "len(set(j['worker_id'] for j in s['jobs']))")" = 2 ] || fail "one worker did all the jobs: $by"

  # a clip through the containers: the coordinator image's ffmpeg probes it; the
  # worker images' ffmpeg decodes and encodes it (flows, two segments, a seam)
  FF=${STYLEFARM_FFMPEG:-$CACHE/bin/ffmpeg}
  "$FF" -v error -nostdin -y -loop 1 -framerate 12 -i $S/chelsea.png -f lavfi -i sine=frequency=330:duration=1 \
    -filter_complex "[0:v]scale=360:-1,zoompan=z='1.2':x='iw/2-iw/zoom/2+on*4':y='ih/2-ih/zoom/2':d=1:s=64x48:fps=12,format=yuv420p[v]" \
    -map "[v]" -map 1:a -frames:v 8 -c:v libx264 -c:a aac "$T/clip.mp4"
  start=$SECONDS
  video=$(client submit --name clip --video "$T/clip.mp4" --style $S/ihc.png --size 64 --iterations 20 \
    --frame-iterations 8 --segment-frames 4 --overlap 1 --preset gatys --init content)
  client watch "$video" > "$T/watch-video.txt" 2>&1 || { client status "$video"; fail "video batch $video did not succeed"; }
  client fetch "$video" --out "$T/video" >/dev/null
  mp4="$T/video/clip-stylised.mp4"
  [ -s "$mp4" ] || fail "no clip-stylised.mp4 in the fetched batch ($(ls "$T/video" | head -3))"
  n=$("$FF" -v error -i "$mp4" -map 0:v:0 -c copy -f framecrc - | grep -c '^0,')
  a=$("$FF" -v error -i "$mp4" -map 0:a:0? -c copy -f framecrc - | grep -c '^0,' || true)
  [ "$n" = 8 ] && [ "$a" -gt 0 ] || fail "the stylised clip has $n frames (expected 8) and $a audio packets"
  echo "video batch $video: 8 frames at 64 px, 2 segments, through the containers in $((SECONDS - start)) s; the MP4 has $n frames and an audio track"
fi

if has_step drain; then
  log "3. SIGTERM to a worker container drains it"
  batch=$(client submit --name drain --content .samples/astronaut.png --style .samples/ihc.png \
    --size 160 --iterations 120 --preset gatys --init content)
  running() { [ "$(job_field "$batch" "(s['jobs'][0]['state'], ((s['jobs'][0]['progress'] or {}).get('iteration') or 0) > 5)")" = "('running', True)" ]; }
  wait_for "the job running past its fifth iteration" 90 running
  worker_id=$(job_field "$batch" "s['jobs'][0]['worker_id']")
  name=$(admin workers --json | python3 -c "import json,sys; print([w['name'] for w in json.load(sys.stdin) if w['id'] == '$worker_id'][0])")
  container=$P-worker-${name#container-}
  start=$SECONDS
  pq stop -t 150 "$container" >/dev/null
  code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
  echo "podman stop $container (running job of batch $batch): returned after $((SECONDS - start)) s, exit code $code"
  [ "$code" = 0 ] || fail "the drained worker exited with $code"
  state=$(job_field "$batch" "(s['jobs'][0]['state'], s['jobs'][0]['attempt'], s['jobs'][0]['worker_id'], s['jobs'][0]['attempts_handed_back'])")
  echo "job after the drain (state, attempt, worker, handed back): $state"
  [ "$state" = "('succeeded', 1, '$worker_id', 0)" ] || fail "the drained worker's job: $state"
  podman logs "$container" 2>&1 | grep -i drain | tail -3
  pq start "$container" >/dev/null
  wait_healthy "$container" 60
fi

if has_step restart; then
  log "4. the coordinator container stopped mid-batch and started again on its volume"
  batch=$(client submit --name restart --content .samples/chelsea.png .samples/coffee.png .samples/astronaut.png \
    --style .samples/retina.jpg --size 128 --iterations 60 --preset gatys --init content)
  client watch "$batch" > "$T/watch-restart.txt" 2> "$T/watch-restart.err" &
  watcher=$!
  wait_for "a job to run" 60 test "$(job_field "$batch" "s['batch']['counts']['running'] > 0")" = True
  start=$(date +%s.%N)
  pq stop -t 30 $P-coordinator >/dev/null
  stopped=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
  code=$(podman inspect --format '{{.State.ExitCode}}' $P-coordinator)
  echo "podman stop coordinator with a watch open and workers long-polling: ${stopped} s, exit code $code"
  python3 -c "import sys; sys.exit(0 if $stopped < 10 else 1)" || fail "the coordinator took $stopped s to stop"
  [ "$code" = 0 ] || fail "coordinator exit code $code"
  sleep 3
  pq start $P-coordinator >/dev/null
  wait_healthy $P-coordinator 30
  wait "$watcher" || { cat "$T/watch-restart.err" >&2; fail "the watch did not follow the batch to success"; }
  grep -i "reconnect" "$T/watch-restart.err" | head -2 || fail "the watch did not say it reconnected"
  counts=$(job_field "$batch" "s['batch']['counts']")
  echo "batch $batch after the restart: $counts"
  [ "$(job_field "$batch" "s['batch']['state']")" = succeeded ] || fail "batch $batch: $counts"
  admin workers
fi

if has_step kube || has_step compose; then
  VENV=$CACHE/venv-deploy    # PyYAML for kube_play.py, podman-compose (PyPI, pinned)
  if [ ! -x "$VENV/bin/podman-compose" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q podman-compose==1.6.0 pyyaml==6.0.3
  fi
fi

if has_step kube; then
  log "5. podman kube play of deploy/k8s/overlays/cpu"
  podman ps -a --format '{{.Names}}' | grep "^$P-" | xargs -r podman rm -f -t 10 >/dev/null 2>&1 || true
  "$VENV/bin/python" scripts/kube_play.py --weights "$CACHE/weights" --work "$T/kube" --samples .samples
fi

if has_step compose; then
  log "6. podman-compose with deploy/compose.yaml"
  bash scripts/compose_test.sh
fi
if has_step dist; then
  log "7. the release bundle"
  bash scripts/dist_test.sh
fi
echo
echo "deploy-test: all steps passed ($STEPS)"
