"""Cache keys, shard commit protocol and per-sample resume."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher import cache
from thresher.cache import CacheMismatch, PassStore, cache_key, key_material, pass_label
from thresher.passes import PASS_VERSION, PassSpec, Pooling

INFO = {
    "hf_id": "org/m",
    "revision": None,
    "dtype": "float32",
    "weights_sha256": "w1",
    "tokenizer_hash": "t1",
    "chat_template_hash": None,
}


def material(spec=None, info=INFO, template="T", data="d1"):
    return key_material(spec or PassSpec(model="m"), info, template, data)


def columns(ids, n=2):
    return {
        "id": ids,
        "status": ["ok"] * len(ids),
        "n_prompt_tokens": [3] * len(ids),
        "n_response_tokens": [n] * len(ids),
        "n_scored": [n] * len(ids),
        "truncated": [""] * len(ids),
        "logprob": [np.full(n, -float(k + 1), np.float32) for k in range(len(ids))],
        "entropy": None,
        "activations": {},
    }


def test_load_in_a_given_order_with_only_the_activations_asked_for(tmp_path):
    spec = PassSpec(
        model="m",
        fields=("logprob",),
        pooling=Pooling(sources=("hidden",), layers=(0, 1), how="mean"),
    )
    store = PassStore(tmp_path, spec, material(spec))
    store.open()
    rows = {
        i: np.arange(3, dtype=np.float32) + 10 * k for k, i in enumerate("abcde")
    }  # row of id i, layer 0; layer 1 = minus it
    for part in (["d", "a"], ["e"], ["c", "b"]):
        cols = columns(part)
        cols["activations"] = {
            "hidden.0": np.stack([rows[i] for i in part]),
            "hidden.1": -np.stack([rows[i] for i in part]),
        }
        store.write_shard(cols)
    got = store.load(order=["b", "e", "a", "c", "d"])
    assert got.ids == ["b", "e", "a", "c", "d"] and set(got.activations) == {"hidden.0", "hidden.1"}
    np.testing.assert_array_equal(got.activations["hidden.0"], np.stack([rows[i] for i in got.ids]))
    np.testing.assert_array_equal(
        got.activations["hidden.1"], -np.stack([rows[i] for i in got.ids])
    )
    only = store.load(("hidden.1",), order=["c", "a"])  # a subset of the stored ids, one layer
    assert only.ids == ["c", "a"] and list(only.activations) == ["hidden.1"]
    np.testing.assert_array_equal(only.activations["hidden.1"], -np.stack([rows["c"], rows["a"]]))
    assert store.load(()).activations == {}
    stored = store.load()  # no order: the rows as stored, activations aligned with them
    assert sorted(stored.ids) == list("abcde")
    np.testing.assert_array_equal(
        stored.activations["hidden.0"], np.stack([rows[i] for i in stored.ids])
    )
    with pytest.raises(KeyError, match=r"hidden\.7"):
        store.load(("hidden.7",))
    with pytest.raises(KeyError, match="no row"):
        store.load(order=["a", "z"])
    # the streamed view: shard by shard, the same rows, only the columns asked for
    shards = list(store.scan(("hidden.0",)))
    assert sorted(len(x.ids) for x in shards) == [1, 2, 2] and sorted(
        i for x in shards for i in x.ids
    ) == list("abcde")
    for x in shards:
        assert list(x.activations) == ["hidden.0"]
        np.testing.assert_array_equal(x.activations["hidden.0"], np.stack([rows[i] for i in x.ids]))


def test_key_changes_with_each_input_and_not_with_batch_size():
    base = cache_key(material())
    assert cache_key(material()) == base
    assert cache_key(material(info={**INFO, "weights_sha256": "w2"})) != base
    assert cache_key(material(info={**INFO, "tokenizer_hash": "t2"})) != base
    assert cache_key(material(template="T2")) != base
    assert cache_key(material(data="d2")) != base
    assert cache_key(material(spec=PassSpec(model="m", max_length=1024))) != base
    assert cache_key(material(spec=PassSpec(model="m", fields=("logprob", "entropy")))) != base
    m = material()
    m["pass_version"] = PASS_VERSION + 1
    assert cache_key(m) != base
    # batch size, shard size and worker count are not inputs of the key at all
    assert not any(k in json.dumps(material()) for k in ("batch", "shard", "worker"))


def test_shards_commit_and_reload(tmp_path):
    store = PassStore(tmp_path, PassSpec(model="m"), material())
    assert store.open() == 0
    store.write_shard(columns(["a", "b"]))
    store.write_shard(columns(["c"], n=3))
    stats = store.load()
    assert sorted(stats.ids) == ["a", "b", "c"]
    got = stats.align(["c", "a", "b"])
    np.testing.assert_array_equal(got.logprob.row(0), [-1, -1, -1])
    np.testing.assert_array_equal(got.logprob.row(2), [-2, -2])
    assert store.finished_ids() == {"a", "b", "c"}


def test_unmarked_shard_is_discarded_and_never_read(tmp_path):
    store = PassStore(tmp_path, PassSpec(model="m"), material())
    store.open()
    path = store.write_shard(columns(["a"]))
    path.with_suffix(".done").unlink()  # killed between the rename and the marker
    (store.dir / "shard-x.parquet.tmp").write_bytes(b"half")
    again = PassStore(tmp_path, PassSpec(model="m"), material())
    assert again.open() == 1
    assert again.finished_ids() == set() and not path.exists()
    assert not list(store.dir.glob("*.tmp"))


def test_corrupt_shard_is_an_error(tmp_path):
    store = PassStore(tmp_path, PassSpec(model="m"), material())
    store.open()
    path = store.write_shard(columns(["a"]))
    path.write_bytes(path.read_bytes()[:-8] + b"garbage!")  # a broken footer: not even readable
    with pytest.raises(RuntimeError, match="cannot be read"):
        store.load()
    path.unlink()
    path.with_suffix(".done").unlink()
    path = store.write_shard(columns(["b"]))
    pq.write_table(
        cache._to_table(columns(["b"], n=3)), path
    )  # readable, but not the bytes committed
    with pytest.raises(RuntimeError, match="does not match its completion marker"):
        store.load()


def test_changed_inputs_are_refused_naming_the_change(tmp_path):
    PassStore(tmp_path, PassSpec(model="m"), material()).open()
    with pytest.raises(CacheMismatch) as e:
        PassStore(
            tmp_path, PassSpec(model="m"), material(info={**INFO, "weights_sha256": "w2"})
        ).open()
    assert "model.weights_sha256: 'w1' -> 'w2'" in str(e.value) and "--overwrite" in str(e.value)
    with pytest.raises(CacheMismatch, match="template_sha256"):
        PassStore(tmp_path, PassSpec(model="m"), material(template="other")).open()
    with pytest.raises(CacheMismatch, match=r"pass\.max_length: 512 -> 256"):
        PassStore(
            tmp_path,
            PassSpec(model="m", max_length=256),
            material(spec=PassSpec(model="m", max_length=256)),
        ).open()
    # --overwrite starts fresh
    fresh = PassStore(tmp_path, PassSpec(model="m"), material(template="other"))
    fresh.open(overwrite=True)
    assert fresh.finished_ids() == set()


def test_pass_labels():
    assert pass_label(PassSpec(model="m")) == "cond.alpaca"
    assert (
        pass_label(PassSpec(model="m", view="uncond", template="plain", boundary="superfiltering"))
        == "uncond.plain.superfiltering"
    )
    assert (
        pass_label(PassSpec(model="m", template="Q: {instruction}", fields=()))
        == "cond.custom.tokens"
    )


def test_a_retried_row_supersedes_its_failure_in_commit_order(tmp_path):
    store = PassStore(tmp_path, PassSpec(model="m"), material())
    store.open()
    for k, status in enumerate(("error:RuntimeError", "error:MemoryError")):
        cols = columns(["a", f"x{k}"])
        cols["status"][0] = status
        store.write_shard(cols)
    assert "a" not in store.finished_ids() and "a" in store.stored_ids()
    assert (
        store.load().status[store.load().ids.index("a")] == "error:MemoryError"
    )  # the newest failure stands
    store.write_shard(columns(["a"], n=3))
    got = store.load()
    assert (
        got.ids.count("a") == 1
        and got.status[got.ids.index("a")] == "ok"
        and len(got.logprob.row(got.ids.index("a"))) == 3
    )
    assert "a" in store.finished_ids()
    with pytest.raises(RuntimeError, match="holds sample 'a' twice"):
        store.write_shard(columns(["a"]))
        store.load()
