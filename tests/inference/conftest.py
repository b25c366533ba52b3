"""Fixtures of the inference tests: single-threaded torch, and a rotated-query copy of the golden model."""

import copy

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest and steadiest on one thread, whatever else shares the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def rotq_model(golden_model):
    """A copy of the golden model whose cross-attention query is rotated in decode steps too (SGLang semantics)."""
    model = copy.deepcopy(golden_model)
    model.config.rotate_cross_query_in_decode = True
    return model
