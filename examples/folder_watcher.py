#!/usr/bin/env python3
"""Watches a folder and renders each new photo once with a style, downloading
the results as they finish.

Each submit's request id comes from the photo's bytes, the style and the
settings, so restarting the watcher (or running it on two machines) never
renders a photo twice: the coordinator answers a repeated request id with the
batch it already has.

    python examples/folder_watcher.py --inbox incoming/ --style starry.jpg --out out/watched
    python examples/folder_watcher.py ... --once     # one pass, wait for all, exit
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Dict

import stylefarm

IMAGES = (".png", ".jpg", ".jpeg", ".webp")


def request_id(photo: Path, style: Path, settings: str) -> str:
    digest = hashlib.sha256()
    for part in (photo.read_bytes(), style.read_bytes(), settings.encode()):
        digest.update(hashlib.sha256(part).digest())
    return f"watch-{digest.hexdigest()[:32]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inbox", type=Path, required=True)
    parser.add_argument("--style", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("out/watched"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--once", action="store_true", help="one pass over the inbox, wait for every batch, exit")
    parser.add_argument("--coordinator", default=None)
    args = parser.parse_args()

    settings = f"size={args.size};iterations={args.iterations}"
    pending: Dict[str, stylefarm.Batch] = {}
    seen = set()
    with stylefarm.Client(args.coordinator) as farm:
        while True:
            for photo in sorted(args.inbox.iterdir()):
                if photo.suffix.lower() not in IMAGES or photo in seen:
                    continue
                seen.add(photo)
                batch = farm.submit([photo], [args.style], name=f"watch {photo.name}",
                                    request_id=request_id(photo, args.style, settings),
                                    size=args.size, iterations=args.iterations)
                note = "already submitted" if batch.deduplicated else "submitted"
                print(f"{photo.name}: {note} as {batch.id}", flush=True)
                pending[batch.id] = batch
            for batch_id, batch in list(pending.items()):
                if args.once:
                    try:
                        batch.wait()
                    except stylefarm.BatchFailed as failed:
                        print(f"{batch.name}: failed: {list(failed.failures.values())}", file=sys.stderr)
                elif not batch.refresh().state.finished:
                    continue
                for path in batch.fetch(args.out):
                    if path.name == "output.png":
                        print(f"{batch.name}: {path}", flush=True)
                del pending[batch_id]
            if args.once:
                return 0
            time.sleep(args.poll_s)


if __name__ == "__main__":
    sys.exit(main())
