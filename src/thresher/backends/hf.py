"""transformers backend: one forward pass over a batch of rendered views.

Logits are computed only at the positions a signal reads (the scored targets shifted by
one), never as [batch, seq, vocab] for the whole sequence, and log-softmax and entropy are
taken in chunks of rows so peak memory is `chunk x vocab`. Activations are pooled per sample
inside forward hooks (mean / max / first / last / drift over a span), so nothing per-token is
kept.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from thresher.passes import CAPABILITIES, PassSpec
from thresher.templates import Rendered

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
    return _mlp_part(layer, ("act_fn", "act"), "activation module")


def mlp_input_module(layer: Any) -> torch.nn.Module:
    """The MLP's output projection, whose input is the neuron vector it mixes: SiLU(gate x) * up x
    in gated MLPs (`down_proj`), GELU(c_fc x) in GPT-2 (`c_proj`)."""
    return _mlp_part(layer, ("down_proj", "c_proj"), "output projection")


def final_norm_module(model: Any) -> torch.nn.Module:
    """The norm applied after the last decoder layer (Llama/Gemma/Qwen/Mistral `norm`, GPT-2
    `ln_f`): what turns the last layer's residual output into `last_hidden_state`."""
    base = model.base_model
    for name in ("norm", "ln_f"):
        mod = getattr(base, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise ValueError(
        f"cannot find the final norm of {type(base).__name__} (norm or ln_f): pool with "
        "final_norm=False (the last layer's residual output before it)"
    )


def _mlp_part(layer: Any, names: tuple[str, ...], what: str) -> torch.nn.Module:
    mlp = layer.mlp
    for name in names:
        mod = getattr(mlp, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise ValueError(f"cannot find the {what} of {type(mlp).__name__} ({' or '.join(names)})")


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
        if not isinstance(self.lm_head, torch.nn.Linear):
            raise ValueError(
                f"the hf backend needs a linear lm_head; {type(model).__name__} has "
                f"{type(self.lm_head).__name__}"
            )
        # one chunk of float32 logits and a scratch (+ the lm_head's own dtype if not float32)
        self._buffers: list[torch.Tensor] = []
        self.softcap = _softcap(model)
        self.vocab = self.lm_head.weight.shape[0]
        self.n_layers = len(decoder_layers(model))
        self.embed_width = model.get_input_embeddings().weight.shape[1]

    def check(self, spec: PassSpec) -> None:
        bad = [f for f in spec.fields if f not in self.capabilities]
        if bad:
            raise ValueError(
                f"the hf backend cannot produce {bad}; it offers {list(self.capabilities)}"
            )
        if spec.pooling is not None and not spec.pooling.resolved:
            raise ValueError(
                f"pooling layers {spec.pooling.layers!r} are not resolved: call spec.resolve({self.n_layers})"
            )
        layers = spec.pooling.layers if spec.pooling is not None else ()
        out = [layer for layer in layers if not -self.n_layers <= layer < self.n_layers]
        if out:
            raise ValueError(
                f"layers {out} do not exist: the model has {self.n_layers} decoder layers (0..{self.n_layers - 1})"
            )

    @torch.inference_mode()
    def activation_widths(self, spec: PassSpec) -> dict[str, int]:
        """Width of each pooled activation column, read off one two-token forward pass."""
        if spec.pooling is None:
            return {}
        spans = {"prompt": (0, 1), "response": (1, 2), "user": ((0, 1),)}
        probe = Rendered((self.pad_id, self.pad_id), (1, 2), spans, 1, 1)
        return {k: v.shape[1] for k, v in self.run([probe], spec).activations.items()}

    @torch.inference_mode()
    def run(self, rows: list[Rendered], spec: PassSpec) -> BatchOutput:
        """Score `rows`. In a noisy pass (T-SHIRT) each row carries its noise key (`Rendered.noise`)
        and its log-probs are its copies back to back."""
        if spec.noise is not None:
            return BatchOutput([self._noisy_row(r, spec) for r in rows], None)
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
            hidden = self.forward(input_ids=ids.to(device), attention_mask=mask.to(device))
        finally:
            for h in handles:
                h.remove()
        # target t is predicted by the state at t - 1
        row_idx = torch.cat(
            [torch.full((r.n_scored,), i, dtype=torch.long) for i, r in enumerate(rows)]
        )
        tgt_pos = torch.cat([torch.arange(r.scored[0], r.scored[1]) for r in rows])
        states = hidden[row_idx.to(device), (tgt_pos - 1).to(device)]
        targets = ids[row_idx, tgt_pos].to(device)
        lp, ent = self.token_logprobs(states, targets, with_entropy="entropy" in spec.fields)
        splits = np.cumsum([r.n_scored for r in rows])[:-1]
        logprob = np.split(lp.float().cpu().numpy(), splits)
        entropy = np.split(ent.float().cpu().numpy(), splits) if ent is not None else None
        acts = {k: v.float().cpu().numpy() for k, v in pooled.items()}
        return BatchOutput(logprob, entropy, acts)

    def _noisy_row(self, row: Rendered, spec: PassSpec) -> np.ndarray:
        """One sample's `noise_copies` perturbed copies in one forward: inputs_embeds = embed(ids) + delta.

        The uncond view reuses the cond noise: its response rows take the cond response slice, its
        document-start row takes the cond's first-position row (METHODS §4.3/§4.7, the BOS fix)."""
        if row.noise is None:
            raise ValueError("a row of a noisy pass has no noise key: render it with Scorer.render")
        sample_id, n_cond, resp_start = row.noise.sample, row.noise.length, row.noise.response_start
        embed = self.model.get_input_embeddings()
        noise = spec.noise
        if noise.stream == "reference":
            if row.noise.state is None:
                raise ValueError(
                    f"{sample_id!r} has no generator state: the reference stream is replayed by Scorer.render"
                )
            delta = reference_noise(
                row.noise.state, noise.copies, n_cond, self.embed_width, noise.alpha
            )
        else:
            delta = embedding_noise(
                noise.seed, sample_id, noise.copies, n_cond, self.embed_width, noise.alpha
            )
        if spec.view == "uncond":
            lead = row.spans["response"][0]
            n_resp = len(row.ids) - lead
            if resp_start + n_resp > n_cond:
                raise ValueError(
                    f"the uncond view of {sample_id!r} has {n_resp} response tokens but the cond view only {n_cond - resp_start}"
                )
            delta = torch.cat(
                [delta[:, :1].expand(-1, lead, -1), delta[:, resp_start : resp_start + n_resp]],
                dim=1,
            )
        elif n_cond != len(row.ids):
            raise ValueError(
                f"noise key length {n_cond} does not match the {len(row.ids)} tokens of {sample_id!r}"
            )
        device = self.lm_head.weight.device
        ids = torch.tensor([row.ids], device=device)
        x = embed(ids) + delta.to(device=device, dtype=embed.weight.dtype)
        hidden = self.forward(inputs_embeds=x)  # [copies, L, h]
        a, b = row.scored
        states = hidden[:, a - 1 : b - 1].reshape(-1, hidden.shape[-1])
        lp, _ = self.token_logprobs(states, ids[0, a:b].repeat(noise.copies), with_entropy=False)
        return lp.float().cpu().numpy()

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The base model's last hidden state. No KV cache: transformers keeps one by default,
        which copies every layer's keys and values once more (bench/passes.py)."""
        return self.model.base_model(**inputs, use_cache=False).last_hidden_state

    def token_logprobs(
        self, states: torch.Tensor, targets: torch.Tensor, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p(target) and the predictive entropy (nats) for each row of `states`, in chunks.
        Each chunk's logits and exp(logits) are written into the same two buffers, kept between
        batches: fresh tensors of this size are mapped from the OS and page-faulted in anew on
        every chunk (bench/passes.py)."""
        n = states.shape[0]
        chunk = max(1, LOGIT_CHUNK_ELEMENTS // self.vocab)
        lps, ents = [], []
        for a in range(0, n, chunk):
            logits, scratch = self._logits(states[a : a + chunk])
            if self.softcap:
                logits.div_(self.softcap).tanh_().mul_(self.softcap)
            lp, ent = logprob_entropy(logits, targets[a : a + chunk], with_entropy, scratch)
            lps.append(lp)
            if ent is not None:
                ents.append(ent)
        empty = states.new_zeros(0)
        return (torch.cat(lps) if lps else empty), (
            (torch.cat(ents) if ents else empty) if with_entropy else None
        )

    def _logits(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 logits of `states` ([n, hidden], n <= one chunk) and a float32 scratch of the
        same shape, both views of buffers kept for the next chunk."""
        n, head = states.shape[0], self.lm_head
        if not self._buffers or self._buffers[0].shape[0] < n:
            shape = (max(1, LOGIT_CHUNK_ELEMENTS // self.vocab), self.vocab)
            new = head.weight.new_empty
            self._buffers = [new(shape, dtype=torch.float32) for _ in range(2)]
            if head.weight.dtype != torch.float32:  # the GEMM writes its own dtype
                self._buffers.append(new(shape))
        logits, scratch, *raw = (b[:n] for b in self._buffers)
        out = raw[0] if raw else logits
        x = states.to(head.weight.dtype)
        if head.bias is None:
            torch.mm(x, head.weight.t(), out=out)
        else:
            torch.addmm(head.bias, x, head.weight.t(), out=out)
        if raw:
            logits.copy_(out)
        return logits, scratch

    def _hooks(
        self, rows: list[Rendered], spec: PassSpec, width: int, out: dict[str, torch.Tensor]
    ) -> list[Any]:
        pooling = spec.pooling
        if pooling is None:
            return []
        kinds = pooling.sources
        weights, valid, first, last = _pool_index(rows, pooling.span, width)
        layers = decoder_layers(self.model)

        def pool(name: str, x: torch.Tensor) -> None:
            out[name] = _pool(
                x.float(),
                pooling.how,
                weights.to(x.device),
                valid.to(x.device),
                first,
                last,
                pooling.threshold,
            )

        def after(name: str, then: Any = None):  # a module's output, optionally normed
            def hook(_module: Any, _inputs: Any, output: Any) -> None:
                x = output[0] if isinstance(output, tuple) else output
                pool(name, then(x) if then is not None else x)

            return hook

        def before(name: str):  # a module's input
            return lambda _module, inputs: pool(name, inputs[0])

        # the last layer's residual output after the model's final norm (HF's last entry of
        # `output_hidden_states`), when asked; the norm module itself is left unhooked
        norm = final_norm_module(self.model) if pooling.final_norm else None
        handles = []
        for layer in pooling.layers:
            block = layers[layer]
            if "hidden" in kinds:
                then = norm if layer % len(layers) == len(layers) - 1 else None
                handles.append(block.register_forward_hook(after(f"hidden.{layer}", then)))
            if "mlp" in kinds and pooling.mlp_tap == "act":
                handles.append(
                    mlp_activation_module(block).register_forward_hook(after(f"mlp.{layer}"))
                )
            elif "mlp" in kinds:
                handles.append(
                    mlp_input_module(block).register_forward_pre_hook(before(f"mlp.{layer}"))
                )
        return handles


def reference_noise(
    state: bytes, copies: int, length: int, width: int, alpha: float
) -> torch.Tensor:
    """T-SHIRT's reference draw for one sample (METHODS §12.2), from the generator `state` before
    it: `u = empty((copies + 1, L, C)).uniform_(-1, 1)`, `noise = cat([zeros(1, L, C), u]) *
    (alpha / math.sqrt(L * C))` (a Python float scale applied in fp32); the code keeps rows
    1..copies of the scored batch (`ifds[1:-1]`), the copies returned here."""
    g = torch.Generator()
    g.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    u = torch.empty((copies + 1, length, width), dtype=torch.float32).uniform_(-1, 1, generator=g)
    noise = torch.cat([torch.zeros(1, length, width), u]) * (alpha / math.sqrt(length * width))
    return noise[1 : copies + 1]


def logprob_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    with_entropy: bool,
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) and the entropy -sum p log p, per row of [n, vocab] float32 `logits`
    (overwritten). With y = x - max x, S = sum exp(y): log p = y - log S and the entropy is
    log S - sum exp(y) y / S, i.e. METHODS §12.4's -sum p (x - lse) normalised by sum p. An fp32
    softmax sums to 1 only within ~1e-5 over a large vocabulary, so `lse - sum softmax(x) x` is
    off by about lse * 1e-5; here neither lse nor p is rounded before use, which keeps both
    numbers within ~1e-6 of a float64 computation (tests/test_backend.py). `scratch`, of the
    logits' shape and dtype, takes exp(y) instead of a new tensor."""
    y = logits.sub_(logits.amax(dim=-1, keepdim=True))
    e = torch.exp(y, out=scratch) if scratch is not None else y.exp()
    total = e.sum(dim=-1, keepdim=True)
    log_total = total.log()
    lp = y.gather(1, targets[:, None]).sub_(log_total).squeeze(1)
    if not with_entropy:
        return lp, None
    return lp, (log_total - e.mul_(y).sum(dim=-1, keepdim=True) / total).squeeze(1)


def embedding_noise(
    seed: int, sample_id: str, copies: int, length: int, width: int, alpha: float
) -> torch.Tensor:
    """T-SHIRT's perturbation: [copies, length, width] of U(-e, e), e = alpha / sqrt(length * width)
    (drawn as U(-1, 1) times e, as the reference code). Copy m comes from its own generator seeded by
    (seed, sample id, m), so the noise depends on neither the batch nor the other samples."""
    out = torch.empty((copies, length, width))
    for m in range(copies):
        digest = hashlib.sha256(f"{seed}\0{sample_id}\0{m}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        out[m] = torch.rand((length, width), generator=g) * 2 - 1
    return out * (alpha / math.sqrt(length * width))


def _pool_index(
    rows: list[Rendered], span: str, width: int
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Per row: mean weights over the span's tokens (a span may be several ranges: `user`),
    whether it has any, and its first and last positions."""
    weights = torch.zeros((len(rows), width))
    valid = torch.zeros(len(rows), dtype=torch.bool)
    first, last = [], []
    for i, r in enumerate(rows):
        ranges = [(a, b) for a, b in r.ranges(span) if b > a]
        n = sum(b - a for a, b in ranges)
        for a, b in ranges:
            weights[i, a:b] = 1.0 / n
        valid[i] = n > 0
        first.append(ranges[0][0] if ranges else 0)
        last.append(ranges[-1][1] - 1 if ranges else 0)
    return weights, valid, first, last


def _pool(
    x: torch.Tensor,
    how: str,
    weights: torch.Tensor,
    valid: torch.Tensor,
    first: list[int],
    last: list[int],
    threshold: float | None = None,
) -> torch.Tensor:
    """Pool [batch, seq, width] activations over each row's span; NaN for an empty span."""
    if how == "mean":
        pooled = torch.einsum("bt,btd->bd", weights, x)
    elif how == "drift":  # rows are right-padded, so position 0 is each sequence's first token
        pooled = torch.einsum("bt,btd->bd", weights, x) - x[:, 0]
    elif how == "last_drift":
        rows = torch.arange(x.shape[0], device=x.device)
        pooled = x[rows, torch.tensor(last, device=x.device)] - x[:, 0]
    elif how == "frac_above":
        pooled = torch.einsum("bt,btd->bd", weights, (x > threshold).to(x.dtype))
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
