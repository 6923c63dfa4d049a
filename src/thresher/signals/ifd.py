"""IFD, the Instruction-Following Difficulty of Cherry LLM and Superfiltering (METHODS §2.4-2.5).

    s(A|Q) = mean response-token loss given the prompt      (the `cond` pass)
    s(A)   = mean response-token loss of the response alone (the `uncond` pass)

Cherry (Li et al., NAACL 2024) divides the losses: IFD = s(A|Q) / s(A). Superfiltering (Li
et al., ACL 2024) and T-SHIRT divide the perplexities: IFD = exp(s(A|Q)) / exp(s(A)). Both
are below 1 exactly when the prompt helps, but they rank samples differently, so each method
names its own. A row with nothing to average, or a zero direct loss, gets NaN: never a
made-up number.
"""

from __future__ import annotations

import numpy as np

from thresher.passes import Ragged, ragged_mean

# Cherry `data_by_IFD.py` drops IFD > 1; Superfiltering `select_data.py` keeps `ifd_ppl < 1`.


def response_loss(logprob: Ragged) -> np.ndarray:
    """Mean negative log-probability of each row's scored tokens, in nats; NaN for an empty row."""
    return -ragged_mean(logprob)


def _losses(cond: Ragged, uncond: Ragged) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """s(A|Q), s(A), and where a ratio of them means something.

    The two passes may score different numbers of tokens per row (reproduce mode on a
    tokenizer without BOS scores T in `cond` and T-1 in `uncond`): each is its own mean.
    """
    if len(cond) != len(uncond):
        raise ValueError(
            f"cond has {len(cond)} rows but uncond has {len(uncond)}: "
            "both passes must be aligned to the same sample ids (TokenStats.align)"
        )
    s_cond, s_uncond = response_loss(cond), response_loss(uncond)
    # A direct loss of 0 (or below, which no log-softmax produces) has no meaningful ratio.
    ok = np.isfinite(s_cond) & np.isfinite(s_uncond) & (s_uncond > 0)
    return s_cond, s_uncond, ok


def ifd_loss_ratio(cond: Ragged, uncond: Ragged) -> np.ndarray:
    """Cherry IFD = s(A|Q) / s(A), the ratio of mean losses (Cherry Eq. 3, `data_by_IFD.py`).

    NaN where either row is empty, either loss is not finite, or s(A) == 0.
    """
    s_cond, s_uncond, ok = _losses(cond, uncond)
    out = np.full(len(cond), np.nan)
    out[ok] = s_cond[ok] / s_uncond[ok]
    return out


def ifd_ppl_ratio(cond: Ragged, uncond: Ragged) -> np.ndarray:
    """Superfiltering IFD = PPL(A|Q) / PPL(A) = exp(s(A|Q)) / exp(s(A)).

    Computed as exp(s(A|Q) - s(A)), which cannot overflow. NaN exactly where
    `ifd_loss_ratio` is NaN, so both modes see the same eligible rows.
    """
    s_cond, s_uncond, ok = _losses(cond, uncond)
    out = np.full(len(cond), np.nan)
    out[ok] = np.exp(s_cond[ok] - s_uncond[ok])
    return out
