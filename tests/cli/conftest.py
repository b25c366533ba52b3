"""Fixtures of the CLI tests: single-threaded torch (tiny models run fastest and steadiest that way)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
