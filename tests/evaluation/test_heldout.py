"""The held-out split never overlaps the pool by id or by content."""

from __future__ import annotations

import json

import pytest

from lmstub import sample
from thresher.data import Sample
from thresher.evaluation import heldout


def rows(n: int) -> list[Sample]:
    out = [sample(i, f"instruction {i}", f"response {i}") for i in range(n)]
    # three copies of one example under other ids: content duplicates
    return out + [sample(100 + k, "instruction 0", "response 0") for k in range(3)]


def test_split_heldout_never_overlaps_by_id_or_content():
    samples = rows(200)
    for seed in range(3):
        pool, held = heldout.split_heldout(samples, 0.1, seed)
        assert len(pool) + len(held) == len(samples)
        assert abs(len(held) - 20) <= 4  # copies of one example move together
        assert not {s.id for s in pool} & {s.id for s in held}
        assert not {heldout.content_hash(s) for s in pool} & {heldout.content_hash(s) for s in held}
    assert heldout.split_heldout(samples, 0.1, 0) == heldout.split_heldout(samples, 0.1, 0)
    assert heldout.split_heldout(samples, 0.1, 0)[1] != heldout.split_heldout(samples, 0.1, 1)[1]


def test_check_disjoint_catches_shared_ids_and_shared_content():
    a = [sample(0, "q", "a"), sample(1, "q1", "a1")]
    with pytest.raises(ValueError, match="1 shared ids"):
        heldout.check_disjoint(a, [sample(1, "other", "text")])
    with pytest.raises(ValueError, match="1 held-out rows with training content"):
        heldout.check_disjoint(a, [sample(7, "q", "a")])
    heldout.check_disjoint(a, [sample(7, "q2", "a2")])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        heldout.split_heldout(a, 1.0)


def test_write_split_round_trips_records(tmp_path):
    src = tmp_path / "pool.jsonl"
    src.write_text(
        "".join(
            json.dumps({"instruction": f"i{k}", "input": "", "output": f"o{k}"}) + "\n"
            for k in range(50)
        )
    )
    pool_path, held_path = heldout.write_split(str(src), tmp_path / "split", 0.2, seed=3)
    pool = [json.loads(x) for x in pool_path.read_text().splitlines()]
    held = [json.loads(x) for x in held_path.read_text().splitlines()]
    assert len(held) == 10 and len(pool) == 40
    assert not {r["instruction"] for r in pool} & {r["instruction"] for r in held}
