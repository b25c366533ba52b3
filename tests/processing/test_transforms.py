"""Pixel math: smart_resize rules (image and video), budget sharing, uint8 resize, patchify row layout."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mossvl.errors import ConfigError, MediaError
from mossvl.processing.transforms import (
    check_patch_config,
    patchify,
    resize_uint8,
    share_budget,
    smart_resize,
    smart_resize_video,
)


@pytest.mark.parametrize(
    ("size", "max_pixels", "expected"),
    [
        ((64, 96), 16777216, (64, 96)),  # golden img_a: already multiples of 32
        ((80, 120), 16777216, (64, 128)),  # golden img_b: round(2.5) = 2 (banker's rounding), round(3.75) = 4
        (
            (50, 70),
            16777216,
            (64, 64),
        ),  # golden img_c: 64×64 would round to 32×64 < 4096 → scaled up with ceil
        ((96, 64), 16777216, (96, 64)),
        ((1000, 2000), 500_000, (480, 992)),  # scaled down with floor: β = 2
        ((10, 1500), 16777216, (32, 800)),  # 0×1504 after rounding → scaled up with ceil
    ],
)
def test_smart_resize(size, max_pixels, expected):
    assert smart_resize(*size, 32, 4096, max_pixels) == expected


@given(
    h=st.integers(1, 3000),
    w=st.integers(1, 3000),
    max_pixels=st.integers(4096, 4_000_000),
)
@settings(max_examples=200, deadline=None)
def test_smart_resize_properties(h, w, max_pixels):
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(MediaError, match="aspect ratio"):
            smart_resize(h, w, 32, 4096, max_pixels)
        return
    rh, rw = smart_resize(h, w, 32, 4096, max_pixels)
    assert rh % 32 == 0 and rw % 32 == 0 and rh >= 32 and rw >= 32
    rounded = (round(h / 32) * 32) * (round(w / 32) * 32)
    if rounded > max_pixels:
        assert rh * rw <= max_pixels or min(rh, rw) == 32  # a side never goes below one merged patch
    elif rounded >= 4096:
        assert (rh, rw) == (round(h / 32) * 32, round(w / 32) * 32)
    else:
        assert rh * rw >= 4096


def test_aspect_ratio_limit_and_empty_images():
    assert smart_resize(32, 6400, 32, 4096, 1 << 30) == (32, 6400)  # exactly 200 is allowed
    with pytest.raises(MediaError, match="aspect ratio 201.0"):
        smart_resize(10, 2010, 32, 4096, 1 << 30, name="banner.png")
    with pytest.raises(MediaError, match="empty image"):
        smart_resize(0, 10, 32, 4096, 1 << 30)


@pytest.mark.parametrize(
    ("thw", "budget", "expected"),
    [
        ((5, 48, 64), 201326592, (64, 64)),  # golden vid_a
        ((5, 40, 90), 201326592, (64, 96)),  # golden vid_b: per-frame minimum, ceil of exactly 3.0
        (
            (100, 720, 1280),
            100 * 360 * 640,
            (352, 640),
        ),  # volume budget: floor(720/2/32)·32, floor(1280/2/32)·32
        ((1, 16, 16), 201326592, (64, 64)),  # volume below min_pixels → scale up
    ],
)
def test_smart_resize_video(thw, budget, expected):
    assert smart_resize_video(*thw, 32, 4096, 16777216, budget) == expected


def test_smart_resize_video_per_frame_max_first():
    assert smart_resize_video(1, 8000, 8000, 32, 4096, 1 << 20, 1 << 40) == (1024, 1024)


def test_share_budget_is_proportional_and_clamped():
    assert share_budget([100, 300], 1000, 10, 10_000) == [250, 750]
    assert share_budget([1, 10_000], 1000, 200, 10_000) == [200, 999]
    assert share_budget([5], 10**9, 10, 500) == [500]


def test_resize_is_identity_when_size_unchanged():
    x = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    assert resize_uint8(x, (32, 64)) is x
    y = resize_uint8(x, (64, 32))
    assert y.dtype == torch.uint8 and y.shape == (2, 3, 64, 32)


def test_resize_matches_torch_uint8_bicubic_antialias():
    x = torch.randint(0, 256, (1, 3, 50, 70), dtype=torch.uint8)
    want = torch.nn.functional.interpolate(
        x, size=(64, 64), mode="bicubic", align_corners=False, antialias=True
    )
    assert torch.equal(resize_uint8(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), (64, 64)), want)


def test_patchify_merge_window_order():
    t, h, w = 2, 64, 96
    # Encode (frame, channel, row, col) into the pixel values so every row can be decoded back.
    frames = torch.zeros(t, 3, h, w, dtype=torch.uint8)
    rows_grid, cols_grid = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for f in range(t):
        frames[f, 0] = (rows_grid // 16) * 10 + f * 100
        frames[f, 1] = cols_grid // 16
        frames[f, 2] = rows_grid % 16 * 16 + cols_grid % 16
    rows, grid = patchify(frames, 16, 2, (0.0,) * 3, (1 / 255,) * 3)  # identity normalisation
    assert grid == (2, 4, 6) and rows.shape == (2 * 4 * 6, 768) and rows.dtype == torch.float32
    i = 0
    for f in range(t):
        for bh in range(2):
            for bw in range(3):
                for mh in range(2):
                    for mw in range(2):
                        ph, pw = bh * 2 + mh, bw * 2 + mw
                        row = rows[i].reshape(3, 16, 16)
                        assert torch.all(row[0] == ph * 10 + f * 100)
                        assert torch.all(row[1] == pw)
                        assert torch.equal(row[2].flatten(), torch.arange(256, dtype=torch.float32))
                        i += 1


def test_patchify_normalisation_is_exact():
    frames = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    rows, _ = patchify(frames, 16, 2, (0.5,) * 3, (0.5,) * 3)
    want = (frames.float() - 127.5) / 127.5
    assert torch.equal(rows.flatten().sort().values, want.flatten().sort().values)


def test_patch_config_must_be_one_frame_per_step():
    with pytest.raises(ConfigError, match="temporal_patch_size"):
        check_patch_config(16, 2, 2)
