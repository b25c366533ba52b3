"""XRoPE: the decoder's 3-axis interleaved rotary embedding and the (t, h, w) positions of text and vision tokens.

Spec §6. Positions are pure functions of the token ids, the padding mask and the merged grid of each frame, so
they serve a full prompt and a *continuation chunk* alike: a chunk starts at ``start_position`` (the cache's
next text position) and numbers only its own frames.
"""

import torch
from torch import nn

from ..errors import QueryError
from .configuration import MossVLTextConfig


class MossVLTextRotaryEmbedding(nn.Module):
    """cos/sin tables of interleaved MRoPE for (3, B, L) positions (axis 0 = t, 1 = h, 2 = w)."""

    inv_freq: torch.Tensor

    def __init__(self, config: MossVLTextConfig):
        super().__init__()
        self.theta = float(config.rope_parameters["rope_theta"])
        self.dim = config.head_dim
        self.mrope_section = list(config.rope_parameters["mrope_section"])
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        return 1.0 / (self.theta**exponents)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (3, B, L, D/2): one frequency table per axis, computed in fp32 whatever the activation dtype.
        freqs = position_ids.to(torch.float32)[..., None] * self.inv_freq.to(x.device)
        merged = freqs[0].clone()
        _, h_pairs, w_pairs = self.mrope_section
        # Interleaving: pair j takes the h axis when j % 3 == 1 and the w axis when j % 3 == 2, over the first
        # 3 * section pairs of each; every other pair keeps the t axis.
        merged[..., 1 : 3 * h_pairs : 3] = freqs[1][..., 1 : 3 * h_pairs : 3]
        merged[..., 2 : 3 * w_pairs : 3] = freqs[2][..., 2 : 3 * w_pairs : 3]
        emb = torch.cat((merged, merged), dim=-1)  # (B, L, D)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, heads, L, D) with cos/sin tables (B, L, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def frame_grids(grid_thw: torch.Tensor, media_per_sample: list[int], merge_size: int) -> list[torch.Tensor]:
    """Merged grid (eh, ew) of every frame, per sample: a list of (F_b, 2) LongTensors.

    ``grid_thw`` rows are the media in text order across the batch; ``media_per_sample`` says how many belong to
    each sample. A media item with t frames contributes t identical rows.
    """
    if sum(media_per_sample) != grid_thw.shape[0]:
        raise QueryError(
            f"media_nums_per_sample sums to {sum(media_per_sample)} but grid_thw has {grid_thw.shape[0]} rows"
        )
    grids = []
    for media in torch.split(grid_thw.to(torch.long).cpu(), list(media_per_sample)):
        merged = media[:, 1:] // merge_size  # (M_b, 2)
        grids.append(torch.repeat_interleave(merged, media[:, 0], dim=0))
    return grids


def text_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int | None,
    frame_extents: list[torch.Tensor],
    start_position: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """XRoPE text positions (3, B, L) of a prompt or a continuation chunk, and each sample's next position (B,).

    ``frame_extents[b]`` holds ``max(eh, ew)`` of the frames whose ``<|image_pad|>`` tokens appear in this chunk of
    sample b, in text order. A regular token advances the position by 1; the k-th image_pad sits at
    ``t_k + m_k`` where ``t_k`` is the position the next regular token would have had, and the following token
    continues at ``t_k + m_k + 1``. Padding tokens (attention_mask 0) get 0 and do not advance. With
    ``image_token_id`` None every token is regular (a chunk that brings no media).
    """
    batch, length = input_ids.shape
    device = input_ids.device
    valid = attention_mask.to(torch.bool)
    is_image = (
        (input_ids == image_token_id) & valid if image_token_id is not None else torch.zeros_like(valid)
    )
    regular = valid & ~is_image
    if start_position is None:
        start_position = torch.zeros(batch, dtype=torch.long, device=device)
    base = torch.cumsum(regular, dim=1) - regular.long() + start_position.to(device)[:, None]

    shifts = torch.zeros(batch, length, dtype=torch.long, device=device)
    for b in range(batch):
        count = int(is_image[b].sum())
        if count != len(frame_extents[b]):
            raise QueryError(
                f"sample {b} has {count} <|image_pad|> tokens in this chunk but {len(frame_extents[b])} frames "
                "were given for it (one image_pad per image or video frame)"
            )
        shifts[b, is_image[b]] = frame_extents[b].to(device) + 1
    positions = base + torch.cumsum(shifts, dim=1) - is_image.long()
    positions = positions.masked_fill(~valid, 0)

    before = (start_position.to(device) - 1)[:, None]  # (B, 1): a chunk without valid tokens keeps the start
    last = torch.cat([torch.where(valid, positions, before), before], dim=1).amax(dim=1)
    next_position = last + 1
    return positions.unsqueeze(0).expand(3, -1, -1), next_position


def vision_position_ids(
    text_positions: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    grids: list[torch.Tensor],
    length: int,
) -> torch.Tensor:
    """XRoPE positions (3, B, length) of the vision memory of this chunk's frames, laid out frame by frame.

    Frame k of a sample, whose image_pad sits at text position ``p`` with merged grid (eh, ew) and
    ``m = max(eh, ew)``, starts at ``t = p - m``: its grid token (y, x) gets ``(t, t + y, t + x)`` and its
    separator ``(p, p, p)``. Frames without an image_pad (the blank image of a text-only prompt) and slots after
    a sample's last frame (padding) stay 0.
    """
    text_positions = text_positions[0] if text_positions.dim() == 3 else text_positions
    batch = input_ids.shape[0]
    out = torch.zeros(3, batch, length, dtype=torch.long, device=input_ids.device)
    valid = attention_mask.to(torch.bool)
    for b in range(batch):
        grid = grids[b].to(input_ids.device)
        if grid.numel() == 0:
            continue
        pad_positions = text_positions[b][(input_ids[b] == image_token_id) & valid[b]][: len(grid)]
        eh, ew = grid[:, 0], grid[:, 1]
        extent = torch.maximum(eh, ew)
        referenced = torch.arange(len(grid), device=grid.device) < len(pad_positions)
        pad_positions = torch.cat([pad_positions, extent[len(pad_positions) :]])
        sizes = eh * ew + 1
        frame = torch.repeat_interleave(torch.arange(len(sizes), device=grid.device), sizes)
        local = torch.arange(int(sizes.sum()), device=grid.device) - (torch.cumsum(sizes, 0) - sizes)[frame]
        start = (pad_positions - extent)[frame]
        is_separator = local == sizes[frame] - 1
        rows = torch.where(is_separator, extent[frame], local // ew[frame])
        cols = torch.where(is_separator, extent[frame], local % ew[frame])
        keep = referenced[frame]
        out[0, b, : len(frame)] = torch.where(is_separator, start + extent[frame], start) * keep
        out[1, b, : len(frame)] = (start + rows) * keep
        out[2, b, : len(frame)] = (start + cols) * keep
    return out
