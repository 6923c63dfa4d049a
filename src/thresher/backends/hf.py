"""transformers backend: one forward pass over a batch of rendered views.

Logits are computed only at the positions a signal reads (the scored targets shifted by
one), never as [batch, seq, vocab] for the whole sequence, and log-softmax and entropy are
taken in chunks of rows so peak memory is `chunk x vocab`. Activations are pooled per sample
inside forward hooks (mean / max / first / last over a span), so nothing per-token is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from thresher.passes import PassSpec
from thresher.templates import Rendered

CAPABILITIES = ("logprob", "entropy", "hidden", "mlp")
# ours: 32M floats (128 MB fp32) of logits per chunk keeps a 256K-vocabulary model under
# ~0.5 GB of transient memory while still doing one large GEMM per chunk
LOGIT_CHUNK_ELEMENTS = 32 * 1024 * 1024


@dataclass
class BatchOutput:
    """Per-row results of one batch, in the order of the rows given."""

    logprob: list[np.ndarray]
    entropy: list[np.ndarray] | None
    activations: dict[str, np.ndarray] = field(default_factory=dict)


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM (Llama/Gemma/Qwen/Mistral `model.layers`, GPT-2 `h`)."""
    base = model.base_model
    for name in ("layers", "h"):
        layers = getattr(base, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: expected `layers` or `h` on "
        f"its base model {type(base).__name__}"
    )


