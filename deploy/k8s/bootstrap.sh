#!/usr/bin/env bash
# Makes, once, what the Kubernetes deployment needs before it can start: a CA
# and the coordinator's certificate, an admin token and a worker token
# (`stylefarm-coordinator init`), as the four Secrets the manifests mount:
#
#   stylefarm-coordinator-tls     tls.crt, tls.key, ca.crt  the coordinator's TLS (gRPC and dashboard)
#   stylefarm-coordinator-tokens  admin.ops, worker.workers  imported at start (--tokens-from)
#   stylefarm-worker-token        token                     every worker's token
#   stylefarm-ca                  ca.crt                    workers and KEDA trust the coordinator by it
#
# Until they exist no pod starts: the deployment is never open. The admin
# token stays with you, in OUT/admin/token (with OUT/admin/ca.crt for the CLI).
#
#   deploy/k8s/bootstrap.sh [--namespace stylefarm] [--out ./stylefarm-secrets] [--dry-run]
#
# --dry-run writes OUT/secrets.yaml and applies nothing. Running it again keeps
# what OUT holds (the same tokens and certificate) and re-applies it.
# `stylefarm-coordinator` comes from PATH, else from the coordinator image
# (podman or docker: STYLEFARM_COORDINATOR_IMAGE).
set -euo pipefail
namespace=stylefarm out=./stylefarm-secrets apply=1
while [ $# -gt 0 ]; do
  case $1 in
    --namespace) namespace=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --dry-run) apply=""; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "bootstrap.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out" && chmod 700 "$out"
out=$(cd "$out" && pwd)
service=stylefarm-coordinator
hosts="$service,$service.$namespace,$service.$namespace.svc,$service.$namespace.svc.cluster.local${STYLEFARM_EXTRA_HOSTS:+,$STYLEFARM_EXTRA_HOSTS}"
if command -v stylefarm-coordinator >/dev/null 2>&1; then
  stylefarm-coordinator init --out "$out" --hosts "$hosts"
else
  engine=$(command -v podman || command -v docker) || { echo "bootstrap.sh: needs stylefarm-coordinator on PATH, or podman or docker" >&2; exit 1; }
  "$engine" run --rm --user "$(id -u):$(id -g)" -v "$out:/out" "${STYLEFARM_COORDINATOR_IMAGE:-localhost/stylefarm-coordinator:0.1.0}" \
    init --out /out --hosts "$hosts"
fi
# (kubectl's dry run writes `creationTimestamp: null`, which no API object holds)
secret() { kubectl create secret generic "$1" --namespace "$namespace" --dry-run=client -o yaml "${@:2}" | sed '/creationTimestamp: null/d'; }
{
  secret stylefarm-coordinator-tls --from-file=tls.crt="$out/coordinator/tls/server.crt" \
    --from-file=tls.key="$out/coordinator/tls/server.key" --from-file=ca.crt="$out/ca/ca.crt"
  echo ---
  secret stylefarm-coordinator-tokens --from-file="$out/coordinator/tokens"
  echo ---
  secret stylefarm-worker-token --from-file=token="$out/worker/token"
  echo ---
  secret stylefarm-ca --from-file=ca.crt="$out/ca/ca.crt"
} > "$out/secrets.yaml"
chmod 600 "$out/secrets.yaml"
if [ -n "$apply" ]; then
  kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"
  kubectl apply -f "$out/secrets.yaml"
  echo "Secrets applied in namespace $namespace. Your admin token: $out/admin/token (CA: $out/admin/ca.crt)"
else
  echo "Secrets written to $out/secrets.yaml (not applied). Your admin token: $out/admin/token"
fi
