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
TORCH_DIR="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
B=.gpu/stylefarm-worker
W=.gpu/weights.safetensors
S=.gpu/samples
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("python torch", torch.__version__, torch.cuda.get_device_name(0))'
ldd "$B" | grep -E "libtorch|not found"

# sample the GPU memory used by our processes every 50 ms
sample_mem() { while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.05; done; }
peak() { sort -n "$1" | tail -1; }

echo "== one loss+gradient evaluation, engine vs eager PyTorch, on the GPU"
"$B" bench --device cuda:0 --sizes 256,512,1024 --repeats 20 --warmup 5 --weights "$W" \
  --content "$S/chelsea.png" --style "$S/hubble_deep_field.jpg" --python python3 --keep "$OUT/problems" 2>&1 | tee "$OUT/bench.txt"

echo "== engine: 512 px x 500 iterations, keras preset (strong-Wolfe L-BFGS)"
base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
sample_mem > "$OUT/mem-engine.txt" & SP=$!
/usr/bin/time -v "$B" render --content "$S/chelsea.png" --style "$S/hubble_deep_field.jpg" --output "$OUT/gpu-512.png" \
  --size 512 --iterations 500 --preset keras --device cuda:0 --weights "$W" --progress-every 100 \
  --trace "$OUT/gpu-512.trace.jsonl" --metadata "$OUT/gpu-512.json" 2> "$OUT/engine-render.log"
kill $SP; tail -8 "$OUT/engine-render.log"
echo "engine GPU memory: baseline ${base} MiB, peak $(peak "$OUT/mem-engine.txt") MiB (nvidia-smi, whole device)"

echo "== eager PyTorch reference: the same 512 px x 500 iterations"
sample_mem > "$OUT/mem-ref.txt" & SP=$!
python3 reference/style_reference.py run --weights "$W" --inputs "$OUT/problems/size512/inputs.safetensors" \
  --params "$OUT/problems/size512/params.json" --iterations 500 --device cuda 2>&1 | tee "$OUT/reference-run.json"
kill $SP
echo "reference GPU memory: peak $(peak "$OUT/mem-ref.txt") MiB (nvidia-smi, whole device)"
