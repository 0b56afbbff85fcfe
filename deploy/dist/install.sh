#!/usr/bin/env bash
# Installs stylefarm from the release bundle this script sits in.
#
#   sudo ./install.sh worker --coordinator URL --token-file FILE [--tls-ca FILE] [--devices auto]
#   sudo ./install.sh coordinator [--hosts NAME,...]
#
# The coordinator starts closed: TLS and tokens required. Unless ETC/bootstrap
# exists, `stylefarm-coordinator init` makes a CA, the coordinator's
# certificate (for this host's names and --hosts), an admin token (yours:
# ETC/bootstrap/admin/token) and a worker token with the CA for the workers
# (ETC/bootstrap/worker/{token,ca.crt}: install.sh worker --token-file ...
# --tls-ca ...). To bring your own certificate, edit ETC/coordinator.env.
#
# Options:
#   --prefix DIR       where bin/ and site-packages/ go        [/opt/stylefarm]
#   --etc DIR          settings, tokens                        [/etc/stylefarm]
#   --units DIR        systemd units                           [/etc/systemd/system]
#   --python PATH      the python3 to use for torch            [python3]
#   --no-start         install only; do not enable or start the service
#   --no-user          do not create the `stylefarm` system user (tests, containers)
#   --hosts NAMES      coordinator: more names or addresses for its certificate
#
# torch: if PYTHON already has torch 2.11.x, its site-packages is linked as
# PREFIX/site-packages; otherwise torch==2.11.0 (CUDA 13 build, ~5 GB) is
# installed into PREFIX/venv from PyPI. The worker finds it through its rpath
# ($ORIGIN/../site-packages/torch/lib): nothing to set.
# ffmpeg (video batches): the host's on the PATH, else the static build of the
# PyPI wheel imageio-ffmpeg put beside the binaries.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
role="${1:-}"; shift || true
prefix=/opt/stylefarm etc=/etc/stylefarm units=/etc/systemd/system python=python3
coordinator="" token_file="" tls_ca="" devices=auto start=1 user=1 hosts=""
die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --etc) etc=$2; shift 2 ;;
    --units) units=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --coordinator) coordinator=$2; shift 2 ;;
    --token-file) token_file=$2; shift 2 ;;
    --tls-ca) tls_ca=$2; shift 2 ;;
    --devices) devices=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    --no-user) user=0; shift ;;
    --hosts) hosts=$2; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$role" in
  worker) [ -n "$coordinator" ] || die "worker: --coordinator URL is required" ;;
  coordinator) ;;
  *) die "first argument: worker or coordinator (see --help)" ;;
esac
log() { printf 'install: %s\n' "$*" >&2; }

if [ "$user" = 1 ] && ! id stylefarm >/dev/null 2>&1; then
  log "creating the system user stylefarm"
  useradd --system --home-dir /var/lib/stylefarm --shell /usr/sbin/nologin --user-group stylefarm
  for g in video render; do getent group "$g" >/dev/null && usermod -aG "$g" stylefarm; done
fi

mkdir -p "$prefix/bin" "$etc"
install -m 0755 "$here/bin/"* "$prefix/bin/"
log "binaries in $prefix/bin"

# --- ffmpeg (video batches: the coordinator probes clips, the worker decodes and encodes) ---
# The binaries look for ffmpeg beside themselves, then on the PATH. Without one on
# the PATH, the static build in the PyPI wheel imageio-ffmpeg goes to PREFIX/bin.
if [ -x "$prefix/bin/ffmpeg" ]; then
  log "ffmpeg: $prefix/bin/ffmpeg"
elif command -v ffmpeg >/dev/null 2>&1; then
  log "ffmpeg: this host's $(command -v ffmpeg)"
else
  wheel_dir=$(mktemp -d)
  if "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
       --platform manylinux_2_28_x86_64 -d "$wheel_dir" "imageio-ffmpeg==0.8.1" \
     && "$python" -c "import glob, sys, zipfile; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]); m = [n for n in z.namelist() if n.startswith('imageio_ffmpeg/binaries/ffmpeg-')][0]; open(sys.argv[2], 'wb').write(z.read(m))" \
          "$wheel_dir" "$prefix/bin/ffmpeg"; then
    chmod 0755 "$prefix/bin/ffmpeg"
    log "ffmpeg: $prefix/bin/ffmpeg (imageio-ffmpeg 0.8.1, static)"
  else
    rm -f "$prefix/bin/ffmpeg"
    log "warning: no ffmpeg (pip could not fetch imageio-ffmpeg); images render, video batches fail until ffmpeg is on the PATH"
  fi
  rm -rf "$wheel_dir"
