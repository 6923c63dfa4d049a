"""A loaded-model stand-in for evaluation tests: any torch model and tokenizer with the
`info.name` / `info.path` that `thresher.models.LoadedModel` carries, and a sample builder."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.data import Message, Sample


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
