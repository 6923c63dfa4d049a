"""Benchmark of the report's page size (issue 15, item 5): how big is report.html as the pool
grows, and what in it grows.

Builds a synthetic run folder per size (tests/synthetic_run.py: Alpaca rows of our own making,
answers of 20-250 words with every 50th about 3,000 words, every 40th empty and so rejected;
made-up IFD-like scores, 10% selected by a top-k, scores >= 1 filtered), writes its report with
the sample browser, and prints the page's bytes split into the sample browser, the SVG plots and
the rest (CSS, script, manifest, rejected-row table). The browser shows a bounded number of rows
(report_samples: at most 180 per run) and the map at most 3,000 points, so the page should stop
growing with the pool; this measures it. No model, no timing.

Examples:
    python bench/report_size.py
    python bench/report_size.py --rows 1000 10000 52002
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from synthetic_run import make_run  # noqa: E402
from thresher.report import write_report  # noqa: E402


def measure(rows: int, work: Path, long_every: int = 50) -> dict[str, int]:
    run = make_run(work / f"run-{rows}-{long_every}", rows, long_every=long_every)
    page = write_report([run.path])
    text = page.read_text()
    browser = len(re.search(r'<table class="samples".*?</table>', text, re.S).group(0).encode())
    plots = sum(len(s.encode()) for s in re.findall(r"<svg.*?</svg>", text, re.S))
    size = page.stat().st_size
    shown = text.count("<tr><td data-v=")
    return {"rows": rows, "page": size, "browser": browser, "plots": plots,
            "rest": size - browser - plots, "shown": shown}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000, 52_002])
    p.add_argument(
        "--long-rows",
        type=int,
        default=2_000,
        help="also a pool of this many rows that are all long (every shown field is cut): the "
        "worst case of the browser's size (0: skip)",
    )
    a = p.parse_args()
    print("| rows | long rows | page bytes | sample browser | plots (SVG) | rest | rows shown |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    runs = [(rows, 50) for rows in a.rows] + ([(a.long_rows, 1)] if a.long_rows else [])
    with tempfile.TemporaryDirectory() as work:
        for rows, every in runs:
            m = measure(rows, Path(work), every)
            print(
                f"| {m['rows']:,} | {'all' if every == 1 else f'1 in {every}'} | {m['page']:,} | "
                f"{m['browser']:,} | {m['plots']:,} | {m['rest']:,} | {m['shown']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
