"""The model steps the engine core schedules, written over the KV pool: encode frames, store their vision K/V,
prefill a chunk of text, decode one token for a batch of rows.

Every step goes through the model's own modules (the vision tower, each cross layer's key/value projections, the
decoder stack via ``MossVLTextModel.run_layers``, ``lm_head``), so the engine computes exactly what
``model.forward`` does; only the cache and the masks differ (pool rows and per-row lengths).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

from ..model import cross_attention_mask as xmask
from ..model.text import CrossAttentionInputs
from ..quantization import run_decompression_hook
from .kv_pool import KVPool, PoolAccess

# glibc mallopt parameters (malloc.h) and the values set by keep_freed_memory.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts
_TOP_PAD = 64 << 20
_NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of returning it to the system.

    By default every large tensor (activations of a prefill, the ViT's) is fresh memory from the kernel, zeroed
    page by page on first touch: about 2 µs a 4 KiB page here, tens of thousands of pages per ViT call. Blocks up
    to 32 MiB now come from the heap, which is never trimmed, so the process keeps its peak memory (as a GPU caching
    allocator does). Returns False where malloc is not glibc's; process-wide, and safe to call again.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    # The mmap threshold first: setting any of these stops glibc adapting it, and its default (128 KiB) would
    # send every large block to mmap.
    return all(
        mallopt(parameter, value)
        for parameter, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, _NEVER_TRIM),
            (_M_TOP_PAD, _TOP_PAD),
        )
    )


class ModelRunner:
    """Runs a MOSS-VL model over a ``KVPool``. On the CPU it keeps freed memory in the process
    (``keep_freed_memory``)."""

    def __init__(self, model, pool: KVPool):
        run_decompression_hook(model)
        if pool.device.type == "cpu":
            keep_freed_memory()
        self.model = model
        self.core = model.model
        self.text = self.core.language_model
        self.pool = pool
        self.merge = model.config.vision_config.spatial_merge_size
        self.rotate_decode_query = bool(model.config.rotate_cross_query_in_decode)

    @property
    def device(self) -> torch.device:
        return self.pool.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text.embed_tokens.weight.dtype

    # ----- vision ----------------------------------------------------------------------------------------------

    def encode_frames(self, pixels: torch.Tensor, grid_thw: tuple[int, int, int]) -> torch.Tensor:
        """Merged vision tokens (frames · tokens per frame, hidden) of consecutive frames of one media item."""
        grid = torch.tensor([grid_thw], dtype=torch.long)
        return self.core.get_vision_features(pixels.to(self.device), grid)

    def frame_memory(self, features: torch.Tensor, frames: int) -> torch.Tensor:
        """Vision memory entries of ``frames`` frames: each frame's tokens then the learned separator."""
        per_frame = features.view(frames, -1, features.shape[-1])
        separator = self.core.separator_token.to(features.dtype).expand(frames, 1, -1)
        return torch.cat([per_frame, separator], dim=1).flatten(0, 1)

    def store_vision(self, row: int, memory: torch.Tensor, positions: torch.Tensor) -> None:
        """Append vision memory (n, hidden) with XRoPE positions (3, n) to a row: K (k_norm, rotated) and V of
        every cross layer."""
        states = memory.to(self.device, self.dtype)[None]
        cos, sin = self.text.rotary_emb(states, positions.to(self.device)[:, None])
        for layer in self.pool.cross_layers:
            keys, values = self.text.layers[layer].cross_attn.vision_key_values(states, cos, sin)
            self.pool.write_vision(layer, row, keys[0], values[0])
        self.pool.vision_len[row] += memory.shape[0]

    # ----- text ------------------------------------------------------------------------------------------------

    def forward(
        self,
        rows: slice,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        prefix: torch.Tensor,
        rotate_query: bool,
        logits: bool,
    ) -> torch.Tensor | None:
        """Feed ``input_ids`` (B, T) to pool ``rows`` after their stored text (B = 1 when T > 1).

        ``positions`` (3, B, T) XRoPE positions; ``prefix`` (B, T) vision entries each token may attend to (the
        staircase mask as prefix lengths). Returns the last token's logits (B, V) in float32 when ``logits``.
        """
        batch, new = input_ids.shape
        starts = torch.tensor(self.pool.text_len[rows], dtype=torch.long, device=self.device)
        length = int(starts.max()) + new
        vision_length = max(self.pool.vision_len[rows])
        access = PoolAccess(self.pool, rows, starts, length, vision_length)
        slots = torch.arange(length, device=self.device)
        if new == 1 and min(self.pool.text_len[rows]) + 1 == length:
            self_mask = None  # every row attends to all of its text: no mask to build or apply
        elif new == 1:
            self_mask = (slots[None, :] <= starts[:, None]).view(batch, 1, 1, length)
        elif int(starts[0]) == 0:
            self_mask = None  # plain causal attention within the chunk
        else:
            self_mask = (slots[None, :] <= starts[0] + torch.arange(new, device=self.device)[:, None]).view(
                1, 1, new, length
            )
        prefix = prefix.to(self.device)
        cross = None
        if vision_length and bool((prefix > 0).any()):
            # Decode steps usually see the whole vision memory: then neither mask is needed.
            sees_all = bool((prefix == vision_length).all())
            cross = CrossAttentionInputs(
                states=None,
                cos=None,
                sin=None,
                mask=None if sees_all else xmask.expand(prefix, vision_length, self.dtype),
                rows=None if sees_all else xmask.row_mask(prefix, self.dtype),
                sees_vision=True,
                plan=None,
                rotate_query=rotate_query,
            )
        hidden = self.text.embed_tokens(input_ids.to(self.device))
        hidden = self.text.run_layers(hidden, positions.to(self.device), self_mask, access, cross)
        for offset, row in enumerate(range(rows.start, rows.stop)):
            self.pool.text_len[row] = int(starts[offset]) + new
        if not logits:
            return None
        return self.model.lm_head(hidden[:, -1]).float()

    def decode(self, batch: int, tokens: list[int], positions: list[int], prefix: list[int]) -> torch.Tensor:
        """One decode step over pool rows ``0..batch-1``: logits (batch, V) of the next tokens."""
        ids = torch.tensor(tokens, dtype=torch.long).view(batch, 1)
        pos = torch.tensor(positions, dtype=torch.long).view(1, batch, 1).expand(3, -1, -1)
        seen = torch.tensor(prefix, dtype=torch.long).view(batch, 1)
        return self.forward(slice(0, batch), ids, pos, seen, self.rotate_decode_query, logits=True)
