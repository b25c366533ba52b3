"""Media-safe truncation and the SFT collator, on hand-built token layouts (no processor involved)."""

from __future__ import annotations

import torch

from mossvl.training.data import LayoutTokens, SFTCollator, truncate_features, truncation_point

E = 5  # <|im_end|>
TOK = LayoutTokens(im_start=1, im_end=E, image_pad=2, vision_start=3, vision_end=4)
X = -100


def sample(ids, labels, grids, frames):
    grid_thw = torch.tensor(grids, dtype=torch.long)
    ids = torch.tensor(ids)
    pads = (ids == TOK.image_pad).cumsum(0)
    rows = int(grid_thw.prod(-1).sum())
    return {
        "input_ids": ids,
        "labels": torch.tensor(labels),
        "pixel_values": torch.arange(rows, dtype=torch.float32)[:, None].expand(rows, 6).clone(),
        "grid_thw": grid_thw,
        "cross_attention_mask": ~(pads[:, None] > torch.arange(frames)),  # staircase, True = masked
        "media_nums_per_sample": len(grids),
    }


BLANK = {
    "pixel_values": torch.full((4, 6), -1.0),
    "grid_thw": torch.tensor([[1, 2, 2]]),
    "cross_attention_mask": torch.ones(3, 1, dtype=torch.bool),
    "media_nums_per_sample": 1,
}

# turn 1: user with an image, assistant; turn 2: user with a 2-frame video, assistant.
TWO_TURNS = sample(
    # 0  1   2  3   4  5  6   7   8   9  10 11 12 13 14 15 16 17 18 19 20 21  22  23  24
    [1, 10, 2, 11, E, 1, 20, 21, 22, E, 1, 10, 3, 30, 2, 30, 2, 4, 11, E, 1, 20, 23, 24, E],
    [X, X, X, X, X, X, X, 21, 22, E, X, X, X, X, X, X, X, X, X, X, X, X, 23, 24, E],
    grids=[[1, 2, 2], [2, 2, 2]],
    frames=3,
)


def test_fits_untouched():
    assert truncation_point(TWO_TURNS["input_ids"], TWO_TURNS["labels"], 25, TOK) == 25


def test_drops_whole_trailing_turns_with_their_media():
    for max_length in (10, 19, 23, 24):  # the last answer does not fit: its question and video go too
        cut = truncation_point(TWO_TURNS["input_ids"], TWO_TURNS["labels"], max_length, TOK)
        assert cut == 10
    out = truncate_features(TWO_TURNS, cut, TOK.image_pad, BLANK)
    assert out["input_ids"].tolist() == TWO_TURNS["input_ids"][:10].tolist()
    assert out["labels"].tolist() == [X] * 7 + [21, 22, E]
    assert out["grid_thw"].tolist() == [[1, 2, 2]]
    assert torch.equal(out["pixel_values"], TWO_TURNS["pixel_values"][:4])
    assert torch.equal(out["cross_attention_mask"], TWO_TURNS["cross_attention_mask"][:10, :1])
    assert out["media_nums_per_sample"] == 1


def test_cuts_assistant_text_when_no_turn_fits():
    cut = truncation_point(TWO_TURNS["input_ids"], TWO_TURNS["labels"], 8, TOK)
    assert cut == 8
    out = truncate_features(TWO_TURNS, cut, TOK.image_pad, BLANK)
    assert out["labels"].tolist() == [X] * 7 + [21]
    assert out["media_nums_per_sample"] == 1


def test_never_cuts_inside_a_video_block_and_falls_back_to_blank_image():
    # A video inside the assistant turn: a cut at 5 would split it, so the whole block goes.
    s = sample([1, 20, 21, 3, 30, 2, 4, 22, E], [X, X, 21, X, X, X, X, 22, E], grids=[[1, 2, 2]], frames=1)
    for max_length in (4, 5, 6):
        assert truncation_point(s["input_ids"], s["labels"], max_length, TOK) == 3
    out = truncate_features(s, 3, TOK.image_pad, BLANK)
    assert TOK.image_pad not in out["input_ids"].tolist()
    assert torch.equal(out["pixel_values"], BLANK["pixel_values"])
    assert out["grid_thw"].tolist() == [[1, 2, 2]] and out["media_nums_per_sample"] == 1
    assert out["cross_attention_mask"].shape == (3, 1) and bool(out["cross_attention_mask"].all())
    assert truncation_point(s["input_ids"], s["labels"], 7, TOK) == 7  # just after <|vision_end|> is fine


def test_none_when_no_supervised_token_fits():
    assert truncation_point(TWO_TURNS["input_ids"], TWO_TURNS["labels"], 7, TOK) is None


def test_collator_right_pads_and_concatenates_media_in_order():
    a = sample([1, 2, 7, E], [X, X, 7, E], grids=[[1, 2, 2]], frames=1)
    b = sample([1, 2, 3, 30, 2, 30, 2, 4, 8, E], [X] * 8 + [8, E], grids=[[1, 2, 4], [2, 2, 2]], frames=3)
    batch = SFTCollator(pad_token_id=99)([a, b])
    assert batch["input_ids"].tolist()[0] == [1, 2, 7, E] + [99] * 6
    assert batch["labels"].tolist()[0] == [X, X, 7, E] + [X] * 6
    assert batch["attention_mask"].tolist() == [[1] * 4 + [0] * 6, [1] * 10]
    assert batch["pixel_values"].shape == (4 + 8 + 8, 6)
    assert torch.equal(batch["pixel_values"][4:], b["pixel_values"])
    assert batch["grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4], [2, 2, 2]]
    assert batch["media_nums_per_sample"].tolist() == [1, 2]
    mask = batch["cross_attention_mask"]
    assert mask.shape == (2, 1, 10, 3) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0, :4, :1], a["cross_attention_mask"])
    # Padding rows and the frames sample a lacks are masked.
    assert bool(mask[0, 0, 4:].all()) and bool(mask[0, 0, :, 1:].all())
    assert torch.equal(mask[1, 0], b["cross_attention_mask"])
