#!/usr/bin/env bash
# Renders the README's pictures and plot into docs/results/ (CPU, release build):
# three sample renders, their animation, and a loss plot.   make figures
set -euo pipefail
cd "$(dirname "$0")/.."
B=./target/release/stylefarm-worker
D=docs/results
mkdir -p "$D"
"$B" render --content .samples/chelsea.png --style .samples/retina.jpg --output "$D/chelsea-retina-keras.png" \
  --size 256 --iterations 150 --preset keras --device cpu --progress-every 50 \
  --trace "$D/chelsea-retina-keras.trace.jsonl" --animation "$D/chelsea-retina-keras.gif" --snapshot-every 10 \
  --metadata "$D/chelsea-retina-keras.json"
"$B" render --content .samples/astronaut.png --style .samples/ihc.png --output "$D/astronaut-ihc-gatys.png" \
  --size 256 --iterations 150 --preset gatys --init content --device cpu --progress-every 50 \
  --metadata "$D/astronaut-ihc-gatys.json"
"$B" render --content .samples/coffee.png --style .samples/hubble_deep_field.jpg --output "$D/coffee-hubble-keras-colors.png" \
  --size 256 --iterations 150 --preset keras --preserve-colors --device cpu --progress-every 50 \
  --metadata "$D/coffee-hubble-keras-colors.json"
.venv/bin/python scripts/plot_trace.py "$D/chelsea-retina-keras.trace.jsonl" "$D/chelsea-retina-keras.loss.png" \
  "chelsea x retina, keras preset, 256 px, CPU (2 threads)"
ls -la "$D"
