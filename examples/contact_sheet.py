#!/usr/bin/env python3
"""Every photo in a folder × every style in another, rendered on the farm,
collected into one contact sheet (rows: photos, columns: styles).

    pip install target/dist/stylefarm-*.whl pillow
    python examples/contact_sheet.py --photos .samples --styles styles/ --out out/sheet --size 256

Uses STYLEFARM_COORDINATOR / STYLEFARM_TOKEN / STYLEFARM_TLS_CA like the CLI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

import stylefarm

IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


def images(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--styles", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("out/contact-sheet"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--preset", default="keras")
    parser.add_argument("--coordinator", default=None)
    args = parser.parse_args()

    photos, styles = images(args.photos), images(args.styles)
    if not photos or not styles:
        print(f"need images in both {args.photos} and {args.styles}", file=sys.stderr)
        return 2
    with stylefarm.Client(args.coordinator) as farm:
        batch = farm.submit(photos, styles, name="contact-sheet", preset=args.preset,
                            size=args.size, iterations=args.iterations)
        print(f"batch {batch.id}: {batch.counts.total} jobs", file=sys.stderr)
        try:
            batch.wait(progress=True)
        except stylefarm.BatchFailed as failed:
            # a sheet of what did render; say what did not
            for job, reason in failed.failures.items():
                print(f"{job} failed: {reason}", file=sys.stderr)
        files = batch.fetch(args.out)
        outputs = {p.parent.name: p for p in files if p.name == "output.png"}
        jobs = {j.name: j for j in batch.jobs}

    cell = args.size
    sheet = Image.new("RGB", ((len(styles) + 1) * cell, (len(photos) + 1) * cell), "white")
    draw = ImageDraw.Draw(sheet)

    def paste(path: Path, col: int, row: int) -> None:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((cell, cell))
            sheet.paste(image, (col * cell + (cell - image.width) // 2, row * cell + (cell - image.height) // 2))

    for col, style in enumerate(styles, 1):
        paste(style, col, 0)
    for row, photo in enumerate(photos, 1):
        paste(photo, 0, row)
        for col, style in enumerate(styles, 1):
            job = jobs.get(f"{photo.stem}-x-{style.stem}")
            out = outputs.get(f"{job.id}-{job.name}") if job else None
            if out is not None:
                paste(out, col, row)
            else:
                draw.text((col * cell + 8, row * cell + cell // 2), "failed", fill="red")
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "contact-sheet.png"
    sheet.save(target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
