#!/usr/bin/env bash
# stylefarm setup: installs everything the build and the tests need, idempotently.
#
#   * libtorch: PyPI torch==2.11.0 (the build tch =0.24.0 expects) in a Python 3.11
#     venv under the stylefarm cache, linked into the repo as .venv and .libtorch;
#   * the default VGG-16 weights (Keras/caffe ImageNet), fetched, converted to
#     safetensors and verified by SHA-256 by the worker binary itself;
#   * ffmpeg: the static build in the PyPI wheel imageio-ffmpeg, as $cache/bin/ffmpeg
#     (no root; one binary probes, decodes and encodes clips);
#   * the sample images from the scikit-image wheel;
#   * systemd-analyze (Debian package systemd) for the deploy/ tests.
#
# A second run finds the stamps and makes no network calls. `--demo` skips the
# Debian packages only the tests use (step 4).
# Cache: $STYLEFARM_CACHE, else ~/.cache/stylefarm.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}"
torch_version="2.11.0"
venv="$cache/venv-torch-$torch_version"
# what the venv holds; a change here reinstalls (the stamp records it)
requirements="torch==$torch_version numpy<3 pillow<12 pypng<1 tifffile<2026"
samples="$cache/samples"
skimage_version="0.25.2"
imageio_ffmpeg_version="0.8.1"
imageio_ffmpeg_sha256="050d6850601c3b3890bd2b28306f3b842b3daea390a561101174375a1c460bda"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

log() { printf 'setup: %s\n' "$*" >&2; }
mkdir -p "$cache"

# --- 1. libtorch through the PyPI torch wheel --------------------------------
if [[ "$(cat "$venv/.stylefarm-ok" 2>/dev/null)" != "$requirements" ]]; then
  log "installing $requirements into $venv (one-time, about 4 GB with torch's CUDA 13 libraries)"
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  # shellcheck disable=SC2086
  # --no-cache-dir: torch and its CUDA libraries are ~4 GB of wheels that pip would
  # otherwise keep a second copy of in ~/.cache/pip
  "$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check $requirements
  "$venv/bin/python" - <<'PY'
import torch, sys
assert torch.__version__.split('+')[0] == "2.11.0", torch.__version__
print("setup: torch", torch.__version__, "ok", file=sys.stderr)
PY
  printf '%s' "$requirements" > "$venv/.stylefarm-ok"
else
  log "torch==$torch_version already installed in $venv"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -sfn "$venv" "$repo/.venv"
ln -sfn "$site/torch" "$repo/.libtorch"

# --- 2. ffmpeg: the static build in the PyPI wheel imageio-ffmpeg (no root) ---
# One binary (no ffprobe needed) that probes, decodes and encodes clips; the
# worker and coordinator find it in $cache/bin (or STYLEFARM_FFMPEG, or PATH).
ffmpeg_wheel="imageio_ffmpeg-$imageio_ffmpeg_version-py3-none-manylinux_2_28_x86_64.whl"
if [[ "$(cat "$cache/bin/.ffmpeg-ok" 2>/dev/null)" != "$imageio_ffmpeg_version" || ! -x "$cache/bin/ffmpeg" ]]; then
  log "fetching ffmpeg (static) from imageio-ffmpeg==$imageio_ffmpeg_version"
  mkdir -p "$cache/downloads" "$cache/bin"
  [[ -f "$cache/downloads/$ffmpeg_wheel" ]] || "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --platform manylinux_2_28_x86_64 -d "$cache/downloads" "imageio-ffmpeg==$imageio_ffmpeg_version"
  "$venv/bin/python" - "$cache/downloads/$ffmpeg_wheel" "$imageio_ffmpeg_sha256" "$cache/bin/ffmpeg" <<'PY'
import hashlib, os, sys, zipfile
wheel, sha, out = sys.argv[1:4]
got = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
if got != sha:
    sys.exit(f"setup: {wheel}: sha256 {got}, expected {sha}")
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.startswith("imageio_ffmpeg/binaries/ffmpeg-"))
    with open(out + ".part", "wb") as f:
        f.write(z.read(member))
os.chmod(out + ".part", 0o755)
os.replace(out + ".part", out)
print(f"setup: {out} from {member}", file=sys.stderr)
PY
  "$cache/bin/ffmpeg" -hide_banner -version | head -1 >&2
  printf '%s' "$imageio_ffmpeg_version" > "$cache/bin/.ffmpeg-ok"
else
  log "ffmpeg (imageio-ffmpeg==$imageio_ffmpeg_version) already in $cache/bin"
fi

# --- 3. sample images (scikit-image wheel, data files only) ------------------
if [[ ! -f "$samples/.stylefarm-ok" ]]; then
  log "fetching sample images from scikit-image==$skimage_version"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$tmp" "scikit-image==$skimage_version"
  mkdir -p "$samples"
  "$venv/bin/python" - "$tmp" "$samples" <<'PY'
import glob, sys, zipfile, hashlib, os
tmp, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "scikit_image-*.whl"))[0]
wanted = ["chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "gravel.png"]
with zipfile.ZipFile(wheel) as z:
    for name in wanted:
        data = z.read("skimage/data/" + name)
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(f"setup: sample {name} {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()[:16]}", file=sys.stderr)
PY
  touch "$samples/.stylefarm-ok"
else
  log "sample images already in $samples"
fi
ln -sfn "$samples" "$repo/.samples"

# --- 4. tools the deploy/ tests call ---------------------------------------------
# (not for the demo: `setup.sh --demo` stops here)
if [[ "${1:-}" == "--demo" ]]; then
  log "demo setup done (the test tools are installed by a plain \`make setup\`)"
  exit 0
fi
# kubectl (with kustomize) renders deploy/k8s; systemd-analyze verifies the units;
# prometheus scrapes a live farm and promtool checks deploy/observability;
# headless chromium drives the web dashboard's tests.
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v "${STYLEFARM_CHROMIUM:-chromium}" >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${missing[*]} (Debian packages) for the deploy/ and dashboard tests"
  SUDO=""; [[ "$(id -u)" -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v kubectl >/dev/null 2>&1 || log "warning: kubectl not found; the deploy/k8s tests need it (https://kubernetes.io/docs/tasks/tools/)"