def mlp_activation_module(layer: Any) -> torch.nn.Module:
    """The module whose output is the MLP's neuron activation: SiLU(gate_proj x) in Llama-style
    gated MLPs (`act_fn`), GELU(c_fc x) in GPT-2 (`act`)."""
    mlp = layer.mlp
    for name in ("act_fn", "act"):
        mod = getattr(mlp, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise ValueError(f"cannot find the activation module of {type(mlp).__name__} (act_fn or act)")


def _softcap(model: Any) -> float | None:
    return getattr(model.config, "final_logit_softcapping", None)


class HFBackend:
    """Runs PassSpecs on an already-loaded transformers causal LM."""

    capabilities = CAPABILITIES

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.lm_head = model.get_output_embeddings()
        self.softcap = _softcap(model)
        self.vocab = self.lm_head.weight.shape[0]
        self.n_layers = len(decoder_layers(model))

    def check(self, spec: PassSpec) -> None:
        bad = [f for f in spec.fields if f not in self.capabilities]
        if bad:
            raise ValueError(f"the hf backend cannot produce {bad}; it offers {list(self.capabilities)}")
        out = [layer for layer in spec.layers if not -self.n_layers <= layer < self.n_layers]
        if out:
            raise ValueError(f"layers {out} do not exist: the model has {self.n_layers} decoder layers (0..{self.n_layers - 1})")

    @torch.inference_mode()
    def activation_widths(self, spec: PassSpec) -> dict[str, int]:
        """Width of each pooled activation column, read off one two-token forward pass."""
        if not {"hidden", "mlp"} & set(spec.fields):
            return {}
        probe = Rendered((self.pad_id, self.pad_id), (1, 2), {"prompt": (0, 1), "response": (1, 2)}, 1, 1)
        return {k: v.shape[1] for k, v in self.run([probe], spec).activations.items()}

    @torch.inference_mode()
    def run(self, rows: list[Rendered], spec: PassSpec) -> BatchOutput:
        if not rows:
            return BatchOutput([], [] if "entropy" in spec.fields else None)
        device = self.lm_head.weight.device
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r.ids)] = torch.tensor(r.ids)
            mask[i, : len(r.ids)] = 1
        pooled: dict[str, torch.Tensor] = {}
        handles = self._hooks(rows, spec, width, pooled)
        try:
            hidden = self.model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        # target t is predicted by the state at t - 1
        row_idx = torch.cat([torch.full((r.n_scored,), i, dtype=torch.long) for i, r in enumerate(rows)])
        tgt_pos = torch.cat([torch.arange(r.scored[0], r.scored[1]) for r in rows])
        states = hidden[row_idx.to(device), (tgt_pos - 1).to(device)]
        targets = ids[row_idx, tgt_pos].to(device)
        lp, ent = self.token_logprobs(states, targets, with_entropy="entropy" in spec.fields)
        splits = np.cumsum([r.n_scored for r in rows])[:-1]
        logprob = np.split(lp.float().cpu().numpy(), splits)
        entropy = np.split(ent.float().cpu().numpy(), splits) if ent is not None else None
        acts = {k: v.float().cpu().numpy() for k, v in pooled.items()}
        return BatchOutput(logprob, entropy, acts)

    def token_logprobs(self, states: torch.Tensor, targets: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p(target) and the predictive entropy (nats) for each row of `states`, in chunks."""
        n = states.shape[0]
        chunk = max(1, LOGIT_CHUNK_ELEMENTS // self.vocab)
        lps, ents = [], []
        for a in range(0, n, chunk):
            logits = self.lm_head(states[a : a + chunk]).float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            lse = torch.logsumexp(logits, dim=-1)
            lps.append(logits.gather(1, targets[a : a + chunk, None]).squeeze(1) - lse)
            if with_entropy:
                p = torch.softmax(logits, dim=-1)
                ents.append(lse - (p * logits).sum(-1))
        empty = states.new_zeros(0)
        return (torch.cat(lps) if lps else empty), ((torch.cat(ents) if ents else empty) if with_entropy else None)

    def _hooks(self, rows: list[Rendered], spec: PassSpec, width: int, out: dict[str, torch.Tensor]) -> list[Any]:
        kinds = [f for f in ("hidden", "mlp") if f in spec.fields]
        if not kinds:
            return []
        weights, valid, first, last = _pool_index(rows, spec.pool_span, width)
        layers = decoder_layers(self.model)

        def make(name: str):
            def hook(_module: Any, _inputs: Any, output: Any) -> None:
                x = output[0] if isinstance(output, tuple) else output
                out[name] = _pool(x.float(), spec.pool, weights.to(x.device), valid.to(x.device), first, last)

            return hook

        handles = []
        for layer in spec.layers:
            block = layers[layer]
            if "hidden" in kinds:
                handles.append(block.register_forward_hook(make(f"hidden.{layer}")))
            if "mlp" in kinds:
                handles.append(mlp_activation_module(block).register_forward_hook(make(f"mlp.{layer}")))
        return handles


def _pool_index(rows: list[Rendered], span: str, width: int) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    weights = torch.zeros((len(rows), width))
    valid = torch.zeros(len(rows), dtype=torch.bool)
    first, last = [], []
    for i, r in enumerate(rows):
        a, b = (0, len(r.ids)) if span == "all" else r.spans[span]
        if b > a:
            weights[i, a:b] = 1.0 / (b - a)
            valid[i] = True
        first.append(a)
        last.append(max(b - 1, a))
    return weights, valid, first, last


def _pool(x: torch.Tensor, how: str, weights: torch.Tensor, valid: torch.Tensor, first: list[int], last: list[int]) -> torch.Tensor:
    """Pool [batch, seq, width] activations over each row's span; NaN for an empty span."""
    if how == "mean":
        pooled = torch.einsum("bt,btd->bd", weights, x)
    elif how == "max":
        pooled = x.masked_fill((weights == 0)[..., None], -math.inf).amax(dim=1)
    else:
        pos = torch.tensor(first if how == "first" else last, device=x.device)
        pooled = x[torch.arange(x.shape[0], device=x.device), pos]
    return pooled.masked_fill(~valid[:, None], math.nan)


@torch.inference_mode()
def reference_logprobs(model: Any, row: Rendered) -> tuple[np.ndarray, np.ndarray]:
    """The naive definition, for tests and benchmarks: batch 1, full-vocabulary logits at every
    position, log-softmax over the whole sequence, then pick the scored targets."""
    ids = torch.tensor([row.ids])
    logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    a, b = row.scored
    tgt = ids[0, a:b]
    lp = logp[a - 1 : b - 1].gather(1, tgt[:, None]).squeeze(1)
    ent = -(logp[a - 1 : b - 1].exp() * logp[a - 1 : b - 1]).sum(-1)
    return lp.numpy(), ent.numpy()
