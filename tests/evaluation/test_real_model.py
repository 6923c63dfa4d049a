"""Evaluation on the packaged model (marked `integration`; runs in CI)."""

from __future__ import annotations

import pytest

from thresher import evaluation as ev

pytestmark = pytest.mark.integration


def test_eval_nll_and_multiple_choice_on_real_files(smollm2, shared_data):
    nll = ev.run_task(smollm2, ev.TaskSpec("nll", str(shared_data / "gsm8k_test.jsonl")), limit=6)
    assert nll.evaluated == 6 and not nll.skipped and 0.3 < nll.metrics["nll_token"] < 5
    mc = ev.run_task(smollm2, ev.TaskSpec("mc", str(shared_data / "mmlu_stem_test.jsonl")), limit=6)
    assert mc.evaluated == 6 and 0.0 <= mc.metrics["acc"] <= 1.0 and mc.metrics["chance"] == 0.25
