"""Checking a value against its choices, with the error every such check raises: what was given,
what is accepted, and the nearest accepted spelling."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggest(name: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` naming up to three close choices, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_choice(what: str, value: str, choices: Iterable[str]) -> None:
    """Raise naming the value, the choices and the nearest one when `value` is not a choice."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{what}={value!r} is not one of {choices}{suggest(value, choices)}")
