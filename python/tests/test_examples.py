"""examples/ run as a user runs them: this venv's python, the installed wheel, a live farm."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

from farmtools import REPO

EXAMPLES = REPO / "examples"


def run(farm, script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--coordinator", farm.url, *args],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{script} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_contact_sheet(farm, samples, tmp_path):
    from PIL import Image

    photos, styles = tmp_path / "photos", tmp_path / "styles"
    photos.mkdir()
    styles.mkdir()
    for name in ("chelsea", "coffee"):
        shutil.copy(samples[name], photos)
    for name in ("retina", "gravel"):
        shutil.copy(samples[name], styles)
    out = run(farm, "contact_sheet.py", "--photos", str(photos), "--styles", str(styles),
              "--out", str(tmp_path / "sheet"), "--size", "48", "--iterations", "4")
    sheet = tmp_path / "sheet" / "contact-sheet.png"
    assert out.strip().endswith(str(sheet))
    with Image.open(sheet) as image:
        assert image.size == (3 * 48, 3 * 48)
        # every rendered cell holds a picture, not the white background
        for row in (1, 2):
            for col in (1, 2):
                cell = image.crop((col * 48, row * 48, col * 48 + 48, row * 48 + 48)).convert("L")
                assert cell.getextrema()[0] < 200, f"cell {row},{col} is empty"


def test_folder_watcher_submits_each_photo_once(farm, samples, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(samples["rocket"], inbox)
    shutil.copy(samples["ihc"], inbox)
    args = ["--inbox", str(inbox), "--style", str(samples["retina"]), "--out", str(tmp_path / "watched"),
            "--size", "48", "--iterations", "4", "--once"]
    first = run(farm, "folder_watcher.py", *args)
    assert first.count(": submitted as") == 2 and first.count("output.png") == 2, first
    again = run(farm, "folder_watcher.py", *args)
    assert again.count("already submitted") == 2, "a restarted watcher renders nothing twice"
    ids = lambda text: sorted(line.split(" as ")[1] for line in text.splitlines() if " as " in line)  # noqa: E731
    assert ids(first) == ids(again)


def test_loss_curves(farm, samples, tmp_path):
    out = run(farm, "loss_curves.py", "--content", str(samples["chelsea"]), "--style", str(samples["retina"]),
              "--weights", "1e2,1e6", "--size", "48", "--iterations", "6", "--out", str(tmp_path / "curves"))
    with open(tmp_path / "curves" / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    by_job = {}
    for row in rows:
        by_job.setdefault(row["job"], []).append(row)
    assert set(by_job) == {"style_weight=100", "style_weight=1e+06"}, out
    assert all(len(r) >= 3 for r in by_job.values())
    # the style term scales with its weight
    assert float(by_job["style_weight=1e+06"][0]["style"]) > 100 * float(by_job["style_weight=100"][0]["style"])
    assert (tmp_path / "curves" / "losses.png").stat().st_size > 10_000
