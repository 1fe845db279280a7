"""Check in a real headless browser (Chromium) that a run's QC report renders.

    python benchmarks/check_report_browser.py [RUN_FOLDER] [--browser chromium] [--screenshot shot.png]

Without RUN_FOLDER a small demo run (24 cells) is made in ``benchmarks/.work/``. The script
opens ``report.html`` with ``chromium --headless`` twice: ``--dump-dom`` (the page parses, every
section and image is in the DOM) and ``--screenshot`` (the page paints: the screenshot holds the
report's pictures, recognised by the mask outline colours of the montage or the fields picture,
and enough dark text and lines). Exit status 0 when it renders, 1 when it does not, 2 when no
browser is found (``apt-get install chromium`` on Debian; pip's playwright cannot fetch
browsers without network access). Look at the screenshot too: it is kept.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser(name: str | None) -> str | None:
    for b in ([name] if name else BROWSERS):
        path = shutil.which(b)
        if path:
            return path
    return None


def demo_run(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "scip_gpu", "+dataset=demo", "dataset.n_objects=24", "cluster=sync",
           f"output={out}"]
    subprocess.run(cmd, check=True, cwd=HERE.parent)
    return out


def browser_args(browser: str) -> list[str]:
    # --no-sandbox: needed when running as root (containers); harmless otherwise
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--allow-file-access-from-files"]


def check(report: Path, browser: str, shot: Path, height: int = 6000) -> list[str]:
    """Problems found (empty: it renders)."""
    from PIL import Image

    from scip_gpu.report import SECTIONS

    problems = []
    url = report.resolve().as_uri()
    dom = subprocess.run(browser_args(browser) + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=180).stdout
    for sid in SECTIONS:
        if f'id="{sid}"' not in dom:
            problems.append(f"section {sid!r} missing from the rendered DOM")
    n_img = len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom))
    if n_img < 2:
        problems.append(f"{n_img} embedded image(s) in the rendered DOM, expected at least 2")
    subprocess.run(browser_args(browser) + [f"--window-size=1280,{height}", f"--screenshot={shot}", url],
                   capture_output=True, text=True, timeout=180)
    if not shot.is_file():
        return problems + ["the browser wrote no screenshot"]
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    dark = (px.sum(axis=2) < 200).mean()
    red = ((px[..., 0] > 200) & (px[..., 1] < 110) & (px[..., 2] < 110)).sum()  # first mask's outline
    cyan = ((px[..., 0] < 80) & (px[..., 1] > 150) & (px[..., 2] > 200)).sum()  # second mask's outline
    print(f"screenshot {shot}: {px.shape[1]}x{px.shape[0]} px, dark share {dark:.3f}, "
          f"outline pixels red {red}, cyan {cyan}; {n_img} images in the DOM")
    if dark < 0.01:
        problems.append(f"the screenshot is nearly blank (dark share {dark:.4f})")
    if red < 50:
        problems.append("no mask outline (red) painted: the pictures did not render")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="run folder holding report.html (default: a new demo run)")
    ap.add_argument("--browser", help="browser executable (default: the first of %s found)" % ", ".join(BROWSERS))
    ap.add_argument("--screenshot", type=Path, help="where to write the screenshot (default: next to the report)")
    args = ap.parse_args(argv)
    browser = find_browser(args.browser)
    if browser is None:
        print("no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    run = args.run or demo_run(WORK / "report-demo")
    report = run / "report.html"
    if not report.is_file():
        print(f"{report} does not exist", file=sys.stderr)
        return 1
    shot = args.screenshot or run / "report-screenshot.png"
    problems = check(report, browser, shot)
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    print("report renders" if not problems else "report does NOT render correctly")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
