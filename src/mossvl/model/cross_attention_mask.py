"""The frame-level causal ("staircase") cross-attention mask, held as one visible-prefix length per text token.

Spec §7. A sample's vision memory stores its frames contiguously, each frame = its merged tokens + 1 separator,
so the vision tokens a text token may attend to always form a prefix ``[0, prefix)`` of the memory. The prefix
is the end offset of the last visible frame; 0 means the token sees no frame, and then the whole cross layer is
an identity for it (the row mask). The dense (B, 1, L, Lv) mask is only built by ``expand`` at the kernel call.
"""

import torch


def frame_offsets(frame_sizes: list[torch.Tensor], device: torch.device | None = None) -> torch.Tensor:
    """(B, F_max + 1) cumulative vision-token offsets: entry f is where frame f starts (and frame f-1 ends).

    ``frame_sizes[b]`` holds the number of vision tokens (grid tokens + separator) of each frame of sample b.
    Entries past a sample's last frame repeat its total.
    """
    width = max((len(sizes) for sizes in frame_sizes), default=0) + 1
    out = torch.zeros(len(frame_sizes), width, dtype=torch.long, device=device)
    for b, sizes in enumerate(frame_sizes):
        ends = torch.cumsum(sizes.to(device=device, dtype=torch.long), dim=0)
        out[b, 1 : len(sizes) + 1] = ends
        out[b, len(sizes) + 1 :] = ends[-1] if len(sizes) else 0
    return out


def visible_frames_from_input_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    start_frames: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, L) number of frames each token sees: ``start_frames`` plus the image_pad tokens at or before it.

    Padding tokens see nothing (0).
    """
    valid = attention_mask.to(torch.bool)
    count = torch.cumsum((input_ids == image_token_id) & valid, dim=1)
    if start_frames is not None:
        count = count + start_frames.to(count.device)[:, None]
    return count.masked_fill(~valid, 0)


def visible_frames_from_mask(cross_attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) number of visible frames from an official bool mask (B, 1, L, F) where True = masked.

    Each row of the official mask is a prefix of visible frames, so the count of unmasked entries is the prefix.
    """
    return (~cross_attention_mask.to(torch.bool)).sum(dim=-1).squeeze(1)


def visible_prefix(visible_frames: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(B, L) number of visible vision tokens: the end offset of the last visible frame."""
    frames = visible_frames.clamp(max=offsets.shape[1] - 1)
    return torch.gather(offsets.to(frames.device), 1, frames)


def row_mask(prefix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, 1) 1.0 where the token sees at least one vision token, else 0.0 (the whole cross layer is skipped)."""
    return (prefix > 0).to(dtype).unsqueeze(-1)


def expand(prefix: torch.Tensor, kv_length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense cross-attention mask (B, 1, L, kv_length) for the attention kernel.

    With ``dtype`` None: bool, True = attend. Otherwise additive: 0 where visible, ``finfo(dtype).min`` where
    masked. Rows that see nothing are all-visible (bool) / all-zero (additive) so that softmax stays finite; the
    row mask zeroes their output afterwards.
    """
    slots = torch.arange(kv_length, device=prefix.device)
    visible = (slots < prefix[..., None]) | (prefix[..., None] == 0)  # (B, L, Lv)
    visible = visible.unsqueeze(1)
    if dtype is None:
        return visible
    return torch.zeros(visible.shape, dtype=dtype, device=prefix.device).masked_fill(
        ~visible, torch.finfo(dtype).min
    )
