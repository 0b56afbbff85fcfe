#!/usr/bin/env python3
"""Notebook-style: one photo with one style at several style weights. The
watch stream shows each job's loss as it renders; the finished jobs' loss
traces (``trace.jsonl``, every iteration) give the curves, plotted side by
side. Paste the cells into Jupyter as they are.

    python examples/loss_curves.py --content .samples/chelsea.png --style .samples/retina.jpg --out out/curves
"""

# %% settings
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import stylefarm
from stylefarm import EventKind

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--content", type=Path, required=True)
parser.add_argument("--style", type=Path, required=True)
parser.add_argument("--weights", default="1e3,1e4,1e5", help="style weights, one job each")
parser.add_argument("--size", type=int, default=256)
parser.add_argument("--iterations", type=int, default=100)
parser.add_argument("--out", type=Path, default=Path("out/loss-curves"))
parser.add_argument("--coordinator", default=None)
args = parser.parse_args()
weights = [float(w) for w in args.weights.split(",")]

# %% submit: one job per style weight
farm = stylefarm.Client(args.coordinator)
jobs = [
    stylefarm.JobSpec(content=args.content, styles=[args.style], name=f"style_weight={w:g}", params={"style_weight": w})
    for w in weights
]
batch = farm.submit(jobs=jobs, name="loss curves", size=args.size, iterations=args.iterations)
print(batch)

# %% watch: the losses live, as the workers report them
for event in batch.watch():
    if event.kind == EventKind.PROGRESS and event.progress.loss is not None:
        p = event.progress
        print(f"{event.job.name}: iteration {p.iteration}/{p.total_iterations} loss {p.loss.total:.4g}")
    elif event.kind in (EventKind.SUCCEEDED, EventKind.FAILED):
        print(f"{event.job.name}: {event.kind.value}", event.job.error or "")
batch.wait()

# %% the curves: each job's trace, every iteration
curves = defaultdict(list)  # job name -> [(iteration, total, content, style)]
names = {job.id: job.name for job in batch.jobs}
for path in batch.fetch(args.out / "outputs"):
    if path.name == "trace.jsonl":
        name = names[path.parent.name.split("-", 1)[0]]  # the folder is JOBID-NAME
        for line in path.read_text().splitlines():
            row = json.loads(line)
            curves[name].append((row["iteration"], row["total"], row["content"], row["style"]))

# %% the curves as CSV, and a plot if matplotlib is installed
args.out.mkdir(parents=True, exist_ok=True)
with open(args.out / "losses.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["job", "iteration", "total", "content", "style"])
    for name, rows in curves.items():
        out.writerows([name, *row] for row in rows)
print(args.out / "losses.csv")
for name, rows in curves.items():
    print(f"{name}: {len(rows)} rows, total loss {rows[0][1]:.4g} -> {rows[-1][1]:.4g}")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, rows in curves.items():
        it = [r[0] for r in rows]
        for ax, column, title in zip(axes, (1, 2, 3), ("total", "content", "style")):
            ax.plot(it, [r[column] for r in rows], label=name)
            ax.set_title(f"{title} loss")
            ax.set_yscale("log")
            ax.set_xlabel("iteration")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.out / "losses.png", dpi=100)
    print(args.out / "losses.png")
farm.close()
