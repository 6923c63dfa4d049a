"""A loaded-model stand-in for evaluation tests: any torch model and tokenizer with the
`info.name` / `info.path` that `thresher.models.LoadedModel` carries, a sample builder, and the
uniform model. (Not a conftest.py: tests import the top-level conftest by name.)"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from thresher.data import Message, Sample
from tiny import FAMILIES, uniform_llama


@dataclass
class Info:
    name: str = "tiny"
    path: str = "tiny"


@dataclass
class LM:
    model: object
    tokenizer: object
    info: Info


def sample(i: int, instruction: str, response: str) -> Sample:
    return Sample(
        f"s{i}", (Message("user", instruction), Message("assistant", response)), instruction
    )


@functools.cache
def uniform_lm() -> LM:
    """A Llama with uniform next-token logits: every log-prob is -ln V (built once, only read)."""
    tok = FAMILIES["chatml"][0]()
    return LM(uniform_llama(tok), tok, Info())
