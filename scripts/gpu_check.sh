#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine (see README "GPU"). Expects, in .gpu/:
#   stylefarm-worker  (release build from this machine)
#   weights.safetensors (the default weights; `scripts/prepare_gpu.sh` makes a
#                       copy cut to the 12 convolutions the keras preset uses)
#   samples/chelsea.png, samples/hubble_deep_field.jpg
# and a python3 with torch 2.11 on that machine, whose libtorch the binary uses.
# Writes results under $OUT (or ./gpu-out).
set -uo pipefail
OUT="${OUT:-gpu-out}"; mkdir -p "$OUT"
# overridable for a dry run on a CPU machine: DEVICE=cpu SIZE=64 ITERS=5 BENCH_SIZES=64
DEVICE="${DEVICE:-cuda:0}"; SIZE="${SIZE:-512}"; ITERS="${ITERS:-500}"; BENCH_SIZES="${BENCH_SIZES:-256,512,1024}"
REF_DEVICE=cuda; [[ "$DEVICE" == cpu ]] && REF_DEVICE=cpu
command -v nvidia-smi >/dev/null || nvidia-smi() { echo 0; }
TORCH_DIR="$("${PYTHON:-python3}" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
B=.gpu/stylefarm-worker
W=.gpu/weights.safetensors
S=.gpu/samples
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"${PYTHON:-python3}" -c 'import torch; print("python torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
ldd "$B" | grep -E "libtorch|not found"

# sample the GPU memory used by our processes every 50 ms
sample_mem() { while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.05; done; }
peak() { sort -n "$1" | tail -1; }

for PRESET in ${PRESETS:-keras gatys}; do
echo "== [$PRESET] one loss+gradient evaluation, engine vs eager PyTorch"
"$B" bench --preset "$PRESET" --device "$DEVICE" --sizes "$BENCH_SIZES" --repeats 10 --warmup 5 --rounds 2 --weights "$W" --modes tuned \
  --content "$S/chelsea.png" --style "$S/hubble_deep_field.jpg" --python "${PYTHON:-python3}" --keep "$OUT/problems-$PRESET" 2>&1 | tee "$OUT/bench-$PRESET.txt"

echo "== [$PRESET] engine: $SIZE px x $ITERS iterations"
base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
sample_mem > "$OUT/mem-engine-$PRESET.txt" & SP=$!
"$B" render --content "$S/chelsea.png" --style "$S/hubble_deep_field.jpg" --output "$OUT/gpu-$PRESET-$SIZE.png" \
  --size "$SIZE" --iterations "$ITERS" --preset "$PRESET" --device "$DEVICE" --weights "$W" --progress-every 100 \
  --trace "$OUT/gpu-$PRESET-$SIZE.trace.jsonl" --metadata "$OUT/gpu-$PRESET-$SIZE.json" 2> "$OUT/engine-render-$PRESET.log"
kill $SP; tail -3 "$OUT/engine-render-$PRESET.log"
echo "engine GPU memory: baseline ${base} MiB, peak $(peak "$OUT/mem-engine-$PRESET.txt") MiB (nvidia-smi, whole device)"

echo "== [$PRESET] eager PyTorch reference (tuned form): the same $SIZE px x $ITERS iterations"
sample_mem > "$OUT/mem-ref-$PRESET.txt" & SP=$!
"${PYTHON:-python3}" reference/style_reference.py run --weights "$W" --inputs "$OUT/problems-$PRESET/size$SIZE/inputs.safetensors" \
  --params "$OUT/problems-$PRESET/size$SIZE/params.json" --iterations "$ITERS" --device "$REF_DEVICE" 2>&1 | tee "$OUT/reference-run-$PRESET.json"
kill $SP
echo "reference GPU memory: peak $(peak "$OUT/mem-ref-$PRESET.txt") MiB (nvidia-smi, whole device)"
done

# issue 12: several jobs per GPU, their evaluations stacked through one VGG-16 pass
for PRESET in ${PRESETS:-keras gatys}; do
echo "== [$PRESET] packing: K jobs per GPU beside one at a time, $SIZE px x $ITERS iterations"
sample_mem > "$OUT/mem-pack-$PRESET.txt" & SP=$!
"$B" bench-pack --k "${PACK_K:-2,4,8}" --jobs "${PACK_JOBS:-16}" --size "$SIZE" --iterations "$ITERS" --preset "$PRESET" \
  --device "$DEVICE" --weights "$W" --contents "$S/chelsea.png" --styles "$S/hubble_deep_field.jpg" 2>&1 | grep -v INFO | tee "$OUT/pack-$PRESET.txt"
kill $SP
echo "packing GPU memory: peak $(peak "$OUT/mem-pack-$PRESET.txt") MiB (nvidia-smi, whole device)"
done

