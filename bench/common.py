"""What the benchmarks that select from real pools share: where the real data lives, the held-out
split of alpaca_en_demo, and one cached selection step through `thresher.pipeline.run`.

Imported by `bench/selection_quality.py`, `bench/properties.py` and, for `machine()`, the speed
benchmarks (run as scripts, so this folder is on `sys.path`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from thresher.config import RunConfig
from thresher.data import Sample, read
from thresher.evaluation import split_heldout
from thresher.pipeline import run
from thresher.pipeline import select as reselect

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HELDOUT_FRACTION = 0.2  # ours: 200 of alpaca_en_demo's 999 rows are never in a pool
# what a run folder's outputs are copied into an arm's folder for later reading
COPY = ("scores.parquet", "manifest.json", "selected.jsonl", "rejected.jsonl", "trl.jsonl")


def machine() -> str:
    """The CPU flags that decide precision and speed, and the core count: printed with every
    benchmark figure."""
    from thresher.models import NATIVE_BF16_CPU_FLAGS, cpu_flags

    flags = cpu_flags() or frozenset()
    shown = ("avx2", "fma", "avx512f", *NATIVE_BF16_CPU_FLAGS)
    absent = " ".join(f for f in shown if f not in flags) or "-"
    return f"cpu flags: {' '.join(f for f in shown if f in flags)} (absent: {absent}); {os.cpu_count()} cores"


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def require_shared(files: tuple[str, ...]) -> None:
    if not SHARED.is_dir():
        raise SystemExit(
            f"the real data folder {SHARED} is missing: this benchmark reads {', '.join(files)} from it"
        )


def alpaca_split() -> tuple[list[Sample], list[Sample]]:
    """alpaca_en_demo.json as (rows a pool may use, the held-out rows), split by content hash
    (`evaluation.split_heldout`, seed 0): the two never share an id or a content hash."""
    alpaca = read(str(SHARED / "alpaca_en_demo.json"), format="alpaca")
    return split_heldout(alpaca.samples, HELDOUT_FRACTION, seed=0)


def select_cached(
    folder: Path,
    settings: dict[str, Any],
    cfg: RunConfig,
    fractions: list[float],
    *,
    loaded: Any = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One arm's selection at each fraction, reused from `folder/selection.json` when `settings`
    (everything the selection depends on, as the caller states it) are unchanged.

    `thresher.pipeline.run` scores and selects at the first fraction (its outputs are copied into
    `folder`); the others are selected again from the same scores. The record holds `ids` (the
    first fraction's selection), `ids_by_fraction`, `notes`, `seconds` and the passes as they ran;
    `changed` is True when an older selection with other settings was replaced."""
    marker = folder / "selection.json"
    old = json.loads(marker.read_text()) if marker.is_file() else None
    if old is not None and old["settings"] == settings:
        have = old.get("ids_by_fraction") or {str(fractions[0]): old["ids"]}
        if all(str(f) in have for f in fractions):
            return {**old, "ids_by_fraction": have, "reused": True, "changed": False}
    cfg = copy.deepcopy(cfg)
    cfg.select.fraction, cfg.select.count = fractions[0], None
    t0 = time.perf_counter()
    result, sel, manifest = run(cfg, loaded=loaded)
    by_fraction, notes = {str(fractions[0]): list(sel.ids)}, {str(fractions[0]): sel.note}
    for f in fractions[1:]:
        again = copy.deepcopy(cfg)
        again.select.fraction = f
        s = reselect(result, again)
        by_fraction[str(f)], notes[str(f)] = list(s.ids), s.note
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    for f in COPY:
        shutil.copy2(Path(cfg.output.dir) / f, folder / f)
    record = {
        "settings": settings,
        "ids": by_fraction[str(fractions[0])],
        "ids_by_fraction": by_fraction,
        "seconds": seconds,
        "note": sel.note,
        "notes": notes,
        "passes": {
            r: {k: p[k] for k in ("label", "scored", "reused")}
            for r, p in manifest["passes"].items()
        },
        **(extra or {}),
    }
    marker.write_text(json.dumps(record, indent=1))
    return {**record, "reused": False, "changed": old is not None}
