"""A held-out split of a pool that never shares an id or a content hash with the training rows,
and the content hashes of a run's pool (what a model trained from it may have seen)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from thresher import data as data_mod
from thresher.data import Sample
from thresher.rundir import RunFolder


def content_hash(sample: Sample) -> str:
    """sha256 of the turns (role, text): equal for the same example under different ids."""
    turns = [[m.role, m.content] for m in sample.messages]
    return hashlib.sha256(
        json.dumps(turns, ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()


def split_heldout(
    samples: list[Sample], fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(pool, heldout): about `fraction` of the rows held out, deterministic for a seed.

    Rows are assigned by content, not by id, so copies of one example always land on the same
    side; the result is checked to share no id and no content hash.
    """
    if not 0 < fraction < 1:
        raise ValueError(
            f"fraction={fraction}: expected a share strictly between 0 and 1, e.g. 0.1"
        )
    hashes = [content_hash(s) for s in samples]
    order = sorted(set(hashes), key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    size = Counter(hashes)
    target, held, n = round(fraction * len(samples)), set(), 0
    for h in order:
        if n >= target:
            break
        held.add(h)
        n += size[h]
    pool = [s for s, h in zip(samples, hashes, strict=True) if h not in held]
    heldout = [s for s, h in zip(samples, hashes, strict=True) if h in held]
    check_disjoint(pool, heldout)
    return pool, heldout


def check_disjoint(train: list[Sample], heldout: list[Sample]) -> None:
    """Raise if any held-out row shares an id or a content hash with the training rows."""
    ids = {s.id for s in train} & {s.id for s in heldout}
    train_hashes = {content_hash(s) for s in train}
    same = [s.id for s in heldout if content_hash(s) in train_hashes]
    if ids or same:
        raise ValueError(
            f"the held-out rows overlap the training rows: {len(ids)} shared ids (e.g. {sorted(ids)[:3]}), "
            f"{len(same)} held-out rows with training content (e.g. {same[:3]}); split again with split_heldout"
        )


def write_split(
    source: str, out_dir: str | Path, fraction: float, seed: int = 0, **read_kwargs: Any
) -> tuple[Path, Path]:
    """Read `source`, split it, write `pool.jsonl` and `heldout.jsonl` (original records) into `out_dir`."""
    from thresher.atomic import write_jsonl

    read = data_mod.read(source, **read_kwargs)
    pool, heldout = split_heldout(read.samples, fraction, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "pool.jsonl", out / "heldout.jsonl"
    for path, rows in zip(paths, (pool, heldout), strict=True):
        write_jsonl([s.meta["record"] for s in rows], path)
    return paths


def pool_hashes(run_dir: Path) -> set[str]:
    """Content hashes of a run's whole input pool (what a model trained from it may have seen)."""
    cfg = RunFolder(run_dir).read_manifest()["config"]["data"]
    read = data_mod.read(
        cfg["path"],
        format=cfg["format"],
        columns=cfg["columns"] or None,
        roles=cfg["roles"] or None,
        id_column=cfg["id_column"],
        split=cfg["split"],
        limit=cfg["limit"],
        allow_mixed=cfg["allow_mixed"],
    )
    return {content_hash(s) for s in read.samples}
