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
"""

from __future__ import annotations

import torch

from ..errors import MossVLError

GROWTH_ALIGN = 256


class KVPoolError(MossVLError):
    """The pool cannot hold what was asked of it (a capacity above its memory limit)."""


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


class KVPool:
    """K/V buffers for ``rows`` sequences of a MOSS-VL decoder, with per-row text and vision lengths."""

    def __init__(self, text_config, dtype: torch.dtype, device: torch.device | str):
        self.cross_layers = sorted(text_config.cross_attention_layers)
        self.self_layers = [i for i in range(text_config.num_hidden_layers) if i not in self.cross_layers]
        self.kv_heads = text_config.num_key_value_heads
        self.head_dim = text_config.head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        element = torch.empty(0, dtype=dtype).element_size()
        self.text_token_bytes = 2 * len(self.self_layers) * self.kv_heads * self.head_dim * element
        self.vision_token_bytes = 2 * len(self.cross_layers) * self.kv_heads * self.head_dim * element
        self.rows = self.text_capacity = self.vision_capacity = 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.text_len: list[int] = []
        self.vision_len: list[int] = []

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
            for store in (self.keys, self.values):
                # Zeros, not empty: masked-out slots still enter the attention matmul and must be finite.
                fresh = torch.zeros(
                    rows, self.kv_heads, capacity, self.head_dim, dtype=self.dtype, device=self.device
                )
                old = store.get(layer)
                if old is not None:
                    used = self._used(layer)
                    if used:
                        fresh[: self.rows, :, :used] = old[:, :, :used]
                store[layer] = fresh
        self.text_len += [0] * (rows - self.rows)
        self.vision_len += [0] * (rows - self.rows)
        self.rows, self.text_capacity, self.vision_capacity = rows, text, vision

    def release(self) -> None:
        """Free every buffer (no sequence may be left)."""
        self.keys.clear()
        self.values.clear()
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
        for layer in self.self_layers + self.cross_layers:
            lengths = self.vision_len if layer in self.cross_layers else self.text_len
            used = max(lengths[a], lengths[b])
            if used == 0:
                continue
            for store in (self.keys, self.values):
                buffer = store[layer]
                held = buffer[a, :, :used].clone()
                buffer[a, :, :used] = buffer[b, :, :used]
                buffer[b, :, :used] = held
        self.text_len[a], self.text_len[b] = self.text_len[b], self.text_len[a]
        self.vision_len[a], self.vision_len[b] = self.vision_len[b], self.vision_len[a]

    def copy_prefix(self, source: int, target: int, text_tokens: int, vision_tokens: int) -> None:
        """Copy the first text / vision entries of one row into another (a request that starts like a cached one)."""
        for layer in self.self_layers + self.cross_layers:
            count = vision_tokens if layer in self.cross_layers else text_tokens
            for store in (self.keys, self.values):
                store[layer][target, :, :count] = store[layer][source, :, :count]
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
            for store in (self.keys, self.values):
                store[layer] = store[layer][index, :, :capacity].clone()
        self.text_len = [self.text_len[row] for row in rows]
        self.vision_len = [self.vision_len[row] for row in rows]
        self.rows, self.text_capacity, self.vision_capacity = len(rows), text, vision
        return list(range(len(rows)))

    def drop_vision_prefix(self, row: int, tokens: int) -> None:
        """Remove the first ``tokens`` vision entries of a row (a sliding visual window); the rest move left."""
        keep = self.vision_len[row] - tokens
        for layer in self.cross_layers:
            for store in (self.keys, self.values):
                buffer = store[layer]
                buffer[row, :, :keep] = buffer[row, :, tokens : tokens + keep].clone()
        self.vision_len[row] = keep

    # ----- writes and views -----------------------------------------------------------------------------------

    def write_vision(self, layer: int, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append vision keys/values (kv_heads, n, head_dim) to a row of a cross layer (the caller then advances
        ``vision_len[row]`` once for all layers)."""
        start = self.vision_len[row]
        self.keys[layer][row, :, start : start + keys.shape[-2]] = keys
        self.values[layer][row, :, start : start + keys.shape[-2]] = values

    def vision_view(self, layer: int, rows: slice, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer][rows, :, :length], self.values[layer][rows, :, :length]


class PoolAccess:
    """The cache object the decoder layers see during one engine forward over pool rows.

    ``rows``: the pool rows of the batch (a slice ``[first, first + B)``); ``starts`` (B,): where each row's new
    text tokens go; ``length``: the text length to attend over (new tokens included); ``vision_length``: the
    vision length to attend over. Self-attention layers write their new K/V in place and read views.
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
        """Write the new (B, kv_heads, T, head_dim) K/V after each row's text and return the attended views."""
        new = keys.shape[-2]
        store_k, store_v = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        if new == 1:
            store_k[self._row_index, :, self.starts] = keys[:, :, 0]
            store_v[self._row_index, :, self.starts] = values[:, :, 0]
        else:
            for offset, row in enumerate(range(self.rows.start, self.rows.stop)):
                start = int(self.starts[offset])
                store_k[row, :, start : start + new] = keys[offset]
                store_v[row, :, start : start + new] = values[offset]
        return store_k[self.rows, :, : self.length], store_v[self.rows, :, : self.length]

    def cached_vision(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool.vision_view(layer_idx, self.rows, self.vision_length)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length
