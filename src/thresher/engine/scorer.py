"""The scorer: one callable class that loads a model once and scores batches of samples.

The local engine calls it in-process; a distributed engine constructs it once per worker.
Rows are sorted by length and packed into batches up to a token budget (rows x padded
length), so padding stays small. A batch that raises is retried row by row, so only the row
that fails is rejected (status `error:<ExceptionType>`), never its batch-mates.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from thresher.backends.hf import HFBackend
from thresher.data import Sample
from thresher.passes import DEMO_VIEWS, PassSpec
from thresher.templates import NoiseKey, Rendered, Renderer

log = logging.getLogger(__name__)

# ours: measured on 2 CPU cores (bench/passes.py), small batches of length-sorted rows are
# fastest; on a GPU raise it to fill the device
DEFAULT_BATCH_TOKENS = 2048


class Scorer:
    """Scores samples for one PassSpec with one loaded model (`model`, `tokenizer`)."""

    def __init__(
        self,
        spec: PassSpec,
        model: Any,
        tokenizer: Any,
        *,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> None:
        self.spec = spec
        self.renderer = Renderer(tokenizer, spec)
        self.backend = HFBackend(model, tokenizer) if spec.forward else None
        if self.backend is not None:
            self.backend.check(spec)
        self.batch_tokens = batch_tokens
        self.widths = self.backend.activation_widths(spec) if self.backend is not None else {}
        # T-SHIRT: the uncond copies reuse the response slice of the cond copies' noise, so each
        # uncond row's noise key comes from its cond view
        self.cond_renderer = (
            Renderer(tokenizer, dataclasses.replace(spec, view="cond"))
            if spec.noise is not None and spec.view == "uncond"
            else None
        )

    def render(
        self, samples: list[Sample], demos: dict[str, Sample] | None = None
    ) -> list[Rendered]:
        """Every sample's row for this pass. A noisy pass needs `samples` to be the whole dataset
        in file order when its noise is the reference stream (each sample's draw starts where the
        previous sample's ended)."""
        if self.spec.view in DEMO_VIEWS:
            return [self.renderer.render(s, (demos or {}).get(s.id)) for s in samples]
        rendered = [self.renderer.render(s) for s in samples]
        if self.spec.noise is None:
            return rendered
        states = self._reference_states(samples) if self.spec.noise.stream == "reference" else {}
        return [
            self._with_noise_key(s, r, states.get(s.id))
            for s, r in zip(samples, rendered, strict=True)
        ]

    def _with_noise_key(self, sample: Sample, r: Rendered, state: bytes | None) -> Rendered:
        """The row with its noise key: the cond view's length and response start. An uncond row
        whose cond view cannot be rendered takes the cond view's status (no noise to reuse)."""
        if r.status != "ok":
            return r
        c = self.cond_renderer.render(sample) if self.cond_renderer is not None else r
        if c.status != "ok":
            return dataclasses.replace(r, status=c.status)
        if state is not None and len(c.ids) != (self.cond_renderer or self.renderer).noise_length(
            sample
        ):  # the replayed draw had another shape: its values would not be the reference's
            raise RuntimeError(f"{sample.id!r}: cond view and reference noise lengths differ")
        return dataclasses.replace(r, noise=NoiseKey(sample.id, len(c.ids), c.scored[0], state))

    def _reference_states(self, samples: list[Sample]) -> dict[str, bytes]:
        """T-SHIRT's noise stream replayed (METHODS §12.2): one generator seeded once, and for
        each sample in file order a [copies + 1, L, width] uniform draw, L its full length. Each
        sample's key holds the generator state before its draw, so any engine, in any order and
        after any resume, draws exactly the reference's values for it. Replaying costs one
        draw per sample, without a forward pass."""
        import torch

        noise, width = self.spec.noise, self.backend.embed_width
        lengths = self.cond_renderer or self.renderer
        g = torch.Generator().manual_seed(noise.seed)
        states = {}
        for s in samples:
            states[s.id] = g.get_state().numpy().tobytes()
            length = lengths.noise_length(s)
            torch.empty((noise.copies + 1, length, width)).uniform_(-1, 1, generator=g)
        return states

    def __call__(
        self, samples: list[Sample], demos: dict[str, Sample] | None = None
    ) -> dict[str, Any]:
        return self.score_rendered([s.id for s in samples], self.render(samples, demos))

    def score_rendered(self, ids: list[str], rendered: list[Rendered]) -> dict[str, Any]:
        """Columns for a shard: one row per id, in the order given."""
        n = len(ids)
        status = [r.status for r in rendered]
        logprob: list[np.ndarray] = [np.zeros(0, np.float32)] * n
        want_entropy = "entropy" in self.spec.fields
        entropy: list[np.ndarray] | None = [np.zeros(0, np.float32)] * n if want_entropy else None
        acts = {k: np.full((n, w), np.nan, np.float32) for k, w in self.widths.items()}
        ok = [i for i, r in enumerate(rendered) if r.status == "ok"]
        if self.backend is not None:
            lengths = {i: len(rendered[i].ids) for i in ok}
            for batch in self._batches(sorted(ok, key=lengths.__getitem__), lengths):
                self._score_batch(batch, rendered, status, logprob, entropy, acts)
        scored = [len(lp) if status[i] == "ok" else 0 for i, lp in enumerate(logprob)]
        if self.backend is None:  # a render-only pass (token counts, no forward)
            scored = [r.n_scored if r.status == "ok" else 0 for r in rendered]
        return {
            "id": list(ids),
            "status": status,
            "n_prompt_tokens": [r.n_prompt_tokens for r in rendered],
            "n_response_tokens": [r.n_response_tokens for r in rendered],
            "n_scored": scored,
            "truncated": [r.truncated for r in rendered],
            "logprob": logprob,
            "entropy": entropy,
            "activations": acts,
        }

    def _batches(self, order: list[int], lengths: dict[int, int]) -> list[list[int]]:
        """Pack length-sorted rows while rows x longest length stays within the token budget.
        Noisy passes score one sample per forward: its copies are the batch."""
        if self.spec.noise is not None:
            return [[i] for i in order]
        out: list[list[int]] = []
        for i in order:
            if out and (len(out[-1]) + 1) * lengths[i] <= self.batch_tokens:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def _score_batch(
        self,
        batch: list[int],
        rendered: list[Rendered],
        status: list[str],
        logprob: list,
        entropy: list | None,
        acts: dict,
    ) -> None:
        try:
            out = self.backend.run([rendered[i] for i in batch], self.spec)
        except Exception as e:  # isolate the failing row: retry one by one
            if len(batch) == 1:
                status[batch[0]] = f"error:{type(e).__name__}"
                log.warning("row %s failed in the %s pass: %s", batch[0], self.spec.name(), e)
                return
            for i in batch:
                self._score_batch([i], rendered, status, logprob, entropy, acts)
            return
        for k, i in enumerate(batch):
            lp = out.logprob[k]
            if not np.all(np.isfinite(lp)):
                status[i] = (
                    "non_finite_logprob"  # deterministic: final, unlike an exception (error:*), which the next run retries
                )
                continue
            logprob[i] = lp
            if entropy is not None and out.entropy is not None:
                entropy[i] = out.entropy[k]
            for name, arr in out.activations.items():
                acts[name][i] = arr[k]
