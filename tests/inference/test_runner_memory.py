"""The engine's runner on the CPU keeps freed memory in the process (glibc's malloc), so that large activations
do not fault in fresh pages at every forward."""

import ctypes.util
import sys

import pytest

from mossvl.inference.runner import keep_freed_memory


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or "libc.so" not in str(ctypes.util.find_library("c")),
    reason="glibc only",
)
def test_keep_freed_memory_is_accepted_by_glibc_and_repeatable():
    assert keep_freed_memory()
    assert keep_freed_memory()
