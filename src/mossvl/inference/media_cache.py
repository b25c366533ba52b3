"""An LRU cache of vision-encoder outputs keyed by media content and media settings, bounded in bytes.

A hit skips both the decoding of the media and the vision tower: asking three questions about one video decodes
and encodes it once. The features are the merged vision tokens before separators and before any position is
applied, so they serve any prompt that holds the same media with the same settings. Keys come from the
processor's media planning (content digest + sampled frames + target size + normalisation).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch


class MediaCache:
    """Thread-safe LRU of ``key -> features (tokens, hidden)``; ``max_bytes`` 0 disables it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, record_miss: bool = True) -> torch.Tensor | None:
        """The features cached under ``key``, or None; ``record_miss=False`` for a second look after a miss."""
        with self._lock:
            features = self._entries.get(key)
            if features is None:
                self.misses += record_miss
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return features

    def put(self, key: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = features
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.numel() * evicted.element_size()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)
