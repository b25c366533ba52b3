"""The staircase cross-attention mask as visible prefixes (spec §7): properties against the dense frame rule."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mossvl.model import cross_attention_mask as xmask

IMG = 9


def dense_rule(ids: list[int], valid: list[int], sizes: list[int], kv_length: int) -> torch.Tensor:
    """(L, kv_length) bool: token i sees vision slot j iff j's frame index < image_pads at or before i."""
    frame_of_slot = [f for f, size in enumerate(sizes) for _ in range(size)]
    frame_of_slot += [len(sizes) + 1] * (kv_length - len(frame_of_slot))  # padding slots: never visible
    seen, rows = 0, []
    for token, keep in zip(ids, valid, strict=True):
        seen += int(token == IMG and keep)
        rows.append([keep and frame < seen for frame in frame_of_slot])
    return torch.tensor(rows, dtype=torch.bool).view(len(ids), kv_length)


def cap_image_pads(ids: list[int], frames: int) -> list[int]:
    """Turn image_pads beyond the number of frames into plain text."""
    out, seen = [], 0
    for token in ids:
        seen += token == IMG
        out.append(1 if token == IMG and seen > frames else token)
    return out


samples = st.tuples(
    st.lists(st.sampled_from([1, 2, 3, IMG]), min_size=1, max_size=30),
    st.lists(st.integers(2, 9), min_size=1, max_size=12),
    st.integers(0, 5),
)


@settings(max_examples=60, deadline=None)
@given(sample=samples)
def test_prefix_is_monotone_and_equals_the_dense_rule(sample):
    ids, sizes, left_pad = sample
    ids = [0] * left_pad + cap_image_pads(ids, len(sizes))
    valid = [0] * left_pad + [1] * (len(ids) - left_pad)
    input_ids, attention_mask = torch.tensor([ids]), torch.tensor([valid])
    offsets = xmask.frame_offsets([torch.tensor(sizes)])
    frames = xmask.visible_frames_from_input_ids(input_ids, attention_mask, IMG)
    prefix = xmask.visible_prefix(frames, offsets)[0]

    real = prefix[left_pad:]
    assert bool((real[1:] >= real[:-1]).all())
    kv_length = sum(sizes) + 3
    expected = dense_rule(ids, valid, sizes, kv_length)
    dense = xmask.expand(prefix[None], kv_length)[0, 0]
    sees = prefix > 0
    assert torch.equal(dense[sees], expected[sees])
    assert bool(dense[~sees].all())  # rows that see nothing attend uniformly; the row mask zeroes them
    assert torch.equal(xmask.row_mask(prefix[None], torch.float32)[0, :, 0], expected.any(dim=1).float())

    official = torch.arange(len(sizes))[None, :] >= frames[0][:, None]  # True = masked, (L, F)
    from_mask = xmask.visible_frames_from_mask(official[None, None])
    assert torch.equal(from_mask, frames)


def test_additive_mask_values():
    prefix = torch.tensor([[0, 3, 5]])
    additive = xmask.expand(prefix, 6, torch.float32)[0, 0]
    low = torch.finfo(torch.float32).min
    assert additive[0].eq(0).all()
    assert additive[1].tolist() == [0, 0, 0, low, low, low]
    assert additive[2].tolist() == [0, 0, 0, 0, 0, low]


def test_frame_offsets_and_continuation_start():
    offsets = xmask.frame_offsets([torch.tensor([5, 7]), torch.tensor([3])])
    assert offsets.tolist() == [[0, 5, 12], [0, 3, 3]]
    ids = torch.tensor([[1, IMG, 2]])
    frames = xmask.visible_frames_from_input_ids(
        ids, torch.ones_like(ids), IMG, start_frames=torch.tensor([1])
    )
    assert frames.tolist() == [[1, 2, 2]]
    assert xmask.visible_prefix(frames, offsets[:1]).tolist() == [[5, 12, 12]]
