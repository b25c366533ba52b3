"""MOSS-VL vision encoder (`model.visual`): patch embed, 2D-RoPE ViT with per-frame attention, DeepStack merger.

Spec §3. Input rows are patches in merge-window order (§3.a): per media, per frame, per 2×2 merge window in
raster order, the 4 patches of the window in raster order. Every frame (an image is one frame) attends only to
itself; frames of equal patch count go through one batched SDPA call. The output is one merged token per
2×2 window, packed over all media in ``grid_thw`` order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from ..errors import ConfigError, MediaError
from .configuration import MossVLVisionConfig
from .linear import Linear, linear

ROTARY_THETA = 10000.0


def merge_window_ids(
    height: int, width: int, merge_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Row and column of every patch of an (height, width) frame, in merge-window order: LongTensor (h*w, 2)."""
    rows = torch.arange(height, device=device).view(height // merge_size, 1, merge_size, 1)
    cols = torch.arange(width, device=device).view(1, width // merge_size, 1, merge_size)
    shape = (height // merge_size, width // merge_size, merge_size, merge_size)
    return torch.stack([rows.expand(shape).flatten(), cols.expand(shape).flatten()], dim=-1)


def tile_per_frame(
    grids: list[tuple[int, int, int]], build: Callable[[int, int], torch.Tensor]
) -> torch.Tensor:
    """Rows of ``build(h, w)`` for every frame of every media item, in order. Streams and training batches give
    one grid row per frame, so the table of each frame size is built once, not once per row."""
    per_size = {(h, w): build(h, w) for h, w in dict.fromkeys((h, w) for _, h, w in grids)}
    return torch.cat([per_size[h, w].repeat(t, 1) for t, h, w in grids])


@dataclass(frozen=True)
class FrameGroup:
    """Frames sharing one patch count; they are attended together in a single SDPA call."""

    num_frames: int
    frame_len: int
    token_index: torch.Tensor | None  # (num_frames * frame_len,) packed rows; None = all rows, in order


def frame_groups(grids: list[tuple[int, int, int]], device: torch.device) -> list[FrameGroup]:
    """Group the frames of all media by patch count so that attention needs one call per distinct frame size."""
    frame_lens = [h * w for t, h, w in grids for _ in range(t)]
    if len(set(frame_lens)) == 1:
        return [FrameGroup(len(frame_lens), frame_lens[0], None)]
    starts = torch.tensor([0, *frame_lens[:-1]], device=device).cumsum(0)
    lens = torch.tensor(frame_lens, device=device)
    groups = []
    for frame_len in sorted(set(frame_lens)):
        frame_starts = starts[lens == frame_len]
        index = (frame_starts[:, None] + torch.arange(frame_len, device=device)).flatten()
        groups.append(FrameGroup(len(frame_starts), frame_len, index))
    return groups


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (N, H, D) by per-row angles (cos/sin (N, 1, D), float32); computed in float32, cast back."""
    x_float = x.float()
    return (x_float * cos + rotate_half(x_float) * sin).to(x.dtype)


class MossVLVisionPatchEmbed(nn.Module):
    """Conv3d with kernel = stride = patch, applied to already-cut patch vectors, i.e. one matrix product."""

    def __init__(self, config: MossVLVisionConfig):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(
            config.in_channels, config.hidden_size, kernel_size=kernel, stride=kernel, bias=True
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The Conv3d weight (hidden, C, tp, p, p) flattens in the same (C, tp, p, p) order as a patch row.
        weight = self.proj.weight.flatten(1)  # (hidden, C*tp*p*p)
        return linear(pixel_values.to(weight.dtype), weight, self.proj.bias)  # (N, hidden)


class MossVLVisionRotaryEmbedding(nn.Module):
    """Angle table of the 2D rotary: one frequency set of size dim/2, shared by the row and the column axis."""

    def __init__(self, dim: int, theta: float = ROTARY_THETA):
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim
        return 1.0 / (self.theta**exponents)

    def forward(self, size: int) -> torch.Tensor:
        """Angles of positions 0..size-1: float32 (size, dim/2)."""
        inv_freq = self.inv_freq
        if inv_freq.dtype != torch.float32:
            # `module.to(bfloat16)` casts buffers too; bf16 frequencies would visibly skew the angles.
            inv_freq = self.compute_inv_freq(inv_freq.device)
        positions = torch.arange(size, dtype=torch.float32, device=inv_freq.device)
        return torch.outer(positions, inv_freq)


class MossVLVisionAttention(nn.Module):
    """Multi-head self-attention with 2D rotary, block-diagonal over frames."""

    def __init__(self, config: MossVLVisionConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.qkv = Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, groups: list[FrameGroup]
    ) -> torch.Tensor:
        n = hidden.shape[0]
        q, k, v = self.qkv(hidden).view(n, 3, self.num_heads, self.head_dim).unbind(1)  # each (N, H, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if len(groups) == 1 and groups[0].token_index is None:
            out = self._attend(q, k, v, groups[0])
        else:
            out = q.new_empty(n, self.num_heads * self.head_dim)
            for group in groups:
                index = group.token_index
                out[index] = self._attend(q[index], k[index], v[index], group)
        return self.proj(out)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: FrameGroup) -> torch.Tensor:
        shape = (group.num_frames, group.frame_len, self.num_heads, self.head_dim)
        q, k, v = (x.view(shape).transpose(1, 2) for x in (q, k, v))  # (frames, H, L, D)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale = head_dim**-0.5
        return out.transpose(1, 2).reshape(group.num_frames * group.frame_len, -1)


class MossVLVisionMLP(nn.Module):
    def __init__(self, config: MossVLVisionConfig):
        super().__init__()
        self.linear_fc1 = Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.linear_fc2 = Linear(config.intermediate_size, config.hidden_size, bias=True)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act_fn(self.linear_fc1(hidden)))


class MossVLVisionBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: attention then MLP, each with a residual (checkpointable in training)."""

    def __init__(self, config: MossVLVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.attn = MossVLVisionAttention(config)
        self.mlp = MossVLVisionMLP(config)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, groups: list[FrameGroup]
    ) -> torch.Tensor:
        hidden = hidden + self.attn(self.norm1(hidden), cos, sin, groups)
        return hidden + self.mlp(self.norm2(hidden))


class MossVLVisionMerger(nn.Module):
    """Normalise the final and DeepStack feature maps, concatenate them per patch, merge each 2×2 window."""

    def __init__(self, config: MossVLVisionConfig):
        super().__init__()
        num_levels = 1 + len(config.deepstack_visual_indexes)
        self.input_size = num_levels * config.hidden_size * config.spatial_merge_size**2
        self.norms = nn.ModuleList(nn.LayerNorm(config.hidden_size, eps=1e-6) for _ in range(num_levels))
        self.linear_fc1 = Linear(self.input_size, self.input_size, bias=True)
        self.act_fn = nn.GELU()  # exact erf GELU here, unlike the tanh GELU of the blocks
        self.linear_fc2 = Linear(self.input_size, config.out_hidden_size, bias=True)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """levels: [final, tap_0, tap_1, ...], each (N, hidden) → (N / merge², out_hidden_size)."""
        features = torch.cat([norm(level) for norm, level in zip(self.norms, levels, strict=True)], dim=-1)
        # A merge window is merge² consecutive rows, so this view (N, L*hidden) → (N/4, 4*L*hidden) is the merge.
        features = features.view(-1, self.input_size)
        return self.linear_fc2(self.act_fn(self.linear_fc1(features)))


class MossVLVisionModel(nn.Module):
    """The MOSS-VL ViT: ``forward(pixel_values (N, C*tp*p*p), grid_thw (M, 3)) -> (N / merge², out_hidden_size)``."""

    def __init__(self, config: MossVLVisionConfig):
        super().__init__()
        self.config = config
        self.merge_size = config.spatial_merge_size
        self.grid_side = math.isqrt(config.num_position_embeddings)
        self.deepstack_visual_indexes = list(config.deepstack_visual_indexes)
        self.patch_embed = MossVLVisionPatchEmbed(config)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.rotary_pos_emb = MossVLVisionRotaryEmbedding(config.hidden_size // config.num_heads // 2)
        self.blocks = nn.ModuleList(MossVLVisionBlock(config) for _ in range(config.depth))
        self.merger = MossVLVisionMerger(config)

    @property
    def patch_dim(self) -> int:
        c = self.config
        return c.in_channels * c.temporal_patch_size * c.patch_size**2

    def forward(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Encode all media; ``chunk_size`` (``vision_chunked_length``) bounds the media items per pass."""
        grids = self._check_inputs(pixel_values, grid_thw)
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise ConfigError(
                f"vision chunk_size (vision_chunked_length) must be a positive integer, got {chunk_size}"
            )
        if not grids:
            return pixel_values.new_zeros(
                0, self.config.out_hidden_size, dtype=self.patch_embed.proj.weight.dtype
            )
        if chunk_size is None or chunk_size >= len(grids):
            return self._encode(pixel_values, grids)
        outputs, start = [], 0
        for first in range(0, len(grids), chunk_size):
            chunk = grids[first : first + chunk_size]
            end = start + sum(t * h * w for t, h, w in chunk)
            outputs.append(self._encode(pixel_values[start:end], chunk))
            start = end
        return torch.cat(outputs)

    def _encode(self, pixel_values: torch.Tensor, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        hidden = self.patch_embed(pixel_values) + self._position_embeddings(grids)  # (N, hidden)
        cos, sin = self._rotary_tables(grids, hidden.device)  # (N, 1, head_dim) each, float32
        groups = frame_groups(grids, hidden.device)
        taps = {}
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, cos, sin, groups)
            if index in self.deepstack_visual_indexes:
                taps[index] = (
                    hidden  # DeepStack feature: the raw block output, normalised later by the merger
                )
        return self.merger([hidden, *(taps[index] for index in self.deepstack_visual_indexes)])

    def interpolated_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """Learned position grid bilinearly resampled (align-corners) to (height, width): (h*w, hidden).

        Rows are in merge-window order.
        """
        weight = self.pos_embed.weight
        side = self.grid_side
        ys = torch.linspace(0, side - 1, height, dtype=torch.float32, device=weight.device)
        xs = torch.linspace(0, side - 1, width, dtype=torch.float32, device=weight.device)
        y0, x0 = ys.long(), xs.long()
        y1, x1 = (y0 + 1).clamp(max=side - 1), (x0 + 1).clamp(max=side - 1)
        dy, dx = (ys - y0)[:, None], (xs - x0)[None, :]  # (h, 1), (1, w)
        corners = torch.stack(
            [
                y0[:, None] * side + x0,
                y0[:, None] * side + x1,
                y1[:, None] * side + x0,
                y1[:, None] * side + x1,
            ]
        )  # (4, h, w)
        weights = torch.stack([(1 - dy) * (1 - dx), (1 - dy) * dx, dy * (1 - dx), dy * dx]).to(weight.dtype)
        grid = (self.pos_embed(corners) * weights[..., None]).sum(0)  # (h, w, hidden)
        ids = merge_window_ids(height, width, self.merge_size, weight.device)
        return grid[ids[:, 0], ids[:, 1]]

    def rotary_angles(self, height: int, width: int) -> torch.Tensor:
        """Rotary angles of an (height, width) frame in merge-window order: float32 (h*w, head_dim / 2)."""
        table = self.rotary_pos_emb(max(height, width))  # (size, head_dim / 4)
        ids = merge_window_ids(height, width, self.merge_size, table.device)
        return torch.cat([table[ids[:, 0]], table[ids[:, 1]]], dim=-1)

    def _position_embeddings(self, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        return tile_per_frame(grids, self.interpolated_pos_embed)

    def _rotary_tables(
        self, grids: list[tuple[int, int, int]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        angles = tile_per_frame(grids, self.rotary_angles).to(device)
        emb = torch.cat([angles, angles], dim=-1)[:, None, :]  # (N, 1, head_dim)
        return emb.cos(), emb.sin()

    def _check_inputs(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
        if pixel_values.ndim != 2 or pixel_values.shape[1] != self.patch_dim:
            raise MediaError(
                f"pixel_values must have shape (num_patches, {self.patch_dim}) "
                f"(= in_channels × temporal_patch_size × patch_size²), got {tuple(pixel_values.shape)}"
            )
        if grid_thw.ndim != 2 or grid_thw.shape[1] != 3 or grid_thw.is_floating_point():
            raise MediaError(
                f"grid_thw must be an integer tensor of shape (num_media, 3), got {grid_thw.dtype} "
                f"{tuple(grid_thw.shape)}"
            )
        grids = [tuple(row) for row in grid_thw.tolist()]
        m = self.merge_size
        for index, (t, h, w) in enumerate(grids):
            if min(t, h, w) < 1:
                raise MediaError(f"grid_thw row {index} = {[t, h, w]} has a non-positive entry")
            if h % m or w % m:
                raise MediaError(
                    f"grid_thw row {index} = {[t, h, w]}: height and width (in patches) must be multiples of "
                    f"spatial_merge_size {m}"
                )
        total = sum(t * h * w for t, h, w in grids)
        if total != pixel_values.shape[0]:
            raise MediaError(
                f"pixel_values has {pixel_values.shape[0]} patch rows but grid_thw {grids} describes "
                f"sum(t*h*w) = {total}"
            )
        return grids

    def reset_parameters(self) -> None:
        """Initialise every weight as a fresh model would be (see ``init_vision_weights``)."""
        for module in self.modules():
            init_vision_weights(module, self.config.initializer_range)


@torch.no_grad()
def init_vision_weights(module: nn.Module, std: float) -> None:
    """Initialise one sub-module of the vision tower; meant for a ``PreTrainedModel._init_weights``.

    Linear/Conv3d and the position table: normal(0, std), zero bias; LayerNorm: ones / zeros; the rotary
    frequencies are recomputed (a model built on the meta device has none). Uses transformers' guarded init
    functions, so tensors loaded from a checkpoint are left untouched.
    """
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, MossVLVisionRotaryEmbedding):
        init.copy_(module.inv_freq, module.compute_inv_freq())


__all__ = ["MossVLVisionModel", "init_vision_weights", "merge_window_ids"]
