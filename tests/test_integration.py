"""The real packaged model on a small slice of real data (marked `integration`; runs in CI)."""

from __future__ import annotations

import math

import pytest

from thresher.config import RunConfig
from thresher.pipeline import run

pytestmark = pytest.mark.integration


def test_ifd_on_40_real_rows(smollm2, shared_data, tmp_path):
    cfg = RunConfig()
    cfg.data.path = str(shared_data / "alpaca_en_demo.json")
    cfg.data.limit = 40
    cfg.method.name = "ifd"
    cfg.select.fraction = 0.1
    cfg.output.dir = str(tmp_path / "run")
    cfg.score.progress = False
    result, sel, manifest = run(cfg, loaded=smollm2)
    t = result.table
    nonempty = {s.id for s in result.samples if s.response.strip()}
    assert result.read.rows_read == 40 and len(nonempty) >= 38
    for i, status, v in zip(t.ids, t.status, t.columns["ifd"], strict=True):
        if i in nonempty:
            assert status == "ok" or status.startswith("filtered:"), (i, status)
            assert math.isfinite(v), (i, v)
    assert len(sel.ids) == min(int(0.1 * len(result.samples)), sel.eligible)
    assert manifest["model"]["hf_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_smollm2_views_start_where_documents_start(smollm2):
    from thresher.data import Message, Sample
    from thresher.passes import PassSpec
    from thresher.templates import Renderer

    tok = smollm2.tokenizer
    sample = Sample("x", (Message("user", "Say hi."), Message("assistant", "Hi!")), "Say hi.")
    u = Renderer(tok, PassSpec(model="m", view="uncond")).render(sample)
    c = Renderer(tok, PassSpec(model="m", view="cond")).render(sample)
    # SmolLM2 adds no BOS; its document separator <|endoftext|> (id 0) starts the uncond view
    assert u.ids[0] == tok.convert_tokens_to_ids("<|endoftext|>") == 0
    assert c.ids[0] != tok.bos_token_id and list(u.ids[1:]) == list(
        c.ids[c.scored[0] : c.scored[1]]
    )
