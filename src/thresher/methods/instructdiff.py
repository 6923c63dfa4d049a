"""InstructDiff (Su, Zhu, …, Chen; arXiv 2601.23006; METHODS §7): warm-up calibration,
bi-directional ΔNLL trim, lowest ΔH.

1. warm-up: a seeded random α·N subset fine-tunes a copy of the model (the calibrator) through
   `thresher.train` in the `fit` step, into `<run>/calibrators/`; a finished calibrator is
   reused on rerun;
2. two `cond` passes: the base model's (shared with ifd / ppl / entropy) and the calibrator's;
3. ΔNLL = L_inst - L_base, ΔH = H_base - H_inst; drop int(γN) rows from each end of ΔNLL
   (status `filtered:dnll_tail`), then take the lowest ΔH, in samples or response tokens;
4. optional K > 1: retrain from the base on the selection, rescore, reselect (paper Alg. 1).

`calibrator` names another model to warm up instead of the base (weak-to-strong, paper
Table 6); it must share the base model's tokenizer so both passes score the same tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from thresher.choices import check_choice
from thresher.data import Sample
from thresher.methods.base import (
    FitContext,
    Fitted,
    Method,
    SelectContext,
    SignalInputs,
    SignalTable,
    merge_status,
    method,
    token_counts,
)
from thresher.methods.table import Finite, TrimTails, budget_rows, make_table
from thresher.passes import PassSpec
from thresher.selectors.base import Selection, budget_count
from thresher.selectors.trim import BUDGET_UNITS, instructdiff_reference, lowest_within_budget
from thresher.signals.instructdiff import (
    delta_entropy,
    delta_nll,
    mean_nll,
    mean_token_entropy,
    reference_diff_entropy,
    reference_diff_nll,
    warmup_indices,
)

TRIM_STATUS = "filtered:dnll_tail"
# scoring.py @ 28adfe3: a row whose prompt or response alone is longer is skipped
REFERENCE_MAX_TOKENS = 4096


@method(
    "instructdiff",
    paper="Su et al., InstructDiff: Domain-Adaptive Data Selection via Differential Entropy, arXiv 2601.23006",
    summary="warm-up-calibrated copy vs base: drop both ΔNLL tails (γ), take the lowest ΔH",
    passes="cond (base) + cond (calibrated copy); warm-up fine-tuning",
    reference_model="the model to be tuned (LLaMA-3-8B / Qwen2.5-7B in the paper)",
    reproducible=True,
)
def instructdiff(
    model: str,
    *,
    reproduce: bool = False,
    alpha: float = 0.1,  # InstructDiff §4.1: warm-up ratio "α = 0.1" (1,000 of 10,000 in the configs)
    gamma: float = 0.1,  # InstructDiff §4.1: NLL reject ratio "γ = 0.1" from each end
    budget_unit: str = "samples",  # METHODS §10.7: samples by default; "tokens" reproduces the code
    iterations: int = 1,  # InstructDiff Alg. 1: K; the main results use one round (§5.4 studies 2-3)
    warmup_seed: int = 42,  # InstructDiff configs: seed 42
    calibrator: str | None = None,  # ours: None warms up the base model itself, as the paper
    calibrated_model: str
    | None = None,  # ours: a calibrated copy you already have (METHODS §12.3): no warm-up is trained
    train_preset: str = "instructdiff-warmup",  # InstructDiff configs: 3 epochs, the domain's lr and batch
    train: dict[str, Any]
    | None = None,  # ours: TrainConfig fields that override the preset, e.g. {"lora": true}
    template: str = "alpaca",  # InstructDiff scoring.py: the Alpaca template (input merged into the prompt here, §7.2 [I])
    max_length: int = 512,  # ours: the cond pass shared with ifd / ppl / entropy
    truncation: str = "prompt_first",  # ours: as `ifd`, never empties the response
) -> Method:
    """ΔH among the middle of ΔNLL, from the base model and a warm-up-calibrated copy.

    Reproduce (METHODS §12.3): the reference's text (no-input prompt, the input ignored, "\n"
    before the response scored as a response token), its 4,096-token skip, its signs, its trim
    (ties in file order) and its token budget (a fraction of the response tokens, the row that
    reaches it included)."""
    from thresher.train import preset

    check_choice("budget_unit", budget_unit, BUDGET_UNITS)
    if calibrated_model is not None and calibrator is not None:
        raise ValueError(
            f"calibrated_model={calibrated_model!r} and calibrator={calibrator!r}: give one, the "
            "copy you already have (no warm-up) or the model to warm up"
        )
    if calibrated_model is not None and iterations != 1:
        raise ValueError(
            f"calibrated_model={calibrated_model!r} with iterations={iterations}: rounds after the "
            "first retrain the copy on the previous selection; give iterations=1 with a copy you have"
        )
    if reproduce:
        budget_unit = "tokens"  # the code's only budget: a fraction of the response tokens
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(
            f"iterations={iterations!r}: expected an int >= 1 (K rounds of calibrate, score, select)"
        )
    if not 0.0 <= gamma < 0.5:
        raise ValueError(
            f"gamma={gamma!r}: expected the fraction trimmed from each end in [0, 0.5), e.g. 0.1"
        )
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: expected the warm-up fraction in (0, 1], e.g. 0.1")
    tcfg = preset(
        train_preset,
        **{
            **(train or {}),
            "template": template,
            "max_length": max_length,
            "truncation": truncation,
        },
    )
    fields = ("logprob", "entropy")
    common = dict(
        view="cond", template=template, fields=fields, max_length=max_length, truncation=truncation
    )
    if reproduce:  # scoring.py: rows whose prompt or response alone exceed 4,096 tokens are skipped
        common.update(boundary="instructdiff", max_length=REFERENCE_MAX_TOKENS)
    passes = {
        "cond": PassSpec(model=model, **common),
        # the calibrated copy you gave, or the one `fit` trains (from `calibrator`, else the base)
        "calibrated": PassSpec(model=calibrated_model or calibrator or model, **common),
    }

    def signals(x: SignalInputs) -> dict[str, np.ndarray]:
        base, inst = x.stats["cond"], x.stats["calibrated"]
        if reproduce:  # selection.py: base - calibrated, each mean rounded to fp32 as scoring.py
            nll = {"diff_nll": reference_diff_nll(base.logprob, inst.logprob)}
            dh = reference_diff_entropy(base.entropy, inst.entropy)
        else:
            nll = {"delta_nll": delta_nll(base.logprob, inst.logprob)}
            dh = delta_entropy(base.entropy, inst.entropy)
        return {
            "delta_entropy": dh,
            **nll,
            "nll_base": mean_nll(base.logprob),
            "nll_calibrated": mean_nll(inst.logprob),
            "entropy_base": mean_token_entropy(base.entropy),
            "entropy_calibrated": mean_token_entropy(inst.entropy),
            **token_counts(base),
        }

    nll_column = "diff_nll" if reproduce else "delta_nll"
    filters = (
        Finite((nll_column, "delta_entropy")),
        # the reference sorts stably, so its ties keep file order; thresher's break by id
        TrimTails(nll_column, gamma, TRIM_STATUS, ties="position" if reproduce else "id"),
    )

    def select(table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        dh = table.columns["delta_entropy"]
        if reproduce:
            if not isinstance(budget, float):
                raise ValueError(
                    f"budget={budget!r}: instructdiff --reproduce selects a fraction of the response "
                    "tokens (the code's beta); give --fraction, e.g. --fraction 0.1"
                )
            scored = np.array([s in ("ok", TRIM_STATUS) for s in table.status])
            tokens = table.columns["n_response_tokens"]
            _, sel = instructdiff_reference(
                table.ids,
                table.columns["diff_nll"],
                dh,
                tokens,
                gamma=gamma,
                beta=budget,
                keep=scored,
            )
            return sel
        if budget_unit == "samples":
            b = budget_rows(table, budget, ctx, "rows")
            return lowest_within_budget(table.ids, dh, b, keep=table.eligible)
        # select_lowest_diff_entropy: a fraction of the response tokens of the whole scored pool,
        # before the trim
        tokens = np.asarray(table.columns["n_response_tokens"], dtype=np.int64)
        scored = np.array([s == "ok" or s.startswith("filtered:") for s in table.status])
        total = int(tokens[scored].sum())
        n_tokens = int(budget * total) if isinstance(budget, float) else budget_count(budget, total)
        return lowest_within_budget(
            table.ids, dh, n_tokens, keep=table.eligible, unit="tokens", tokens=tokens
        )

    def fit(ctx: FitContext) -> Fitted:
        """Warm up the calibrated copy (round k > 0 retrains from the base on round k-1's
        selection, paper Alg. 1); the calibrated pass then runs on it. (`validate` has checked
        that the calibrator shares the base model's tokenizer.)"""
        if iterations > 1 and ctx.budget is None:
            raise ValueError(
                f"iterations={iterations} selects a subset between rounds: give the budget too "
                "(--fraction or --count), or score with iterations=1"
            )
        lm = ctx.load_model(calibrator or model)
        by_id = {s.id: s for s in ctx.samples}
        subset = [ctx.samples[i] for i in warmup_indices(len(ctx.samples), alpha, warmup_seed)]
        folder = None
        for k in range(iterations):
            folder = _calibrate(ctx, lm, subset, tcfg, k)
            if k == iterations - 1:
                break
            calibrated = dataclasses.replace(passes["calibrated"], model=str(folder))
            stats = {
                "cond": ctx.run_pass("cond", passes["cond"]),
                "calibrated": ctx.run_pass(f"calibrated{k}", calibrated),
            }
            inputs = SignalInputs(stats, ctx.samples, {**passes, "calibrated": calibrated})
            table = make_table(this, inputs, merge_status(*stats.values()))
            sel = select(table, ctx.budget, SelectContext(len(ctx.samples), ctx.seed))
            subset = [by_id[i] for i in sel.ids]  # the next round retrains from the base on D'^(k)
        return Fitted(models={"calibrated": str(folder)})

    params = dict(
        alpha=alpha,
        gamma=gamma,
        budget_unit=budget_unit,
        iterations=iterations,
        warmup_seed=warmup_seed,
        calibrator=calibrator,
        calibrated_model=calibrated_model,
        train_preset=train_preset,
        train=dict(train or {}),
        template=template,
        max_length=max_length,
        truncation=truncation,
    )
    this = Method(
        "instructdiff",
        {"reproduce": reproduce, **params},
        passes,
        signals,
        "delta_entropy",
        select,
        filters,
        fit=None if calibrated_model else fit,
    )
    return this


def _calibrate(ctx: FitContext, lm: Any, subset: list[Sample], tcfg: Any, k: int) -> Any:
    """Train (or reuse) the calibrator of round k; its folder is named by what it depends on."""
    from thresher.train import train

    record = {
        "model": lm.info.weights_sha256,
        "config": dataclasses.asdict(tcfg),
        "samples": sorted(s.id for s in subset),
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    folder = ctx.work_dir / "calibrators" / f"round{k}-{digest}"
    train(subset, lm, folder, tcfg, progress=ctx.progress)
    return folder
