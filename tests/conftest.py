"""Shared test fixtures: the shipped golden vectors (paths, cases.json, expected tensors), the golden tiny model and
processor (loaded once), and single-threaded torch for the folders that ask for it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES_DIR = Path(__file__).parent / "fixtures"
GOLDEN_DIR = FIXTURES_DIR / "golden"
GOLDEN_CASE_NAMES = [case["name"] for case in json.loads((GOLDEN_DIR / "cases.json").read_text())["cases"]]


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture
def golden_json() -> dict:
    """tests/fixtures/golden/cases.json, parsed afresh for each test (so a test may change it)."""
    return json.loads((GOLDEN_DIR / "cases.json").read_text())


@pytest.fixture
def golden_case(golden_json) -> Callable[[str], dict]:
    """`golden_case(name)`: the entry of one case in cases.json (inputs, rendered prompts, media, ...)."""
    cases = {case["name"]: case for case in golden_json["cases"]}
    return cases.__getitem__


@pytest.fixture(params=GOLDEN_CASE_NAMES)
def golden_case_name(request) -> str:
    """Parametrizes a test over every golden case, in cases.json order."""
    return request.param


@pytest.fixture
def golden_expected(golden_case) -> Callable[[str], dict[str, torch.Tensor]]:
    """`golden_expected(name)`: the official tensors of one case, plus ``pixel_values`` (float32) rebuilt from the
    stored ``pixel_levels`` (uint8, x = (level - 127.5) / 127.5) and ``pixel_blank_rows`` (rows that are 0)."""

    def load(name: str) -> dict[str, torch.Tensor]:
        expected = load_file(GOLDEN_DIR / golden_case(name)["expected_file"])
        pixel_values = (expected["pixel_levels"].to(torch.float32) - 127.5) / 127.5
        pixel_values[expected["pixel_blank_rows"]] = 0.0
        return {**expected, "pixel_values": pixel_values}

    return load


@pytest.fixture
def single_thread():
    """Torch on one thread for the test: tiny models run fastest and steadiest that way, whatever else shares the
    machine. Folders opt in with an autouse fixture that requests this one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
