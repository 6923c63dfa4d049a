"""Benchmark (issue "first hour", item 1): the memory `thresher validate` needs on a large file.

Writes an Alpaca-GPT4-sized file (default 52,002 rows: the rows of the shared Alpaca demo file
repeated, each copy's instruction suffixed with its copy number so every row is distinct), as
a JSON array (Alpaca-GPT4's own format) or as JSON lines, then runs three child processes and
prints each one's peak RSS:

  baseline   imports thresher's validate code, torch and transformers, loads the tokenizer
  read       + `thresher.data.read` of the file: every row held as a Sample, as a run holds them
  validate   + `dryrun.plan` (what `thresher validate --method ifd` computes): the data streamed
             row by row, twice, every row rendered for both IFD passes (tokenizer only)

The figure is each child's peak over the baseline's. validate keeps per row and pass its id and
two token counts, so its peak grows with the file only by those; a JSON array's text is held
while its elements are decoded one at a time.

Examples:
    python bench/validate_memory.py
    python bench/validate_memory.py --rows 10000 --format jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"
MODEL = "smollm2-135m"

CHILD = """
import json, resource, sys
sys.path.insert(0, {src!r})
from thresher import dryrun, pipeline
from thresher.config import RunConfig
from thresher.models import load_tokenizer
load_tokenizer({model!r})
cfg = RunConfig()
cfg.data.path, cfg.model.name, cfg.method.name = {path!r}, {model!r}, "ifd"
cfg.output.dir = {out!r}
what = {what!r}
info = {{}}
if what == "read":
    r = pipeline.read_data(cfg)
    info["rows"] = len(r.samples)
elif what == "validate":
    plan = dryrun.plan(cfg)
    info["rows"] = plan.read.readable
    info["tokens"] = int(sum(p.lengths.sum() for p in plan.passes))
info["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(info))
"""


def write_rows(path: Path, rows: int, fmt: str) -> None:
    base = json.loads(DATA.read_text())
    out = []
    for k in range(rows):
        r = dict(base[k % len(base)])
        r["instruction"] = f"{r['instruction']} ({k // len(base) + 1})"
        out.append(r)
    if fmt == "json":
        path.write_text(json.dumps(out, ensure_ascii=False, indent=1))
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))


def child(what: str, path: Path, out: Path) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), model=MODEL, path=str(path), out=str(out), what=what)
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=False
    )
    if res.returncode:
        raise SystemExit(f"the {what} child failed:\n{res.stderr[-3000:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["seconds"] = time.perf_counter() - t
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/validate_memory.py", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=52002, help="rows of the file (default 52002)")
    p.add_argument("--format", choices=["json", "jsonl"], default="json")
    args = p.parse_args(argv)
    if not DATA.is_file():
        print(f"skipped: {DATA} not found")
        return 0
    print(
        f"bench/validate_memory.py: {args.rows} rows as {args.format}, {MODEL} tokenizer; "
        f"{time.strftime('%Y-%m-%d')}; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"rows.{args.format}"
        write_rows(path, args.rows, args.format)
        print(f"   file: {path.stat().st_size / 2**20:.1f} MB", flush=True)
        got = {w: child(w, path, Path(tmp) / "out") for w in ("baseline", "read", "validate")}
    base = got["baseline"]["peak_mb"]
    print(f"   baseline (imports, tokenizer): peak {base:.0f} MB")
    for w in ("read", "validate"):
        g = got[w]
        extra = f", {g['tokens']:,} tokens rendered" if "tokens" in g else ""
        print(
            f"   {w:9s} {g['rows']} rows: peak {g['peak_mb']:.0f} MB, {g['peak_mb'] - base:+.0f} MB "
            f"over the baseline ({g['seconds']:.0f} s{extra})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
