"""Shared test set-up: one torch thread (two cores, no oversubscription), an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    """The real data folder beside the project; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found beside the project ({SHARED_DATA.name}/)")
    return SHARED_DATA
