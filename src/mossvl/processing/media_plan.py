"""A media item planned but not yet turned into pixels: its grid, its timestamps, a cache key, and a loader.

Planning reads only what sizes and timestamps need (an image's pixels, a video's packet index), so the text can be
laid out and a cache consulted before any video frame is decoded. The key names the item's content and every
setting that changes its pixels; two items with equal keys give equal pixel rows and equal vision features.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
_READ_CHUNK = 1 << 20


@dataclass
class PlannedMedia:
    """One image or video unit of a processor call.

    ``grid_thw``: (frames, h, w) in patches; ``timestamps``: seconds of each video frame (None for images);
    ``key``: content + settings fingerprint; ``load()`` returns the pixel rows (N, C·p·p) float32.
    """

    kind: str
    grid_thw: tuple[int, int, int]
    key: str
    load: Callable[[], torch.Tensor] = field(repr=False)
    timestamps: list[float] | None = None
    frame_indices: list[int] | None = None

    @property
    def num_frames(self) -> int:
        return self.grid_thw[0]


def file_digest(path: str) -> str:
    """BLAKE2b of a file's bytes, remembered per (path, size, mtime) so an unchanged file is read once."""
    stat = os.stat(path)
    memo = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                digest.update(chunk)
        _FILE_DIGESTS[memo] = digest.hexdigest()
    return _FILE_DIGESTS[memo]


def array_digest(array: np.ndarray) -> str:
    """BLAKE2b of an array's shape and bytes."""
    digest = hashlib.blake2b(repr(array.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def settings_key(*parts: object) -> str:
    """A short stable key of a digest and the settings that shape the pixels."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
