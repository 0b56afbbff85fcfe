#!/usr/bin/env bash
# Part of `make test`: the coordinator image, built from
# deploy/docker/coordinator.Dockerfile with podman (scripts/images.sh), runs as
# its Dockerfile says: non-root, OCI labels, its HEALTHCHECK passes through the
# gRPC health service, `token create` works in the image against the state
# volume, a client with that token lists batches, and `podman stop` (SIGTERM)
# ends it with exit code 0 within 10 s. Then closed by default, as
# deploy/compose.yaml runs it: `init` in the image makes a CA, the certificate
# and tokens in two volumes; the coordinator, on 0.0.0.0 with no --insecure,
# serves TLS and requires a token (HEALTHCHECK over TLS too), and the worker's
# volume holds its token and the CA only. The worker image (~5 GB) and the
# farm in containers are `make deploy-test`.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=localhost/stylefarm-coordinator:$VERSION
BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug
NAME=sf-image-check PORT=15451
fail() { echo "image check: FAILED: $*" >&2; podman logs "$NAME" 2>&1 | tail -20 >&2 || true; exit 1; }
cleanup() {
  podman --log-level=fatal rm -f -t 0 "$NAME" "$NAME-closed" >/dev/null 2>&1 || true
  podman volume rm -f "$NAME-state" "$NAME-state2" "$NAME-boot" "$NAME-wboot" >/dev/null 2>&1 || true
  rm -rf "$T"
}
T=$(mktemp -d)
trap cleanup EXIT

start=$SECONDS
# `make test` runs this right after the tests, which built the binaries
# (their environment differs from a plain `cargo build`'s, so another build
# would recompile the workspace for nothing)
prebuilt=""
[ -x "$BIN/stylefarm-coordinator" ] && [ -x "$BIN/stylefarm" ] && [ "$BIN/stylefarm-coordinator" -nt coordinator/src/main.rs ] && prebuilt=1
IMAGES_PREBUILT=$prebuilt bash scripts/images.sh coordinator
echo "image check: $IMAGE built in $((SECONDS - start)) s ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$user" = "10001:10001" ] || fail "runs as '$user', not the unprivileged 10001"
for label in title version revision source licenses; do
  value=$(podman image inspect --format "{{index .Labels \"org.opencontainers.image.$label\"}}" "$IMAGE")
  [ -n "$value" ] && [ "$value" != "<no value>" ] || fail "no org.opencontainers.image.$label label"
done
[ "$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$IMAGE")" = "$VERSION" ] || fail "version label"

podman --log-level=fatal run --rm -v "$NAME-state:/var/lib/stylefarm" "$IMAGE" token create --role admin --name image-check > "$T/admin.token"
grep -q '^sf1_' "$T/admin.token" || fail "token create printed '$(cat "$T/admin.token")'"
# --log-level=fatal: without systemd podman cannot schedule HEALTHCHECK timers and
# logs that at every run and stop; the check runs on demand below
podman --log-level=fatal run -d --name "$NAME" --network host -v "$NAME-state:/var/lib/stylefarm" -e STYLEFARM_LISTEN=127.0.0.1:$PORT "$IMAGE" >/dev/null
healthy=""
for i in $(seq 30); do
  if podman healthcheck run "$NAME" >/dev/null 2>&1; then healthy=$i; break; fi
  sleep 1
done
[ -n "$healthy" ] || fail "HEALTHCHECK not passing after 30 s"
"$BIN/stylefarm" --coordinator "http://127.0.0.1:$PORT" --token-file "$T/admin.token" list > "$T/list.txt" || fail "list with the image-made token"
# without the token: refused (auth is on once a token exists)
if "$BIN/stylefarm" --coordinator "http://127.0.0.1:$PORT" list > /dev/null 2>&1; then fail "served a caller without a token"; fi
# a clip: the coordinator probes it with the image's own ffmpeg (static, from imageio-ffmpeg)
# and plans its jobs (2 frames: 1 decode, 1 flow, 2 frames, the assembly)
"${STYLEFARM_FFMPEG:-${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}/bin/ffmpeg}" -v error -nostdin -y \
  -f lavfi -i testsrc=size=64x48:rate=12 -frames:v 2 -c:v libx264 -pix_fmt yuv420p "$T/clip.mp4"
