"""Frame-causal cross-attention mask and assistant-only labels."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mossvl.processing.masks import cross_attention_mask

PAD = 9


def test_worked_example():
    # tokens: A <pad0> B <pad1> C, then one left-padded sample with a single frame
    ids = torch.tensor([[1, PAD, 2, PAD, 3], [0, 0, 1, PAD, 2]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    mask = cross_attention_mask(ids, attn, PAD, [2, 1])
    assert mask.shape == (2, 1, 5, 2) and mask.dtype == torch.bool
    visible = ~mask[:, 0]
    assert visible[0].tolist() == [[0, 0], [1, 0], [1, 0], [1, 1], [1, 1]]
    assert visible[1].tolist() == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 0]]


def test_sample_without_image_pads_sees_nothing():
    mask = cross_attention_mask(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long), PAD, [1])
    assert mask.all()


@given(st.lists(st.lists(st.sampled_from([1, 2, PAD]), min_size=1, max_size=12), min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
def test_mask_rule(rows):
    length = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    attn = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    frames = [max(1, r.count(PAD)) for r in rows]
    mask = cross_attention_mask(ids, attn, PAD, frames)
    for b, row in enumerate(ids.tolist()):
        for i in range(length):
            seen = row[: i + 1].count(PAD)
            for f in range(max(frames)):
                visible = attn[b, i] == 1 and f < frames[b] and seen > f
                assert bool(mask[b, 0, i, f]) != visible
