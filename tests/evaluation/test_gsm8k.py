"""GSM8K exact match: number parsing and the cut at the next turn."""

from __future__ import annotations

import math
from collections import Counter

import torch

from lmstub import LM, Info, sample
from thresher.evaluation import gsm8k
from tiny import FAMILIES


def test_gsm8k_numbers():
    assert gsm8k.gold_number("so 9 * 2 = 18\n#### 1,234") == "1234"
    assert gsm8k.gold_number("no marker 5") is None
    assert gsm8k.last_number("It is 3, then -2.50 dollars.") == "-2.5"
    assert gsm8k.last_number("18.00") == gsm8k.gold_number("#### 18")
    assert gsm8k.last_number("no digits") is None


def test_gsm8k_exact_cuts_at_the_next_turn_and_compares_the_last_number():
    tok = FAMILIES["chatml"][0]()

    class Echo(torch.nn.Module):  # "generates" a fixed continuation after the prompt
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

        def generate(self, input_ids, **kwargs):
            cont = torch.tensor([tok(self.text, add_special_tokens=False).input_ids])
            return torch.cat([input_ids, cont], dim=1)

    samples = [sample(0, "Eggs?", "9 * 2 = 18\n#### 18"), sample(1, "No gold.", "nothing")]
    right = LM(Echo("She makes 18 dollars.\n\n### Instruction:\n5"), tok, Info())
    metrics, n, skipped = gsm8k.gsm8k_exact(right, samples)
    assert metrics["exact_match"] == 1.0 and n == 1 and skipped == Counter({"no_gold_number": 1})
    assert math.isnan(metrics["exact_match_stderr"])  # one item: no standard error
    wrong = LM(Echo("She makes 19 dollars."), tok, Info())
    assert gsm8k.gsm8k_exact(wrong, samples)[0]["exact_match"] == 0.0
