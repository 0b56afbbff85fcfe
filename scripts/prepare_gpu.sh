#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs into .gpu/ (git-ignored), within the
# device tool's 64 MiB transfer limit: the release binary (stripped), two sample
# images, and the default weights cut to the 12 convolutions the keras preset uses.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p stylefarm-worker
rm -rf .gpu && mkdir -p .gpu/samples
cp target/release/stylefarm-worker .gpu/ && strip .gpu/stylefarm-worker
cp .samples/chelsea.png .samples/hubble_deep_field.jpg .gpu/samples/
weights="$(./target/release/stylefarm-worker weights fetch)"
.venv/bin/python - "$weights" .gpu/weights.safetensors <<'PY'
import sys
sys.path.insert(0, "reference")
from style_reference import read_safetensors, write_safetensors
tensors, meta = read_safetensors(sys.argv[1])
keep = {k: v for k, v in tensors.items() if int(k.split(".")[1]) <= 26}  # block5_conv2 is features.26
write_safetensors(sys.argv[2], keep, meta)
print("kept", len(keep), "tensors")
PY
du -sh .gpu .gpu/*
