"""Token-level masks built from input ids: the frame-causal cross-attention mask and assistant-only labels."""

import torch

from mossvl import constants as C


def cross_attention_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int, frames_per_sample: list[int]
) -> torch.Tensor:
    """Bool (B, 1, L, F), True = masked (spec §7.1).

    Token i sees frame f iff the number of `<|image_pad|>` at positions ≤ i exceeds f; padding rows and frame
    slots beyond a sample's own frame count stay masked. F = the largest frame count in the batch.
    """
    frames = torch.tensor(frames_per_sample, dtype=torch.long)
    seen = torch.cumsum(input_ids == image_token_id, dim=1)  # (B, L)
    slots = torch.arange(int(frames.max()) if len(frames_per_sample) else 0)  # (F,)
    visible = seen[:, :, None] > slots  # (B, L, F)
    visible &= attention_mask.bool()[:, :, None]
    visible &= slots[None, None, :] < frames[:, None, None]
    return (~visible)[:, None]


def assistant_labels(
    input_ids: torch.Tensor,
    offsets: torch.Tensor,
    attention_mask: torch.Tensor,
    spans: list[list[tuple[int, int]]],
    ignored_token_ids: list[int],
    vision_span: tuple[int, int],
    silence_token_id: int | None = None,
) -> torch.Tensor:
    """Labels (B, L): token ids inside assistant replies, IGNORE_INDEX elsewhere.

    `offsets` (B, L, 2) are the tokenizer's character offsets into the texts and `spans[b]` the character spans
    of sample b's assistant replies (end-of-turn text included). Padding, `ignored_token_ids` and every token from
    `<|vision_start|>` through `<|vision_end|>` (`vision_span` ids) are ignored, with one exception: a
    `<|vision_start|>` right after supervised reply text other than `<|silence|>` (`silence_token_id`) is supervised.
    That is a realtime reply ending because the next frame comes; a realtime session stops generating there.
    """
    labels = torch.full_like(input_ids, C.IGNORE_INDEX)
    starts = offsets[..., 0]
    for b, sample_spans in enumerate(spans):
        keep = torch.zeros_like(input_ids[b], dtype=torch.bool)
        for lo, hi in sample_spans:
            keep |= (starts[b] >= lo) & (starts[b] < hi)
        labels[b, keep] = input_ids[b, keep]
    depth = torch.cumsum((input_ids == vision_span[0]).long() - (input_ids == vision_span[1]).long(), dim=1)
    inside_vision = (depth > 0) | (input_ids == vision_span[1])
    ignored = torch.isin(input_ids, torch.tensor(ignored_token_ids)) | inside_vision | (attention_mask == 0)
    labels = labels.masked_fill(ignored, C.IGNORE_INDEX)
    previous = labels[:, :-1]
    ends_reply = (
        (input_ids[:, 1:] == vision_span[0]) & (previous != C.IGNORE_INDEX) & (attention_mask[:, 1:] == 1)
    )
    if silence_token_id is not None:
        ends_reply &= previous != silence_token_id
    labels[:, 1:][ends_reply] = input_ids[:, 1:][ends_reply]
    return labels
