"""XRoPE: text / vision positions (spec §6.2–6.3, worked example), continuation chunks, and the rotary tables."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mossvl.model import MossVLTextConfig
from mossvl.model.xrope import MossVLTextRotaryEmbedding, frame_grids, text_position_ids, vision_position_ids

IMG = 9


def positions(ids, grids, mask=None, start=None):
    ids = torch.tensor([ids])
    mask = torch.ones_like(ids) if mask is None else torch.tensor([mask])
    extents = [grid.amax(dim=1) for grid in grids]
    pos, next_position = text_position_ids(ids, mask, IMG, extents, start)
    return pos, next_position, ids, mask


def test_spec_worked_example():
    # [A, B, <|image_pad|>, C] with a 448x448 image: 28x28 patches, 14x14 merged tokens.
    grids = frame_grids(torch.tensor([[1, 28, 28]]), [1], merge_size=2)
    assert grids[0].tolist() == [[14, 14]]
    pos, next_position, ids, mask = positions([1, 2, IMG, 3], grids)
    assert pos[:, 0].tolist() == [[0, 1, 16, 17]] * 3
    assert next_position.tolist() == [18]  # rope_deltas = 18 - 4 = 14
    vision = vision_position_ids(pos, ids, mask, IMG, grids, length=14 * 14 + 1)
    t, h, w = vision[:, 0]
    assert t[:196].eq(2).all()
    assert h[:196].tolist() == [2 + y for y in range(14) for _ in range(14)]
    assert w[:196].tolist() == [2 + x for _ in range(14) for x in range(14)]
    assert vision[:, 0, 196].tolist() == [16, 16, 16]


def test_video_frames_and_padding():
    # Two frames of a 4x6-patch video (2x3 merged, m = 3), one timestamp token between them, left padding.
    grids = frame_grids(torch.tensor([[2, 4, 6]]), [1], merge_size=2)
    pos, next_position, ids, mask = positions([0, 0, 5, IMG, 6, IMG, 7], grids, mask=[0, 0, 1, 1, 1, 1, 1])
    assert pos[0, 0].tolist() == [0, 0, 0, 4, 5, 9, 10]
    assert next_position.tolist() == [11]
    vision = vision_position_ids(pos, ids, mask, IMG, grids, length=16)
    assert vision[:, 0, :7].T.tolist() == [
        [1, 1, 1],
        [1, 1, 2],
        [1, 1, 3],
        [1, 2, 1],
        [1, 2, 2],
        [1, 2, 3],
        [4] * 3,
    ]
    assert vision[:, 0, 7:14].T.tolist()[0] == [6, 6, 6]
    assert vision[:, 0, 13].tolist() == [9, 9, 9]
    assert vision[:, 0, 14:].eq(0).all()


def test_frames_without_image_pad_get_zero_vision_positions():
    grids = frame_grids(torch.tensor([[1, 8, 8]]), [1], merge_size=2)  # the blank image of a text-only prompt
    pos, next_position, ids, mask = positions([1, 2, 3], [grids[0][:0]])
    assert pos[0, 0].tolist() == [0, 1, 2]
    assert vision_position_ids(pos, ids, mask, IMG, grids, length=24).eq(0).all()


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.lists(st.sampled_from([1, 2, IMG]), min_size=1, max_size=24),
    sizes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=24, max_size=24),
    split=st.integers(0, 24),
)
def test_continuation_chunk_continues_the_full_positions(tokens, sizes, split):
    split = min(split, len(tokens))
    frames = tokens.count(IMG)
    grid = torch.tensor(sizes[:frames], dtype=torch.long).view(-1, 2)
    full, full_next, ids, mask = positions(tokens, [grid])
    head_frames = tokens[:split].count(IMG)
    _, head_next, _, _ = positions(tokens[:split], [grid[:head_frames]])
    tail, tail_next, tail_ids, tail_mask = positions(tokens[split:], [grid[head_frames:]], start=head_next)
    assert torch.equal(tail, full[:, :, split:])
    assert torch.equal(tail_next, full_next)
    full_vision = vision_position_ids(full, ids, mask, IMG, [grid], length=int((grid.prod(1) + 1).sum()))
    tail_vision = vision_position_ids(tail, tail_ids, tail_mask, IMG, [grid[head_frames:]], length=200)
    offset = int((grid[:head_frames].prod(1) + 1).sum())
    assert torch.equal(tail_vision[:, :, : full_vision.shape[-1] - offset], full_vision[:, :, offset:])


def rotary(section=(6, 5, 5), head_dim=32, theta=10000.0):
    config = MossVLTextConfig(
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": list(section)},
    )
    return MossVLTextRotaryEmbedding(config)


def test_equal_axes_reduce_to_plain_rope():
    rope = rotary()
    steps = torch.arange(7)
    cos, sin = rope(torch.zeros(1, dtype=torch.float32), steps.view(1, 1, -1).expand(3, 1, -1))
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, 32, 2).float() / 32)
    angles = steps[:, None].float() * inv_freq
    assert torch.allclose(cos[0], torch.cat([angles, angles], -1).cos())
    assert torch.allclose(sin[0], torch.cat([angles, angles], -1).sin())


def test_interleaved_sections_pick_axes():
    rope = rotary(section=(6, 5, 5))
    position = torch.tensor([3, 5, 7]).view(3, 1, 1)  # t, h, w
    cos, _ = rope(torch.zeros(1), position)
    inv_freq = rope.inv_freq
    axis = [1 if j % 3 == 1 and j < 15 else 2 if j % 3 == 2 and j < 15 else 0 for j in range(16)]
    expected = torch.stack([(position[axis[j], 0, 0] * inv_freq[j]).cos() for j in range(16)])
    assert torch.allclose(cos[0, 0, :16], expected)
    assert torch.allclose(cos[0, 0, 16:], expected)
