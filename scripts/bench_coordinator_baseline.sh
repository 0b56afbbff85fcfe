#!/usr/bin/env bash
# The coordinator benchmark of this checkout beside the same benchmark of an
# older commit (by default the last one before the trust boundary), in one
# command: rounds alternate the two builds so the VM's drift hits both alike,
# and the table prints medians and ratios against the older build.
#
#   bash scripts/bench_coordinator_baseline.sh [REV] [--workers 100,1000] [--jobs 20000] [--rounds 5]
#
# The older commit is checked out as a git worktree under target/baseline-src
# and built into target/baseline (its own target dir, so neither build evicts
# the other).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REV=9e49a34
WORKERS=100,1000
JOBS=20000
ROUNDS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -*) echo "unknown flag $1 (use REV --workers N,M --jobs N --rounds N)" >&2; exit 2 ;;
    *) REV=$1; shift ;;
  esac
done
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SRC=$ROOT/target/baseline-src
BASE_TARGET=$ROOT/target/baseline

bench_exe() { # directory, target dir -> path of the throughput bench executable
  (cd "$1" && CARGO_TARGET_DIR=$2 cargo bench --no-run -p stylefarm-coordinator --bench throughput --message-format=json 2>/dev/null) |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "throughput":
        print(m["executable"])'
}

want=$(git rev-parse "$REV^{commit}")
if [ "$(git -C "$SRC" rev-parse HEAD 2>/dev/null || true)" != "$want" ]; then
  git worktree remove --force "$SRC" 2>/dev/null || rm -rf "$SRC"
  git worktree prune
  git worktree add --detach "$SRC" "$want" >/dev/null
fi
ln -sfn "$(readlink -f .libtorch)" "$SRC/.libtorch"
echo "building $REV ($(git log -1 --format='%h %cs %s' "$want" | cut -c1-80)) and this checkout ..." >&2
BASE=$(bench_exe "$SRC" "$BASE_TARGET")
CURRENT=$(bench_exe "$ROOT" "$TARGET")
[ -x "$BASE" ] && [ -x "$CURRENT" ] || { echo "bench build failed" >&2; exit 1; }

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  if [ $((round % 2)) -eq 1 ]; then order="base current"; else order="current base"; fi
  for which in $order; do
    if [ "$which" = base ]; then
      "$BASE" --workers "$WORKERS" --jobs "$JOBS" --no-reference >"$OUT/base-$round.txt"
    else
      "$CURRENT" --workers "$WORKERS" --jobs "$JOBS" --no-reference --rounds 1 --modes open,auth,tls >"$OUT/current-$round.txt"
    fi
  done
done

python3 - "$OUT" "$REV" <<'EOF'
import glob, os, statistics, sys
out, rev = sys.argv[1], sys.argv[2]
runs = {}  # (workers, label) -> [jobs/s]
for path in sorted(glob.glob(os.path.join(out, "*.txt"))):
    build = os.path.basename(path).split("-")[0]
    for line in open(path):
        head = line[:8].strip()
        if not head.isdigit():
            continue
        mode = line[9:31].strip()
        jobs_per_s = float(line[31:].split()[0])
        label = f"{rev} (before)" if build == "base" else f"now: {mode}"
        runs.setdefault((int(head), label), []).append(jobs_per_s)
print(f"coordinator jobs/s, this checkout vs {rev}, medians of alternating rounds")
print(f"{'workers':<8} {'build / mode':<28} {'jobs/s':>8} {'ratio':>7}   rounds")
for workers in sorted({w for w, _ in runs}):
    base = statistics.median(runs[(workers, f"{rev} (before)")])
    order = [f"{rev} (before)", "now: group commit", "now: + auth (tokens)", "now: + auth + TLS"]
    for label in order + sorted({l for w, l in runs if w == workers} - set(order)):
        values = runs.get((workers, label))
        if not values:
            continue
        w, m = workers, statistics.median(values)
        print(f"{w:<8} {label:<28} {m:>8.0f} {m / base:>7.2f}   {'/'.join(f'{v:.0f}' for v in values)}")
EOF
