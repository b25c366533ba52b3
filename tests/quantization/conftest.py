"""Fixtures of the quantization tests: one torch thread, the int8-dynamic quantizer registered with transformers, and
quantized copies of the golden and demo checkpoints made once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mossvl.inference.api import demo_model_dir
from mossvl.quantization import quantize_checkpoint


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny models run fastest and steadiest on one thread."""


@pytest.fixture(scope="session")
def quantized(tmp_path_factory, golden_dir) -> Callable[[str, str], Path]:
    """``quantized(model, method)``: folder of the golden or demo checkpoint quantized with ``method`` (made once)."""
    sources = {"golden": golden_dir, "demo": demo_model_dir()}
    made: dict[tuple[str, str], Path] = {}

    def get(model: str, method: str) -> Path:
        if (model, method) not in made:
            folder = tmp_path_factory.mktemp(f"{model}-{method}")
            quantize_checkpoint(sources[model], folder, method)
            made[model, method] = folder
        return made[model, method]

    return get
