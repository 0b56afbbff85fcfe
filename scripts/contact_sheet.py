"""Contact sheet of a fetched batch: each job's output beside its loss curve.
usage: contact_sheet.py BATCH_DIR OUT.png"""
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

TILE = 192


def loss_curve(trace: Path, size=(TILE, TILE)) -> Image.Image:
    rows = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    img = Image.new("RGB", size, "white")
    if len(rows) < 2:
        return img
    import math
    values = [math.log10(max(r["total"], 1e-30)) for r in rows]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    w, h = size
    pts = [(8 + (w - 16) * i / (len(values) - 1), 8 + (h - 24) * (hi - v) / span) for i, v in enumerate(values)]
    draw = ImageDraw.Draw(img)
    draw.rectangle([7, 7, w - 8, h - 16], outline="#999")
    draw.line(pts, fill="#c0392b", width=2)
    draw.text((8, h - 14), f"log10 loss {hi:.1f} -> {lo:.1f}", fill="black")
    return img


def main() -> None:
    batch, out = Path(sys.argv[1]), Path(sys.argv[2])
    jobs = sorted(p for p in batch.iterdir() if (p / "output.png").is_file())
    if not jobs:
        sys.exit(f"no outputs under {batch}")
    sheet = Image.new("RGB", (2 * TILE, TILE * len(jobs) + 16 * len(jobs)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, job in enumerate(jobs):
        y = k * (TILE + 16)
        image = Image.open(job / "output.png").convert("RGB")
        image.thumbnail((TILE, TILE))
        sheet.paste(image, ((TILE - image.width) // 2, y + 16 + (TILE - image.height) // 2))
        if (job / "trace.jsonl").is_file():
            sheet.paste(loss_curve(job / "trace.jsonl"), (TILE, y + 16))
        draw.text((4, y + 2), job.name, fill="black")
    sheet.save(out)
    print(out)


if __name__ == "__main__":
    main()
