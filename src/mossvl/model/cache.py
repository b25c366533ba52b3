"""KV cache of the MOSS-VL decoder: text K/V in self-attention slots, vision K/V in cross-attention slots.

Spec §8. A ``DynamicCache`` with one slot per decoder layer. Self-attention slots grow by one entry per text
token. Cross-attention slots hold the vision memory's keys (after k_norm and XRoPE) and values: written at
prefill, read by every later step, and extended when a later forward brings new media (multi-turn sessions,
realtime frames). The per-sample state that later steps need lives here too, not on the model, so one model
can serve several caches: the next text position, the frames already stored and where each frame ends in the
memory, and the visible prefix of the last token.
"""

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.configuration_utils import PreTrainedConfig

# Smallest capacity of a self-attention slot's buffers, in tokens.
MIN_TEXT_CAPACITY = 256


class MossVLSelfAttentionLayer(DynamicLayer):
    """Cache slot of a self-attention layer: a ``DynamicLayer`` whose ``keys`` / ``values`` are prefix views of
    buffers that grow by doubling, so that a decode step writes its entry in place instead of copying the whole
    cache (``torch.cat``, whose cost per step grows with the context).

    Cropping keeps a prefix view; whatever else replaces ``keys`` (batch selection, beam reordering, offloading) is
    a new tensor, copied into fresh buffers at the next update. Inputs that require grad take ``torch.cat``, as
    autograd cannot see through a buffer written in place.
    """

    def __init__(self):
        super().__init__()
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.requires_grad or value_states.requires_grad:
            return super().update(key_states, value_states, *args, **kwargs)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self._holds_keys(key_states, end):
            self._grow(key_states, length, end)
        self._key_buffer[..., length:end, :] = key_states
        self._value_buffer[..., length:end, :] = value_states
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _holds_keys(self, key_states: torch.Tensor, end: int) -> bool:
        """Whether the buffers have room for ``end`` entries of ``key_states``' shape and ``keys`` is their prefix."""
        buffer = self._key_buffer
        return (
            buffer is not None
            and buffer.shape[-2] >= end
            and buffer.shape[:2] == key_states.shape[:2]
            and buffer.dtype == key_states.dtype
            and buffer.device == key_states.device
            and (
                self.keys.numel() == 0
                or (
                    self.keys.data_ptr() == buffer.data_ptr()
                    and self.values.data_ptr() == self._value_buffer.data_ptr()
                )
            )
        )

    def _grow(self, key_states: torch.Tensor, length: int, end: int) -> None:
        batch, heads, _, dim = key_states.shape
        capacity = max(2 * end, MIN_TEXT_CAPACITY)
        keys = key_states.new_empty(batch, heads, capacity, dim)
        values = key_states.new_empty(batch, heads, capacity, dim)
        if length:
            keys[..., :length, :] = self.keys
            values[..., :length, :] = self.values
        self._key_buffer, self._value_buffer = keys, values

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