"$BIN/stylefarm" --coordinator "http://127.0.0.1:$PORT" --token-file "$T/admin.token" submit --video "$T/clip.mp4" \
  --style .samples/ihc.png > "$T/video.txt" 2>&1 || fail "video submit: $(tail -3 "$T/video.txt")"
grep -q "submitted batch .* with 5 jobs" "$T/video.txt" || fail "video submit said: $(cat "$T/video.txt")"
t0=$(date +%s%N)
podman --log-level=fatal stop -t 30 "$NAME" >/dev/null
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
[ "$ms" -lt 10000 ] || fail "took $ms ms to stop"
echo "image check: healthy after ${healthy} s, token from the image accepted, a clip probed and planned, stopped by SIGTERM in $ms ms with exit code 0"

# closed by default (deploy/compose.yaml's init, coordinator and worker volumes)
PORT2=$((PORT + 1))
B=/etc/stylefarm/bootstrap W=/etc/stylefarm/worker
prun() { podman --log-level=fatal run --rm "$@"; }
prun -v "$NAME-boot:$B" -v "$NAME-wboot:$W" "$IMAGE" init --out $B --worker-out $W --hosts coordinator,localhost 2> "$T/init.txt" \
  || fail "init: $(cat "$T/init.txt")"
prun -v "$NAME-boot:$B" -v "$NAME-wboot:$W" "$IMAGE" init --out $B --worker-out $W --hosts coordinator,localhost 2>&1 | grep -q "^made" && fail "a second init made files again"
prun -v "$NAME-boot:$B:ro" --entrypoint cat "$IMAGE" $B/admin/token > "$T/closed-admin.token"
prun -v "$NAME-boot:$B:ro" --entrypoint cat "$IMAGE" $B/admin/ca.crt > "$T/ca.crt"
[ "$(prun -v "$NAME-wboot:$W:ro" --entrypoint ls "$IMAGE" $W | tr '\n' ' ')" = "ca.crt token " ] || fail "the worker volume holds more than its token and the CA"
podman --log-level=fatal run -d --name "$NAME-closed" --network host -v "$NAME-state2:/var/lib/stylefarm" -v "$NAME-boot:$B:ro" \
  -e STYLEFARM_LISTEN=0.0.0.0:$PORT2 -e STYLEFARM_TLS_CERT=$B/coordinator/tls/server.crt -e STYLEFARM_TLS_KEY=$B/coordinator/tls/server.key \
  -e STYLEFARM_TLS_CA=$B/ca/ca.crt "$IMAGE" --auth required --tokens-from $B/coordinator/tokens >/dev/null
healthy=""
for i in $(seq 30); do
  if podman healthcheck run "$NAME-closed" >/dev/null 2>&1; then healthy=$i; break; fi
  sleep 1
done
[ -n "$healthy" ] || { NAME=$NAME-closed; fail "closed: HEALTHCHECK over TLS not passing after 30 s"; }
closed() { "$BIN/stylefarm" --coordinator "https://localhost:$PORT2" --tls-ca "$T/ca.crt" "$@"; }
closed --token-file "$T/closed-admin.token" workers > /dev/null || { NAME=$NAME-closed; fail "closed: the admin token init made is refused"; }
if closed list > /dev/null 2>&1; then NAME=$NAME-closed; fail "closed: served a caller without a token"; fi
if "$BIN/stylefarm" --coordinator "http://127.0.0.1:$PORT2" --token-file "$T/closed-admin.token" workers > /dev/null 2>&1; then fail "closed: served plaintext"; fi
echo "image check: closed by default: init made the CA, certificate and tokens; healthy over TLS after ${healthy} s on 0.0.0.0 without --insecure; refused without a token and over plaintext"
