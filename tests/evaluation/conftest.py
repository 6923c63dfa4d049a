"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

import pytest
from lmstub import LM, Info

from tiny import FAMILIES, uniform_llama


@pytest.fixture(scope="module")
def uniform():
    """A Llama with uniform next-token logits: every log-prob is -ln V."""
    tok = FAMILIES["chatml"][0]()
    return LM(uniform_llama(tok), tok, Info())
