"""Draws a loss trace (stylefarm's JSONL) as a PNG: total, content, style and tv
per iteration, log scale. Pillow only (installed by `make setup`).

  .venv/bin/python scripts/plot_trace.py TRACE.jsonl OUT.png [TITLE]
"""
import json
import math
import sys

from PIL import Image, ImageDraw

W, H, L, R, T, B = 760, 420, 70, 120, 40, 40
COLORS = {"total": (20, 20, 20), "content": (31, 119, 180), "style": (214, 39, 40), "tv": (44, 160, 44)}


def main():
    rows = [json.loads(line) for line in open(sys.argv[1])]
    title = sys.argv[3] if len(sys.argv) > 3 else sys.argv[1]
    xs = list(range(len(rows)))
    values = [r[k] for r in rows for k in COLORS if r.get(k) and r[k] > 0]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    px = lambda i: L + (W - L - R) * i / max(1, len(rows) - 1)
    py = lambda v: T + (H - T - B) * (hi - math.log10(v)) / max(1, hi - lo)
    for e in range(lo, hi + 1):
        y = py(10 ** e)
        d.line([(L, y), (W - R, y)], fill=(225, 225, 225))
        d.text((8, y - 6), f"1e{e}", fill=(90, 90, 90))
    step = max(1, len(rows) // 5)
    for i in range(0, len(rows), step):
        d.text((px(i) - 8, H - B + 8), str(rows[i]["iteration"]), fill=(90, 90, 90))
    d.rectangle([L, T, W - R, H - B], outline=(120, 120, 120))
    for k, color in COLORS.items():
        pts = [(px(i), py(r[k])) for i, r in zip(xs, rows) if r.get(k) and r[k] > 0]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        d.text((W - R + 10, T + 18 * list(COLORS).index(k)), k, fill=color)
    d.text((L, 12), title, fill=(0, 0, 0))
    d.text((W - R - 60, H - 18), "iteration", fill=(90, 90, 90))
    img.save(sys.argv[2])


if __name__ == "__main__":
    main()
