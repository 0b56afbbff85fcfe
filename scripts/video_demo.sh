#!/usr/bin/env bash
# `make video-demo`: a clip the project makes itself (a sample photo panned and
# zoomed by ffmpeg, with a tone for audio), stylised the way the farm splits it
# (segments of warm-started frames, cross-faded and re-optimised where they
# meet) beside the same frames stylised each on its own at the same total
# iterations; prints both runs' figures and ratios, and writes the README's
# frame strip and side-by-side GIF into docs/results/.
#   VIDEO_SIZE (256), VIDEO_FRAMES (24), VIDEO_STYLE (.samples/ihc.png), WORKER (the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${VIDEO_SIZE:-256}
FRAMES=${VIDEO_FRAMES:-24}
STYLE=${VIDEO_STYLE:-.samples/ihc.png}
WORKER=${WORKER:-./target/release/stylefarm-worker}
OUT=out/video-demo
D=docs/results
mkdir -p "$OUT" "$D"
# the ffmpeg `make setup` installs (static, from the PyPI wheel imageio-ffmpeg), as the worker finds it
ffmpeg() { "${STYLEFARM_FFMPEG:-${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}/bin/ffmpeg}" "$@"; }
H=$(( SIZE * 2 / 3 / 2 * 2 ))
# a slow pan to the right with a gentle zoom over chelsea.png (451x300), 12 fps
ffmpeg -v error -nostdin -y -loop 1 -framerate 12 -i .samples/chelsea.png -f lavfi -i "sine=frequency=330:duration=$(( FRAMES / 12 + 1 ))" \
  -filter_complex "[0:v]scale=1804:-1,zoompan=z='1.15+0.004*on':x='iw/2-iw/zoom/2+(on-12)*5':y='ih/2-ih/zoom/2-on*2':d=1:s=${SIZE}x${H}:fps=12,format=yuv420p[v]" \
  -map "[v]" -map 1:a -frames:v "$FRAMES" -c:v libx264 -crf 16 -c:a aac -shortest "$OUT/clip.mp4"
"$WORKER" video --input "$OUT/clip.mp4" --style "$STYLE" --output "$OUT/clip-stylised.mp4" --work "$OUT/work" \
  --preset gatys --init content --size "$SIZE" --iterations 60 --frame-iterations 20 --segment-frames 12 --overlap 3 \
  --device cpu --compare --report "$OUT/report.json" 2>"$OUT/video.log" | tee "$OUT/figures.txt"
# the strip: input, independent, temporal at four frames
W="$OUT/work"
picks=(1 $(( FRAMES / 3 )) $(( 2 * FRAMES / 3 )) "$FRAMES")
rows=()
for kind in frames independent stylised; do
  args=(); for f in "${picks[@]}"; do args+=(-i "$W/$kind/$(printf %06d "$f").png"); done
  ffmpeg -v error -nostdin -y "${args[@]}" -filter_complex "hstack=inputs=${#picks[@]},scale=iw:-2" "$OUT/row-$kind.png"
  rows+=(-i "$OUT/row-$kind.png")
done
ffmpeg -v error -nostdin -y "${rows[@]}" -filter_complex "vstack=inputs=3" "$D/video-strip.png"
# the GIF: input | independent | temporal, side by side
ffmpeg -v error -nostdin -y -framerate 12 -i "$W/frames/%06d.png" -framerate 12 -i "$W/independent/%06d.png" -framerate 12 -i "$W/stylised/%06d.png" \
  -filter_complex "[0][1][2]hstack=inputs=3,scale=iw*2/3:-2:flags=lanczos,split[a][b];[a]palettegen=max_colors=128[p];[b][p]paletteuse=dither=bayer" \
  -loop 0 "$D/video-side-by-side.gif"
echo "clip: $OUT/clip.mp4; stylised: $OUT/clip-stylised.mp4 (and clip-stylised-independent.mp4); report: $OUT/report.json"
echo "figures: $D/video-strip.png (rows: input, independent, temporal), $D/video-side-by-side.gif"
