"""T-SHIRT (Fu, Hamman, Dutta, NeurIPS 2025; METHODS §4): Selective-IFD over perturbed copies,
then hierarchical selection.

Passes: the clean `cond` and `uncond` passes of `superfiltering` (same specs, so a run folder
that holds them reuses them) and their noisy twins (`copies` per sample with
uniform noise on the input embeddings, the uncond copies reusing the cond noise slice). The
noisy passes hold M·T log-probs per sample, too many to load at 52K rows (52K × ~200 × 30), so
they are streamed: each is read shard by shard and spilled to float32 files in a scratch folder,
Δ is computed per sample into a third file, the dataset-wide threshold is an exact two-pass
order statistic over that file, and S-IFD is reduced per sample. Peak memory is one shard, one
chunk and a few per-sample indexes; the spill files are deleted afterwards. (The uncond copies
need each sample's cond layout: `Scorer.render` puts it in each row's noise key, which travels
with the row to any engine.)
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from thresher.atomic import naming
from thresher.methods.base import (
    Method,
    SelectContext,
    SignalInputs,
    Signals,
    SignalTable,
    StreamedPass,
    method,
    token_counts,
)
from thresher.methods.table import Below, Finite, Hierarchical, budget_rows
from thresher.passes import Noise, PassSpec, TokenStats
from thresher.selectors.base import Selection
from thresher.selectors.hierarchical import hierarchical_reference
from thresher.signals.ifd import ifd_ppl_ratio
from thresher.signals.tshirt import abs_percentile, copy_ifd, copy_moments, sifd, token_delta

log = logging.getLogger(__name__)

# ours: 4M float32 values (16 MB) per chunk of the threshold passes
CHUNK_VALUES = 1 << 22


@method(
    "tshirt",
    paper="Fu, Hamman, Dutta, T-SHIRT: Token-Selective Hierarchical Data Selection for Instruction Tuning, NeurIPS 2025",
    summary="S-IFD over the top-k% informative tokens, mean and spread over noisy copies; drop mean noisy IFD >= 1; top 2b by mean, then the b steadiest",
    passes="cond + uncond (as superfiltering) + noisy cond + noisy uncond (M copies each)",
    reference_model="gpt2 (124M)",
    reproducible=True,
)
def tshirt(
    model: str,
    *,
    reproduce: bool = False,
    k: float = 0.5,  # T-SHIRT compute_stat.py: `--ratio 0.5` ("T-SHIRT k=50", the default run)
    alpha: float = 5.0,  # T-SHIRT token_loss.py: `--neft_alpha 5.0`
    copies: int = 30,  # T-SHIRT token_loss.py: 31 noisy rows drawn, `ifds[1:-1]` keeps 30 ("to reach 30")
    gamma: int = 2,  # T-SHIRT tshirt_select.py: `2 * k` rows kept by the mean, hard-coded
    seed: int = 42,  # T-SHIRT token_loss.py: `--seed 42`
    template: str = "plain",  # T-SHIRT token_loss.py format_instruction: "{instruction}\n[{input}\n]"
    max_length: int = 1024,  # T-SHIRT token_loss.py: `--max_length 1024` (GPT-2's context)
    truncation: str = "prompt_first",  # ours: as superfiltering, so the clean passes are shared
) -> Method:
    """μ̂ and σ̂ of S-IFD_k over `copies` perturbed copies; drop mean noisy IFD >= 1; top γ·b by μ̂,
    then the b with the smallest σ̂."""
    if not 0.0 < k <= 1.0:
        raise ValueError(
            f"k={k}: expected the kept token fraction in (0, 1] (T-SHIRT uses 0.5 or 0.75)"
        )
    if copies < 1:
        raise ValueError(f"copies={copies}: expected at least 1 perturbed copy (T-SHIRT uses 30)")
    common = dict(
        model=model,
        template=template,
        max_length=max_length,
        truncation=truncation,
        boundary="tshirt" if reproduce else "exact",
    )
    # reproduce: the code's one noise stream in file order (METHODS §12.2); else each copy seeded
    # by (seed, sample, copy), so noise never depends on which other rows a run holds
    stream = "reference" if reproduce else "per_sample"
    noise = Noise(alpha=float(alpha), copies=int(copies), seed=int(seed), stream=stream)
    passes = {
        # = superfiltering's cond and uncond passes (outside reproduce mode)
        "cond": PassSpec(view="cond", fields=("logprob", "entropy"), **common),
        "uncond": PassSpec(view="uncond", fields=("logprob",), **common),
        "noisy_cond": PassSpec(view="cond", fields=("logprob",), noise=noise, **common),
        "noisy_uncond": PassSpec(view="uncond", fields=("logprob",), noise=noise, **common),
    }

    def signals(x: SignalInputs) -> Signals:
        cond, uncond = x.stats["cond"], x.stats["uncond"]
        noisy = noisy_signals(
            x.ids,
            x.stats["noisy_cond"],
            x.stats["noisy_uncond"],
            int(copies),
            k,
            x.scratch,
            reference=reproduce,
        )
        status = noisy.pop("status")
        cols = {
            "ifd": ifd_ppl_ratio(cond.logprob, uncond.logprob),
            **noisy,
            **token_counts(cond),
            "n_scored_uncond": uncond.n_scored,
        }
        return Signals(cols, status)

    filters = (
        Finite(("sifd_mean", "avg_noisy_ifd")),
        # tshirt_select.py: `avg_ifd >= 1: continue`
        Below("avg_noisy_ifd", 1.0, False, "filtered:avg_noisy_ifd>=1"),
    )
    params = dict(
        reproduce=reproduce,
        k=k,
        alpha=alpha,
        copies=copies,
        gamma=gamma,
        seed=seed,
        template=template,
        max_length=max_length,
        truncation=truncation,
    )
    return Method(
        "tshirt",
        params,
        passes,
        signals,
        "sifd_mean",
        _reference_selection(gamma) if reproduce else Hierarchical("sifd_mean", "sifd_std", gamma),
        filters,
        diagnostics=_threshold,
        streamed=("noisy_cond", "noisy_uncond"),
    )


def _reference_selection(gamma: int):
    """tshirt_select.py's selection (METHODS §12.2), with a note when it returns fewer than b."""

    def select(table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        b = budget_rows(table, budget, ctx, "rows")
        mean, spread = table.columns["sifd_mean"], table.columns["sifd_std"]
        return hierarchical_reference(table.ids, mean, spread, b, gamma=gamma, keep=table.eligible)

    return select


def _threshold(table: SignalTable, selection: Selection | None) -> dict:
    """The dataset-wide |Δ| threshold the tokens were kept by (one value, repeated per row)."""
    t = np.asarray(table.columns.get("sifd_threshold", []), dtype=np.float64)
    t = t[np.isfinite(t)]
    return {"sifd_threshold": float(t[0])} if len(t) else {}


def noisy_signals(
    ids: list[str],
    cond: StreamedPass | TokenStats,
    uncond: StreamedPass | TokenStats,
    copies: int,
    k: float,
    scratch: Path | None = None,
    reference: bool = False,
) -> dict:
    """Per sample (in `ids` order): mean and std of the copies' IFD and S-IFD, and a status.

    `cond` / `uncond` are the noisy passes, streamed (stored) or loaded TokenStats (tests); the
    spill files go to `scratch` (a temp dir when None) and are deleted afterwards. `reference`:
    the code's float32 arithmetic (METHODS §12.2) and its strict threshold even at k = 1."""
    precision = np.float32 if reference else np.float64
    n = len(ids)
    work = _Spill(scratch)
    try:
        c_rows, c_status = work.write("cond", _shards(cond), ids)
        u_rows, u_status = work.write("uncond", _shards(uncond), ids)
        status = [c if c != "ok" else u for c, u in zip(c_status, u_status, strict=True)]
        out = {
            name: np.full(n, np.nan)
            for name in ("avg_noisy_ifd", "std_noisy_ifd", "sifd_mean", "sifd_std")
        }
        d_rows: dict[
            int, tuple[int, int]
        ] = {}  # sample -> (offset, tokens per copy) in the delta file
        with work.appender("delta") as dfile:
            for i in range(n):
                if status[i] != "ok":
                    continue
                c, u = (
                    work.copies("cond", c_rows[i], copies),
                    work.copies("uncond", u_rows[i], copies),
                )
                if c is None or u is None or c.shape[1] - u.shape[1] not in (0, 1):
                    status[i] = "error:noisy_token_count_mismatch"
                    continue
                # the code's np.mean / np.std over its float32 per-copy IFDs: float64 moments
                out["avg_noisy_ifd"][i], out["std_noisy_ifd"][i] = copy_moments(
                    copy_ifd(c, u, precision)
                )
                d_rows[i] = (dfile.tell() // 4, u.shape[1])
                with naming(work.dir / "delta.f32"):
                    dfile.write(token_delta(c, u).tobytes())
        work.drop("cond", "uncond")
        delta = work.open("delta")
        if not len(delta):  # no sample has a scored noisy token: nothing to threshold
            return {**out, "sifd_threshold": np.full(n, np.nan), "status": status}
        # ours: k = 1 keeps every token (S-IFD = IFD over the aligned tokens, METHODS §8.1); the
        # reference's strict `> percentile(0)` would drop the smallest |delta| even then
        chunks = lambda: (delta[a : a + CHUNK_VALUES] for a in range(0, len(delta), CHUNK_VALUES))  # noqa: E731
        threshold = -np.inf if k >= 1 and not reference else abs_percentile(chunks, (1 - k) * 100)
        for i, (off, t) in d_rows.items():
            out["sifd_mean"][i], out["sifd_std"][i] = copy_moments(
                sifd(delta[off : off + copies * t].reshape(copies, t), threshold, precision),
                precision,
            )
        log.info(
            "T-SHIRT threshold |delta| > %r (k=%s) over %d noisy token values",
            threshold,
            k,
            len(delta),
        )
        out["sifd_threshold"] = np.full(n, threshold)
        return {**out, "status": status}
    finally:
        work.close()


def _shards(p: StreamedPass | TokenStats):
    return iter([p]) if isinstance(p, TokenStats) else p.scan()


class _Spill:
    """Append-only float32 files (in the run folder, or a temp dir for in-memory tests)."""

    def __init__(self, folder: Path | None) -> None:
        self.tmp = None if folder is not None else tempfile.mkdtemp(prefix="thresher-tshirt-")
        self.dir = Path(folder or self.tmp)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.maps: dict[str, np.ndarray] = {}

    def appender(self, name: str):
        return open(self.dir / f"{name}.f32", "wb")

    def write(
        self, name: str, shards, ids: list[str]
    ) -> tuple[dict[int, tuple[int, int]], list[str]]:
        """Spill every ok row of a pass; returns sample -> (offset, length) and each sample's status."""
        pos = {x: i for i, x in enumerate(ids)}
        rows: dict[int, tuple[int, int]] = {}
        status = ["error:missing_from_noisy_pass"] * len(ids)
        with self.appender(name) as f:
            for shard in shards:
                for j, x in enumerate(shard.ids):
                    i = pos[x]
                    status[i] = shard.status[j]
                    if status[i] == "ok":
                        row = shard.logprob.row(j).astype(np.float32)
                        rows[i] = (f.tell() // 4, len(row))
                        with naming(self.dir / f"{name}.f32"):
                            f.write(row.tobytes())
        return rows, status

    def open(self, name: str) -> np.ndarray:
        path = self.dir / f"{name}.f32"
        if name not in self.maps:
            self.maps[name] = (
                np.memmap(path, dtype=np.float32, mode="r")
                if path.stat().st_size
                else np.zeros(0, np.float32)
            )
        return self.maps[name]

    def copies(self, name: str, row: tuple[int, int] | None, m: int) -> np.ndarray | None:
        if row is None or row[1] % m:
            return None
        off, length = row
        return np.asarray(self.open(name)[off : off + length]).reshape(m, length // m)

    def drop(self, *names: str) -> None:
        for name in names:
            self.maps.pop(name, None)
            (self.dir / f"{name}.f32").unlink(missing_ok=True)

    def close(self) -> None:
        self.maps.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