fi

if [ "$role" = worker ]; then
  # --- torch 2.11 -----------------------------------------------------------
  have=$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
  if [[ "$have" == 2.11.* ]]; then
    site=$("$python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
    log "using this host's PyTorch $have from $site"
  else
    log "installing torch==2.11.0 into $prefix/venv (one-time, ~5 GB)"
    [ -x "$prefix/venv/bin/python" ] || "$python" -m venv "$prefix/venv"
    "$prefix/venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.11.0"
    site=$("$prefix/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  fi
  ln -sfn "$site" "$prefix/site-packages"
  # the worker must load libtorch from there with no environment set
  env -u LD_LIBRARY_PATH "$prefix/bin/stylefarm-worker" --version >/dev/null || die "the worker cannot load libtorch from $prefix/site-packages/torch/lib"
  log "libtorch: $prefix/site-packages/torch/lib"

  # --- settings ------------------------------------------------------------
  if [ ! -f "$etc/worker.env" ]; then
    sed -e "s|^STYLEFARM_COORDINATOR=.*|STYLEFARM_COORDINATOR=$coordinator|" -e "s|^STYLEFARM_DEVICES=.*|STYLEFARM_DEVICES=$devices|" \
      "$here/systemd/worker.env" > "$etc/worker.env"
    if [ -n "$tls_ca" ]; then
      install -m 0644 "$tls_ca" "$etc/ca.crt"
      sed -i "s|^STYLEFARM_TLS_CA=.*|STYLEFARM_TLS_CA=$etc/ca.crt|" "$etc/worker.env"
    else
      sed -i "s|^STYLEFARM_TLS_CA=|#STYLEFARM_TLS_CA=|" "$etc/worker.env"
    fi
    log "settings: $etc/worker.env"
  else
    log "keeping the existing $etc/worker.env"
  fi
  if [ -n "$token_file" ]; then
    install -m 0600 "$token_file" "$etc/worker.token"
  elif [ ! -f "$etc/worker.token" ]; then
    : > "$etc/worker.token"; chmod 0600 "$etc/worker.token"
    log "no --token-file: $etc/worker.token is empty (fine for a coordinator without tokens)"
  fi
  # the VGG-16 weights, once, into the service's cache
  mkdir -p /var/cache/stylefarm 2>/dev/null || true
  if STYLEFARM_CACHE=${STYLEFARM_CACHE:-/var/cache/stylefarm} "$prefix/bin/stylefarm-worker" weights fetch >/dev/null; then
    log "weights cached"
  else
    log "weights not fetched now (the worker fetches them on its first job)"
  fi
else
  [ -f "$etc/coordinator.env" ] || sed -e "s|/etc/stylefarm|$etc|g" "$here/systemd/coordinator.env" > "$etc/coordinator.env"
  log "settings: $etc/coordinator.env"
  # closed from the first start: a CA, this host's certificate and two tokens, made once
  fqdn=$(hostname -f 2>/dev/null || uname -n) short=$(uname -n)
  names="$fqdn,$short${hosts:+,$hosts}"
  "$prefix/bin/stylefarm-coordinator" init --out "$etc/bootstrap" --hosts "$names" 2>&1 | sed 's/^/install: init: /' >&2
  [ "$user" = 1 ] && chown -R stylefarm:stylefarm "$etc/bootstrap/coordinator" "$etc/bootstrap/ca"
  log "your admin token: $etc/bootstrap/admin/token (CA: $etc/bootstrap/admin/ca.crt); for workers: $etc/bootstrap/worker/{token,ca.crt}"
  log "  e.g. stylefarm --coordinator https://$fqdn:50051 --tls-ca $etc/bootstrap/admin/ca.crt --token-file $etc/bootstrap/admin/token workers"
fi

# --- the unit ------------------------------------------------------------------
mkdir -p "$units"
unit="stylefarm-$role.service"
sed -e "s|/opt/stylefarm|$prefix|g" -e "s|/etc/stylefarm|$etc|g" "$here/systemd/$unit" > "$units/$unit"
[ "$user" = 1 ] && [ -d "$etc" ] && chown -R root:stylefarm "$etc" && chmod 0750 "$etc"
log "unit: $units/$unit"
if [ "$start" = 1 ]; then
  systemctl daemon-reload
  systemctl enable --now "$unit"
  log "started: systemctl status $unit; journalctl -u $unit -f"
else
  log "not started (--no-start): systemctl enable --now $unit"
fi
