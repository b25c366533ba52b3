"""Shared test fixtures: paths of the shipped golden vectors, and the golden tiny model and processor (loaded once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES_DIR = Path(__file__).parent / "fixtures"
GOLDEN_DIR = FIXTURES_DIR / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def golden_model():
    """The golden tiny checkpoint in float32, in eval mode. Shared: tests must not modify it."""
    from mossvl.model import MossVLForConditionalGeneration

    model = MossVLForConditionalGeneration.from_pretrained(GOLDEN_DIR, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def golden_processor():
    """The processor of the golden tiny checkpoint (tokenizer in its `tokenizer/` subfolder)."""
    from mossvl.processing.processor import MossVLProcessor

    return MossVLProcessor.from_pretrained(GOLDEN_DIR)
