"""Shared fixtures: tiny recipes that run offline on CPU, and the path of ../shared/data."""

from __future__ import annotations

import copy
import os
from pathlib import Path

# no test may reach the network: hub ids fail at once instead of retrying (read at import time)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# the fused noise kernel runs on CPU tensors under Triton's interpreter (read when it is first imported)
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

TINY = {
    "run": {"name": "t", "seed": 0},
    "model": {"name_or_path": "tiny:llama-16x1"},
    "data": {"task": "toy_sentiment", "num_train": 64, "num_dev": 16, "num_eval": 32},
    "method": {"name": "mezo", "eps": 1e-3},
    "optim": {"lr": 1e-3},
    "train": {"max_steps": 6, "batch_size": 4},
    "eval": {"every": 3, "batch_size": 16},
    "checkpoint": {"every": 2},
    "logging": {"every": 1, "progress": "none"},
}


@pytest.fixture
def tiny(tmp_path) -> dict:
    """A recipe dict for a tiny llama on the built-in toy task, writing under tmp_path."""
    recipe = copy.deepcopy(TINY)
    recipe["run"]["output_dir"] = str(tmp_path / "runs")
    return recipe


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
