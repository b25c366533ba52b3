"""Preallocated KV memory for many sequences at once: text K/V per self-attention layer, vision K/V per cross layer.

Layout: every self-attention layer owns K and V buffers of shape (rows, kv_heads, text_capacity, head_dim) and
every cross-attention layer (rows, kv_heads, vision_capacity, head_dim); a sequence owns one row ("slot") and
the lengths of what it has written there. Why this layout:

* A decode step writes one new K/V entry per row in place and attends over the view ``[:B, :, :longest]``: no
  cache copy at all, whatever the cache size (a ``torch.cat`` cache or a gather of scattered rows copies all of
  it every step). For that the decoding sequences must sit in rows ``0..B-1``; rows are swapped when a
  sequence starts or stops decoding, which copies only the two rows' used entries, once per event.
* Rows of different lengths share one batched SDPA call with a per-row length mask (B, 1, 1, L), as in a static
  cache; the price is padding up to the longest row, which admission accounts for.
* Capacities and the row count grow geometrically (a reallocation copies the used entries, rarely) and the pool
  is released when no sequence is left, so an idle engine holds no KV memory.

With ``cache_dtype="int8"`` (long videos, whose vision memory dominates) K and V are stored as int8 with one float32
scale per (row, head, token): symmetric, absmax / 127, so an entry is off by at most absmax / 254 (plus the model
dtype's rounding when read). The scales are two more buffers of width 1 that every row operation moves like K and
V. Entries are quantized when written and dequantized to the model dtype when read, which costs a copy of the
attended entries per layer and step (the model-dtype pool hands out views). Everything attends to the dequantized
entries, its own chunk's included, so a prefill gives the same K/V however it is chunked or copied from a shared
prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from ..errors import ConfigError, MossVLError

GROWTH_ALIGN = 256
# Storage of the K/V entries: the model's own dtype, or int8 with per-token scales.
KV_CACHE_DTYPES = ("model", "int8")
# float32 scales keep the absmax / 254 bound exact; bf16 ones would save 1.5% of an int8 pool at head_dim 128
# (3% at 64), dequantize no faster (measured), and lose the bound.
SCALE_DTYPE = torch.float32


class KVPoolError(MossVLError):
    """The pool cannot hold what was asked of it (a capacity above its memory limit)."""


class _Store(NamedTuple):
    """One kind of per-layer buffer, (rows, kv_heads, capacity, width): K, V, or (int8 pools) their scales."""

    buffers: dict[int, torch.Tensor]
    dtype: torch.dtype
    width: int


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def quantize(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and float32 scales (``...``, 1) of ``tensor`` (``...``, head_dim): absmax / 127 per vector."""
    tensor = tensor.float()
    scales = tensor.abs().amax(-1, keepdim=True) / 127
    # An all-zero vector (scale 0) stays 0; the clamp also guards against a scale that underflowed.
    values = (tensor / scales.clamp_min(torch.finfo(torch.float32).tiny)).round_().clamp_(-127, 127)
    return values.to(torch.int8), scales.to(SCALE_DTYPE)


