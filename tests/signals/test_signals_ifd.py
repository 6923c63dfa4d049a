"""IFD signals on hand-computed log-probs (METHODS §2.4-2.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thresher.passes import Ragged
from thresher.signals.ifd import ifd_loss_ratio, ifd_ppl_ratio, response_loss


def rows(*r: list[float]) -> Ragged:
    return Ragged.from_rows(list(r))


def test_response_loss_is_mean_nll_and_nan_for_empty_rows() -> None:
    # [-1, -3] -> (1 + 3) / 2 = 2;  [-0.5] -> 0.5;  [] -> NaN
    out = response_loss(rows([-1.0, -3.0], [-0.5], []))
    np.testing.assert_array_equal(out, [2.0, 0.5, np.nan])


def test_golden_loss_and_ppl_ratio() -> None:
    # cond [-1, -3] -> s(A|Q) = 2;  uncond [-4] -> s(A) = 4
    # loss ratio 2 / 4 = 0.5;  ppl ratio exp(2) / exp(4) = exp(-2) = 0.1353352832366127
    # row 2 scores 3 tokens given the prompt and 2 alone (each its own mean):
    # cond [-2, -2, -2] -> 2;  uncond [-1, -3] -> 2;  loss ratio 1;  ppl ratio exp(0) = 1
    cond, uncond = rows([-1.0, -3.0], [-2.0, -2.0, -2.0]), rows([-4.0], [-1.0, -3.0])
    np.testing.assert_array_equal(ifd_loss_ratio(cond, uncond), [0.5, 1.0])
    np.testing.assert_allclose(ifd_ppl_ratio(cond, uncond), [0.1353352832366127, 1.0], rtol=1e-15)


def test_empty_rows_give_nan_in_both_modes() -> None:
    # row 0: the response is empty given the prompt; row 1: empty alone; row 2: both empty
    cond, uncond = rows([], [-1.0], []), rows([-1.0], [], [])
    for ratio in (ifd_loss_ratio, ifd_ppl_ratio):
        assert np.isnan(ratio(cond, uncond)).all()


def test_zero_direct_loss_gives_nan_not_a_number() -> None:
    # s(A) = 0 (every token certain alone): the loss ratio would divide by zero, and the
    # ppl ratio exp(1 - 0) = e would be a number from a degenerate row; both are NaN
    cond, uncond = rows([-1.0], [-1.0]), rows([0.0, 0.0], [-2.0])
    for ratio in (ifd_loss_ratio, ifd_ppl_ratio):
        out = ratio(cond, uncond)
        assert np.isnan(out[0])
        assert np.isfinite(out[1])


def test_misaligned_passes_raise() -> None:
    with pytest.raises(ValueError, match="2 rows but uncond has 1"):
        ifd_loss_ratio(rows([-1.0], [-1.0]), rows([-1.0]))


@pytest.mark.parametrize("vocab", [2, 32000, 50257])
def test_uniform_model_gives_ifd_exactly_one(vocab: int) -> None:
    # uniform logits: every log-prob is -ln V in both views, so s(A|Q) = s(A) = ln V
    lp = -math.log(vocab)
    layout = [[lp] * n for n in (1, 3, 7)]
    cond, uncond = Ragged.from_rows(layout), Ragged.from_rows(layout)
    for ratio in (ifd_loss_ratio, ifd_ppl_ratio):
        ifd = ratio(cond, uncond)
        np.testing.assert_array_equal(ifd, [1.0, 1.0, 1.0])


def test_uniform_model_with_one_token_fewer_alone_is_one() -> None:
    # reproduce mode without BOS: T tokens scored given the prompt, T - 1 alone
    lp = -math.log(50257)
    cond, uncond = rows([lp] * 5, [lp] * 2), rows([lp] * 4, [lp])
    for ratio in (ifd_loss_ratio, ifd_ppl_ratio):
        np.testing.assert_allclose(ratio(cond, uncond), [1.0, 1.0], rtol=1e-14)


def test_loss_and_ppl_ratios_agree_on_sign_but_rank_differently() -> None:
    # row a: s(A|Q) = 1, s(A) = 2 -> loss 1/2 = 0.5,    ppl exp(1 - 2) = exp(-1) = 0.368
    # row b: s(A|Q) = 4, s(A) = 6 -> loss 4/6 = 0.667,  ppl exp(4 - 6) = exp(-2) = 0.135
    # row c: s(A|Q) = 3, s(A) = 2 -> loss 3/2 = 1.5,    ppl exp(3 - 2) = exp(1)  = 2.718
    cond, uncond = rows([-1.0], [-4.0], [-3.0]), rows([-2.0], [-6.0], [-2.0])
    loss, ppl = ifd_loss_ratio(cond, uncond), ifd_ppl_ratio(cond, uncond)
    np.testing.assert_allclose(loss, [0.5, 4 / 6, 1.5], rtol=1e-15)
    np.testing.assert_allclose(ppl, [math.exp(-1), math.exp(-2), math.exp(1)], rtol=1e-15)
    np.testing.assert_array_equal(np.sign(np.log(loss)), np.sign(np.log(ppl)))
    assert loss[0] < loss[1]  # the loss ratio ranks a below b ...
    assert ppl[0] > ppl[1]  # ... the perplexity ratio ranks a above b
