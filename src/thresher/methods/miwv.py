"""MIWV (Jiang et al., Importance-Aware Data Selection for Efficient LLM Instruction Tuning,
AAAI-26; METHODS §3): how much a retrieved one-shot demonstration hurts the response loss.

`fit` embeds every instruction without template boilerplate (cached in the run folder, where
`kcenter` reuses the embeddings), finds each sample's nearest other sample, and hands the `oneshot` pass its demonstrations together with a hash of the
assignment, so the cached one-shot pass is recomputed whenever the neighbours change. The
zero-shot loss reuses the `cond` pass of `ifd` (same spec), and `icl_ifd` its `uncond` pass.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from thresher.choices import check_choice
from thresher.data import Sample
from thresher.embed import nearest_other, resolve_embedder
from thresher.methods.base import FitContext, Fitted, Method, SignalInputs, method, token_counts
from thresher.methods.table import Finite, TopK
from thresher.passes import DEMO_VIEWS, PassSpec
from thresher.signals.miwv import VARIANTS, icl_ifd, miwv, prompt_loss, response_loss

log = logging.getLogger(__name__)


def instruction_text(sample: Sample) -> str:
    """What is embedded: the raw `instruction[\\ninput]`, no template (METHODS §3.3, §10.3)."""
    return f"{sample.instruction}\n{sample.input}" if sample.input else sample.instruction


def assign_demos(
    samples: list[Sample], emb: np.ndarray, skip_above: float | None = None
) -> tuple[dict[str, Sample], np.ndarray]:
    """Each sample's nearest other sample by cosine of its instruction embedding (rows of `emb`,
    L2-normalised), and that cosine."""
    idx, sim = nearest_other(emb, [s.id for s in samples], skip_above=skip_above)
    return {s.id: samples[j] for s, j in zip(samples, idx, strict=True) if j >= 0}, sim


@method(
    "miwv",
    paper="Jiang et al., Importance-Aware Data Selection for Efficient LLM Instruction Tuning (MIWV), AAAI 2026",
    summary="one-shot loss with the nearest other sample as demonstration minus the zero-shot loss; highest first",
    passes="cond (as ifd) + oneshot (+ oneshot_uncond, or uncond, for icl_ifd) + instruction embeddings",
    reference_model="the model to be tuned (LLaMA-2-7B in the paper)",
)
def miwv_method(
    model: str,
    *,
    variant: str = "miwv",  # MIWV Eq. 8 ranks by L(y|x,C) - L(y|x); icl_ifd and prompt_loss are the §4.7 / Fig. 3a variants
    embedder: str = "all-minilm-l6-v2",  # ours: offline and small; the paper used BGE-large-en (`--embedder BAAI/bge-large-en-v1.5`)
    template: str = "alpaca",  # MIWV §3.1: "aligned with the original target dataset" (Alpaca codebase, its template)
    max_length: int = 512,  # ours: the Alpaca codebase's 512, and the same cond pass as `ifd`
    truncation: str = "prompt_first",  # ours: as `ifd`, so the cond pass is shared
    skip_above: float
    | None = None,  # ours: None keeps exact duplicates as demonstrations (argmax over j != i, METHODS §3.3)
    icl_denominator: str = "demo",  # icl_ifd only. Not given by the paper; METHODS §3.6 resolution: L(y|C) ("demo"); "plain" = L(y), Cherry's
) -> Method:
    """MIWV = L(y | x, C) − L(y | x) with C the nearest other sample; top-b, highest first."""
    check_choice("variant", variant, VARIANTS)
    check_choice("icl_denominator", icl_denominator, ("demo", "plain"))
    # a packaged alias whose wheel is missing fails here, before any model loads
    resolve_embedder(embedder)
    common = dict(model=model, template=template, max_length=max_length, truncation=truncation)
    passes = {
        "cond": PassSpec(view="cond", fields=("logprob", "entropy"), **common),  # = ifd's cond pass
        "oneshot": PassSpec(view="oneshot", fields=("logprob",), **common),
    }
    # the ICL-IFD denominator: the demonstration then the response (L(y|C)), or ifd's uncond pass (L(y))
    denominator = (
        {"demo": "oneshot_uncond", "plain": "uncond"}[icl_denominator]
        if variant == "icl_ifd"
        else None
    )
    if denominator is not None:
        passes[denominator] = PassSpec(view=denominator, fields=("logprob",), **common)

    def fit(ctx: FitContext) -> Fitted:
        emb = ctx.embed(embedder, [instruction_text(s) for s in ctx.samples])
        demos, sim = assign_demos(ctx.samples, emb, skip_above)
        chosen = {
            s.id: (demos[s.id].id, float(v))
            for s, v in zip(ctx.samples, sim, strict=True)
            if s.id in demos
        }
        pairs = json.dumps(sorted((i, d) for i, (d, _) in chosen.items()))
        log.info("MIWV: %d demonstrations assigned by %s", len(chosen), embedder)
        # the one-shot pass depends on the assignment only: another embedder that picks the same
        # neighbours reuses it, any changed neighbour recomputes it
        roles = [role for role, spec in passes.items() if spec.view in DEMO_VIEWS]
        key = {"demos_sha256": hashlib.sha256(pairs.encode()).hexdigest()}
        return Fitted(
            state=chosen,
            demos={role: demos for role in roles},
            key_extra={role: key for role in roles},
        )

    def signals(x: SignalInputs) -> dict[str, np.ndarray]:
        cond, one = x.stats["cond"], x.stats["oneshot"]
        chosen = x.state
        values = {"miwv": miwv(one.logprob, cond.logprob), "prompt_loss": prompt_loss(one.logprob)}
        if denominator:
            values["icl_ifd"] = icl_ifd(one.logprob, x.stats[denominator].logprob)
        return {
            **values,
            "loss_cond": response_loss(cond.logprob),
            "demo_id": np.array([chosen.get(i, ("", np.nan))[0] for i in x.ids], dtype=object),
            "demo_similarity": np.array([chosen.get(i, ("", np.nan))[1] for i in x.ids]),
            "demo_truncated": np.array(["demo" in t.split("+") for t in one.truncated]),
            **token_counts(cond),
            "n_scored_oneshot": one.n_scored,
        }

    params = dict(
        variant=variant,
        embedder=embedder,
        template=template,
        max_length=max_length,
        truncation=truncation,
        skip_above=skip_above,
    )
    if denominator:
        params["icl_denominator"] = icl_denominator
    # MIWV §3.3: highest first
    select = TopK(variant)
    return Method("miwv", params, passes, signals, variant, select, (Finite((variant,)),), fit=fit)