def dequantize(values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` · ``scales`` in ``dtype`` (in place on the converted copy: one large allocation, not two)."""
    return values.to(dtype).mul_(scales.to(dtype))


class KVPool:
    """K/V buffers for ``rows`` sequences of a MOSS-VL decoder, with per-row text and vision lengths.

    ``dtype``: the model dtype, in which reads are returned; ``cache_dtype``: one of ``KV_CACHE_DTYPES``.
    """

    def __init__(
        self, text_config, dtype: torch.dtype, device: torch.device | str, cache_dtype: str = "model"
    ):
        if cache_dtype not in KV_CACHE_DTYPES:
            raise ConfigError(f"unknown KV cache dtype {cache_dtype!r}; use one of {list(KV_CACHE_DTYPES)}")
        self.cross_layers = sorted(text_config.cross_attention_layers)
        self.self_layers = [i for i in range(text_config.num_hidden_layers) if i not in self.cross_layers]
        self.kv_heads = text_config.num_key_value_heads
        self.head_dim = text_config.head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.quantized = cache_dtype == "int8"
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        stored = torch.int8 if self.quantized else dtype
        self._stores = [_Store(self.keys, stored, self.head_dim), _Store(self.values, stored, self.head_dim)]
        if self.quantized:
            self.key_scales: dict[int, torch.Tensor] = {}
            self.value_scales: dict[int, torch.Tensor] = {}
            self._stores += [
                _Store(self.key_scales, SCALE_DTYPE, 1),
                _Store(self.value_scales, SCALE_DTYPE, 1),
            ]
        layer_bytes = sum(
            self.kv_heads * store.width * torch.empty(0, dtype=store.dtype).element_size()
            for store in self._stores
        )
        self.text_token_bytes = len(self.self_layers) * layer_bytes
        self.vision_token_bytes = len(self.cross_layers) * layer_bytes
        self.rows = self.text_capacity = self.vision_capacity = 0
        self.text_len: list[int] = []
        self.vision_len: list[int] = []

    def _buffers(self, layers: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
        """(layer, buffer) of every store of ``layers``."""
        return ((layer, store.buffers[layer]) for layer in layers for store in self._stores)

    # ----- sizing -------------------------------------------------------------------------------------------

    def bytes_for(self, rows: int, text_capacity: int, vision_capacity: int) -> int:
        """Memory of a pool of that shape."""
        return rows * (text_capacity * self.text_token_bytes + vision_capacity * self.vision_token_bytes)

    @property
    def nbytes(self) -> int:
        return self.bytes_for(self.rows, self.text_capacity, self.vision_capacity)

    def reserve(self, rows: int, text_tokens: int, vision_tokens: int, max_bytes: int) -> None:
        """Make room for ``rows`` rows of ``text_tokens`` / ``vision_tokens`` (the used entries are kept).

        A dimension that must grow grows to at least twice its size (so growth is rare), unless that would pass
        ``max_bytes``; then it grows to what is needed.
        """
        needed = (
            max(rows, self.rows),
            max(_round_up(text_tokens, GROWTH_ALIGN), self.text_capacity),
            max(_round_up(vision_tokens, GROWTH_ALIGN), self.vision_capacity),
        )
        current = (self.rows, self.text_capacity, self.vision_capacity)
        if needed == current:
            return
        doubled = tuple(
            max(want, 2 * have) if want > have else have for want, have in zip(needed, current, strict=True)
        )
        rows, text, vision = doubled if self.bytes_for(*doubled) <= max_bytes else needed
        for layer in self.self_layers + self.cross_layers:
            capacity = vision if layer in self.cross_layers else text
            used = self._used(layer)
            for store in self._stores:
                # Zeros, not empty: masked-out slots still enter the attention matmul and must be finite.
                fresh = torch.zeros(
                    rows, self.kv_heads, capacity, store.width, dtype=store.dtype, device=self.device
                )
                old = store.buffers.get(layer)
                if old is not None and used:
                    fresh[: self.rows, :, :used] = old[:, :, :used]
                store.buffers[layer] = fresh
        self.text_len += [0] * (rows - self.rows)
        self.vision_len += [0] * (rows - self.rows)
        self.rows, self.text_capacity, self.vision_capacity = rows, text, vision

    def release(self) -> None:
        """Free every buffer (no sequence may be left)."""
        for store in self._stores:
            store.buffers.clear()
        self.rows = self.text_capacity = self.vision_capacity = 0
        self.text_len, self.vision_len = [], []

    def _used(self, layer: int) -> int:
        lengths = self.vision_len if layer in self.cross_layers else self.text_len
        return max(lengths, default=0)

    # ----- row bookkeeping ------------------------------------------------------------------------------------

    def clear(self, row: int) -> None:
        """Forget a row's contents (its buffers are overwritten by the next occupant)."""
        self.text_len[row] = self.vision_len[row] = 0

    def swap(self, a: int, b: int) -> None:
        """Exchange the contents of two rows (copies only their used entries)."""
        if a == b:
            return
        for layer, buffer in self._buffers(self.self_layers + self.cross_layers):
            lengths = self.vision_len if layer in self.cross_layers else self.text_len
            used = max(lengths[a], lengths[b])
            if used:
                held = buffer[a, :, :used].clone()
                buffer[a, :, :used] = buffer[b, :, :used]
                buffer[b, :, :used] = held
        self.text_len[a], self.text_len[b] = self.text_len[b], self.text_len[a]
        self.vision_len[a], self.vision_len[b] = self.vision_len[b], self.vision_len[a]

    def copy_prefix(self, source: int, target: int, text_tokens: int, vision_tokens: int) -> None:
        """Copy the first text / vision entries of one row into another (a request that starts like a cached one)."""
        for layer, buffer in self._buffers(self.self_layers + self.cross_layers):
            count = vision_tokens if layer in self.cross_layers else text_tokens
            buffer[target, :, :count] = buffer[source, :, :count]
        self.text_len[target], self.vision_len[target] = text_tokens, vision_tokens

    def repack(self, rows: list[int]) -> list[int]:
        """Keep only ``rows`` (in that order), in buffers just large enough for them; returns their new indices.
        With no rows left every buffer is freed."""
        if not rows:
            self.release()
            return []
        text = _round_up(max(self.text_len[row] for row in rows), GROWTH_ALIGN)
        vision = _round_up(max(self.vision_len[row] for row in rows), GROWTH_ALIGN)
        index = torch.tensor(rows, device=self.device)
        for layer in self.self_layers + self.cross_layers:
            capacity = vision if layer in self.cross_layers else text
            for store in self._stores:
                store.buffers[layer] = store.buffers[layer][index, :, :capacity].clone()
        self.text_len = [self.text_len[row] for row in rows]
        self.vision_len = [self.vision_len[row] for row in rows]
        self.rows, self.text_capacity, self.vision_capacity = len(rows), text, vision
        return list(range(len(rows)))

    def drop_vision_prefix(self, row: int, tokens: int) -> None:
        """Remove the first ``tokens`` vision entries of a row (a sliding visual window); the rest move left."""
        keep = self.vision_len[row] - tokens
        for _, buffer in self._buffers(self.cross_layers):
            buffer[row, :, :keep] = buffer[row, :, tokens : tokens + keep].clone()
        self.vision_len[row] = keep

    # ----- writes and reads -----------------------------------------------------------------------------------

    def write(self, layer: int, index: tuple, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store keys/values (``...``, head_dim) at ``buffer[index]`` of a layer's K and V (quantized first in an
        int8 pool)."""
        entries = (keys, values)
        if self.quantized:
            (keys, key_scales), (values, value_scales) = quantize(keys), quantize(values)
            entries = (keys, values, key_scales, value_scales)
        for store, entry in zip(self._stores, entries, strict=True):
            store.buffers[layer][index] = entry

    def read(self, layer: int, rows: slice, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of ``rows``' first ``length`` entries of a layer, in the model dtype (views of the buffers, or
        dequantized copies in an int8 pool)."""
        held = [store.buffers[layer][rows, :, :length] for store in self._stores]
        if not self.quantized:
            return held[0], held[1]
        keys, values, key_scales, value_scales = held
        return dequantize(keys, key_scales, self.dtype), dequantize(values, value_scales, self.dtype)

    def write_vision(self, layer: int, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append vision keys/values (kv_heads, n, head_dim) to a row of a cross layer (the caller then advances
        ``vision_len[row]`` once for all layers)."""
        start = self.vision_len[row]
        self.write(layer, (row, slice(None), slice(start, start + keys.shape[-2])), keys, values)


class PoolAccess:
    """The cache object the decoder layers see during one engine forward over pool rows.

    ``rows``: the pool rows of the batch (a slice ``[first, first + B)``); ``starts`` (B,): where each row's new
    text tokens go; ``length``: the text length to attend over (new tokens included); ``vision_length``: the
    vision length to attend over. Self-attention layers write their new K/V in place and read the attended ones.
    """

    def __init__(self, pool: KVPool, rows: slice, starts: torch.Tensor, length: int, vision_length: int):
        self.pool = pool
        self.rows = rows
        self.starts = starts
        self.length = length
        self.vision_length = vision_length
        self._row_index = torch.arange(rows.start, rows.stop, device=pool.device)

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new (B, kv_heads, T, head_dim) K/V after each row's text and return the attended K/V."""
        new = keys.shape[-2]
        if new == 1:
            index = (self._row_index, slice(None), self.starts)
            self.pool.write(layer_idx, index, keys[:, :, 0], values[:, :, 0])
        else:
            for offset, row in enumerate(range(self.rows.start, self.rows.stop)):
                start = int(self.starts[offset])
                index = (row, slice(None), slice(start, start + new))
                self.pool.write(layer_idx, index, keys[offset], values[offset])
        return self.pool.read(layer_idx, self.rows, self.length)

    def cached_vision(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool.read(layer_idx, self.rows, self.vision_length)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length
