"""Fixtures of the CLI tests: every test runs on one torch thread (the root `single_thread` fixture)."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny models run fastest and steadiest on one thread."""