class MossVLCrossAttentionLayer(DynamicLayer):
    """Cache slot of a cross-attention layer: vision keys/values (B, kv_heads, Lv, head_dim)."""

    def crop(self, tokens_to_remove: int) -> None:
        # Cropping removes text tokens (assisted decoding); the vision memory is not text.
        return

    def append(
        self, keys: torch.Tensor, values: torch.Tensor, plan: "VisionAppend"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a block of new vision keys/values (B, kv_heads, Lnew, D) following ``plan``; return the whole memory."""
        if not self.is_initialized or self.keys.numel() == 0:
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values
        elif plan.index is None:
            self.keys = torch.cat([self.keys, keys], dim=-2)
            self.values = torch.cat([self.values, values], dim=-2)
        else:
            self.keys = _scatter_block(self.keys, keys, plan)
            self.values = _scatter_block(self.values, values, plan)
        return self.keys, self.values


def _scatter_block(old: torch.Tensor, new: torch.Tensor, plan: "VisionAppend") -> torch.Tensor:
    batch, heads, _, dim = new.shape
    # One spare slot at the end receives the new block's padding entries, then is cut off.
    out = old.new_zeros(batch, heads, plan.length + 1, dim)
    keep = min(old.shape[-2], plan.length)
    out[:, :, :keep] = old[:, :, :keep]
    index = plan.index.masked_fill(plan.index < 0, plan.length).to(new.device)
    out.scatter_(2, index[:, None, :, None].expand(batch, heads, -1, dim), new)
    return out[:, :, : plan.length]


@dataclass
class VisionAppend:
    """Where a block of new vision tokens goes in the cached memory.

    ``index`` (B, Lnew): destination slot of each new token, -1 for the block's padding; None when the block can
    simply be concatenated. ``length``: memory length after the append. ``offsets`` (B, F + 1): start of every
    frame (old and new) in the memory afterwards. ``num_frames`` (B,): frames stored afterwards whose
    image_pad was seen.
    """

    index: torch.Tensor | None
    length: int
    offsets: torch.Tensor
    num_frames: torch.Tensor


class MossVLCache(DynamicCache):
    """Dynamic cache with MOSS-VL's cross-attention slots and per-sample decode state.

    State (all (B,) LongTensors unless noted, None before the first forward):
    ``next_position`` the next text XRoPE position; ``num_frames`` frames stored in the vision memory whose
    ``<|image_pad|>`` was seen; ``frame_offsets`` (B, F + 1) where each stored frame starts (the last column
    repeats the end); ``last_prefix`` the number of vision tokens the last processed token could see.
    ``get_seq_length()`` reports the text length.
    """

    def __init__(self, config: PreTrainedConfig, **kwargs):
        text_config = config.get_text_config(decoder=True)
        self.cross_attention_layers = sorted(text_config.cross_attention_layers)
        layers = [
            MossVLCrossAttentionLayer()
            if index in self.cross_attention_layers
            else MossVLSelfAttentionLayer()
            for index in range(text_config.num_hidden_layers)
        ]
        Cache.__init__(self, layers=layers, **kwargs)
        self.text_layer = next((i for i in range(len(layers)) if i not in self.cross_attention_layers), 0)
        self.next_position: torch.Tensor | None = None
        self.num_frames: torch.Tensor | None = None
        self.frame_offsets: torch.Tensor | None = None
        self.last_prefix: torch.Tensor | None = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[self.text_layer].get_seq_length()

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        if layer_idx in self.cross_attention_layers:
            layer_idx = self.text_layer
        return super().get_mask_sizes(query_length, layer_idx)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length()

    @property
    def vision_length(self) -> int:
        """Length (with padding) of the cached vision memory; 0 when nothing is stored."""
        return (
            self.layers[self.cross_attention_layers[0]].get_seq_length() if self.cross_attention_layers else 0
        )

    @property
    def rope_deltas(self) -> torch.Tensor | None:
        """Per-sample offset between a token's cache index and its text position (spec §6.5)."""
        if self.next_position is None:
            return None
        return self.next_position - self.get_seq_length()

    def plan_vision_append(
        self,
        frame_sizes: list[torch.Tensor],
        block_length: int,
        pad_multiple: int = 1,
        referenced: torch.Tensor | None = None,
    ) -> VisionAppend:
        """Place a block of new frames after each sample's stored frames.

        ``frame_sizes[b]`` holds the vision-token count of each new frame of sample b; the block lays them out from
        slot 0 per sample and is ``block_length`` long; a rebuilt memory is padded to a multiple of
        ``pad_multiple``. ``referenced`` (B,) counts the new frames whose image_pad is in the text (all by default);
        frames stored but never referenced (the blank image of a text-only prompt) are overwritten by the next
        append.
        """
        device = frame_sizes[0].device if frame_sizes else None
        batch = len(frame_sizes)
        old_frames = self.num_frames if self.num_frames is not None else torch.zeros(batch, dtype=torch.long)
        old_frames = old_frames.to(device)
        old_offsets = (
            self.frame_offsets if self.frame_offsets is not None else torch.zeros(batch, 1, dtype=torch.long)
        )
        old_offsets = old_offsets.to(device)
        starts = torch.gather(old_offsets, 1, old_frames[:, None])[:, 0]  # (B,) end of the referenced frames
        new_counts = torch.tensor([len(sizes) for sizes in frame_sizes], dtype=torch.long, device=device)
        total_frames = old_frames + new_counts
        referenced = new_counts if referenced is None else torch.minimum(referenced.to(device), new_counts)
        offsets = torch.zeros(batch, int(total_frames.max()) + 1, dtype=torch.long, device=device)
        lengths = []
        for b, sizes in enumerate(frame_sizes):
            stored = int(old_frames[b])
            offsets[b, : stored + 1] = old_offsets[b, : stored + 1]
            ends = int(starts[b]) + torch.cumsum(sizes.to(device=device, dtype=torch.long), dim=0)
            offsets[b, stored + 1 : stored + 1 + len(sizes)] = ends
            end = int(ends[-1]) if len(sizes) else int(starts[b])
            offsets[b, stored + 1 + len(sizes) :] = end
            lengths.append(end - int(starts[b]))
        old_length = self.vision_length
        if bool((starts == old_length).all()):
            return VisionAppend(None, old_length + block_length, offsets, old_frames + referenced)
        slot = torch.arange(block_length, device=device)
        real = slot[None, :] < torch.tensor(lengths, device=device)[:, None]
        index = torch.where(real, starts[:, None] + slot[None, :], -1)
        needed = int((starts + torch.tensor(lengths, device=device)).max())
        length = needed + (-needed) % pad_multiple
        return VisionAppend(index, length, offsets, old_frames + referenced)

    def append_vision(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, plan: VisionAppend
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new vision keys/values of a cross layer; return the layer's whole vision memory."""
        return self.layers[layer_idx].append(keys, values, plan)

    def cached_vision(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        layer = self.layers[layer_idx]
        if not layer.is_initialized or layer.keys.numel() == 0:
            return None
        return layer.keys, layer.values

    def record_step(
        self,
        next_position: torch.Tensor,
        last_prefix: torch.Tensor,
        plan: VisionAppend | None = None,
    ) -> None:
        """Remember the per-sample state after a forward (called once per forward by the model)."""
        self.next_position = next_position
        self.last_prefix = last_prefix
        if plan is not None:
            self.frame_offsets = plan.offsets
            self.num_frames = plan.num_frames

    def _state_names(self) -> tuple[str, ...]:
        return ("next_position", "num_frames", "frame_offsets", "last_prefix")

    def _map_state(self, fn) -> None:
        for name in self._state_names():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_state(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_state(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_state(lambda t: t[indices.to(t.device)])

    def crop(self, tokens_to_remove: int) -> None:
        # Cropped tokens are plain generated text, one position each.
        before = self.get_seq_length()
        super().crop(tokens_to_remove)
        if self.next_position is not None:
            self.next_position = self.next_position - (before - self.get_seq_length())

    def reset(self) -> None:
        super().reset()
        self._map_state(lambda t: None)
