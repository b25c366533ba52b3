"""Fixtures of the inference tests: single-threaded torch, a rotated-query copy of the golden model, and golden
media paths."""

import copy

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny models run fastest and steadiest on one thread (the root `single_thread` fixture)."""


@pytest.fixture(scope="session")
def rotq_model(golden_model):
    """A copy of the golden model whose cross-attention query is rotated in decode steps too (SGLang semantics)."""
    model = copy.deepcopy(golden_model)
    model.config.rotate_cross_query_in_decode = True
    return model


@pytest.fixture
def media(golden_dir):
    root = golden_dir / "media"
    return {
        "img_a": str(root / "img_a_64x96.png"),
        "img_d": str(root / "img_d_96x64.png"),
        "vid_a": str(root / "vid_a_47f_10fps_48x64.mp4"),
    }


@pytest.fixture(scope="session")
def endless_model(golden_model):
    """A copy of the golden model that never emits EOS (its generation_config names no real token)."""
    model = copy.deepcopy(golden_model)
    model.generation_config.eos_token_id = [-1]
    return model
