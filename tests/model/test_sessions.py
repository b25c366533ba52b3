"""Continuation on a cache ("sessions"): a forward over new tokens (and new media) on top of a filled MossVLCache
must give the logits of one forward over the whole conversation."""

import pytest
import torch

from mossvl.model import MossVLCache

TOLERANCE = 1e-5
IMAGE_PAD = 396


@pytest.fixture
def model(golden_model):
    golden_model.config.rotate_cross_query_in_decode = True
    yield golden_model
    golden_model.config.rotate_cross_query_in_decode = False


def load_case(golden_expected, name: str) -> tuple[dict, torch.Tensor]:
    expected = golden_expected(name)
    return expected, expected["pixel_values"]


def media_rows(grid_thw: torch.Tensor, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(pixel_values, grid_thw.prod(dim=1).tolist()))


@torch.no_grad()
def test_new_images_in_second_turn_match_one_forward(model, golden_expected):
    first, first_pixels = load_case(golden_expected, "image_single")
    second, second_pixels = load_case(golden_expected, "image_two")
    turn1, turn2 = first["input_ids"], second["input_ids"][:, 3:]  # turn2 holds two image_pads
    reference = model(
        input_ids=torch.cat([turn1, turn2], dim=1),
        pixel_values=torch.cat([first_pixels, second_pixels]),
        grid_thw=torch.cat([first["grid_thw"], second["grid_thw"]]),
        use_cache=False,
    ).logits

    cache = MossVLCache(model.config)
    out1 = model(
        input_ids=turn1, pixel_values=first_pixels, grid_thw=first["grid_thw"], past_key_values=cache
    )
    out2 = model(
        input_ids=turn2, pixel_values=second_pixels, grid_thw=second["grid_thw"], past_key_values=cache
    )

    length = turn1.shape[1]
    assert (out1.logits - reference[:, :length]).abs().max().item() <= TOLERANCE
    assert (out2.logits - reference[:, length:]).abs().max().item() <= TOLERANCE
    assert cache.get_seq_length() == turn1.shape[1] + turn2.shape[1]
    assert cache.num_frames.tolist() == [3]
    assert cache.frame_offsets.tolist() == [[0, 7, 16, 21]]
    assert cache.vision_length == 24  # rebuilt memory padded to vision_seq_pad_multiple 8


@torch.no_grad()
def test_left_padded_batch_continuation_with_new_media(model, golden_expected):
    prompt, prompt_pixels = load_case(golden_expected, "batch_image_video")
    extra, extra_pixels = load_case(golden_expected, "image_two")
    old_media = media_rows(prompt["grid_thw"], prompt_pixels)
    new_media = media_rows(extra["grid_thw"], extra_pixels)
    new_ids = torch.tensor([[72, IMAGE_PAD, 101, 33], [IMAGE_PAD, 80, 81, 82]])
    full_ids = torch.cat([prompt["input_ids"], new_ids], dim=1)
    full_mask = torch.cat([prompt["attention_mask"], torch.ones_like(new_ids)], dim=1)
    grid = prompt["grid_thw"]
    reference = model(
        input_ids=full_ids,
        attention_mask=full_mask,
        pixel_values=torch.cat([old_media[0], new_media[0], old_media[1], new_media[1]]),
        grid_thw=torch.stack([grid[0], extra["grid_thw"][0], grid[1], extra["grid_thw"][1]]),
        media_nums_per_sample=[2, 2],
        use_cache=False,
    ).logits

    cache = MossVLCache(model.config)
    model(
        input_ids=prompt["input_ids"],
        attention_mask=prompt["attention_mask"],
        pixel_values=prompt_pixels,
        grid_thw=grid,
        media_nums_per_sample=prompt["media_nums_per_sample"],
        past_key_values=cache,
    )
    out = model(
        input_ids=new_ids,
        attention_mask=full_mask,
        pixel_values=extra_pixels,
        grid_thw=extra["grid_thw"],
        media_nums_per_sample=[1, 1],
        past_key_values=cache,
    )
    length = prompt["input_ids"].shape[1]
    assert (out.logits - reference[:, length:]).abs().max().item() <= TOLERANCE
    # Sample 0's new frame goes right after its 7 stored tokens, inside the old padding.
    assert cache.frame_offsets[0, :3].tolist() == [0, 7, 16]


@torch.no_grad()
def test_text_continuation_and_rotated_decode_match_recompute(model, golden_expected):
    prompt, pixels = load_case(golden_expected, "video_single")
    follow_up = torch.tensor([[10, 20, 30, 40, 50]])
    full = torch.cat([prompt["input_ids"], follow_up], dim=1)
    inputs = {"pixel_values": pixels, "grid_thw": prompt["grid_thw"]}
    reference = model(input_ids=full, use_cache=False, **inputs).logits

    cache = MossVLCache(model.config)
    model(input_ids=prompt["input_ids"], past_key_values=cache, **inputs)
    chunk = model(input_ids=follow_up[:, :2], past_key_values=cache).logits
    steps = [model(input_ids=follow_up[:, i : i + 1], past_key_values=cache).logits for i in range(2, 5)]
    length = prompt["input_ids"].shape[1]
    assert (chunk - reference[:, length : length + 2]).abs().max().item() <= TOLERANCE
    assert (torch.cat(steps, dim=1) - reference[:, length + 2 :]).abs().max().item() <= TOLERANCE


@torch.no_grad()
def test_blank_image_of_text_prompt_is_replaced_by_later_media(model, golden_expected):
    text, blank_pixels = load_case(golden_expected, "text_only")
    image, image_pixels = load_case(golden_expected, "image_single")
    turn2 = image["input_ids"][:, 3:]
    reference = model(
        input_ids=torch.cat([text["input_ids"], turn2], dim=1),
        pixel_values=image_pixels,
        grid_thw=image["grid_thw"],
        use_cache=False,
    ).logits

    cache = MossVLCache(model.config)
    model(
        input_ids=text["input_ids"],
        pixel_values=blank_pixels,
        grid_thw=text["grid_thw"],
        past_key_values=cache,
    )
    assert cache.num_frames.tolist() == [0]  # the blank image has no image_pad: stored but never visible
    out = model(input_ids=turn2, pixel_values=image_pixels, grid_thw=image["grid_thw"], past_key_values=cache)
    assert (out.logits - reference[:, text["input_ids"].shape[1] :]).abs().max().item() <= TOLERANCE
    assert cache.frame_offsets.tolist() == [[0, 7]]


@torch.no_grad()
def test_generate_continues_a_session_cache(model, golden_expected):
    prompt, pixels = load_case(golden_expected, "image_single")
    inputs = {"pixel_values": pixels, "grid_thw": prompt["grid_thw"]}
    cache = MossVLCache(model.config)
    first = model.generate(
        input_ids=prompt["input_ids"], past_key_values=cache, max_new_tokens=3, do_sample=False, **inputs
    )
    follow_up = torch.cat([first, torch.tensor([[10, 20]])], dim=1)
    second = model.generate(input_ids=follow_up, past_key_values=cache, max_new_tokens=3, do_sample=False)
    fresh = model.generate(input_ids=follow_up, max_new_tokens=3, do_sample=False, **inputs)
    assert torch.equal(second, fresh)
