"""Vision encoder: merge-window ordering, per-frame attention, chunking, mixed sizes, validation, dtypes, init."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from mossvl.errors import ConfigError, MediaError
from mossvl.model.configuration import MossVLVisionConfig
from mossvl.model.vision import MossVLVisionModel, frame_groups, init_vision_weights, merge_window_ids

PATCH_DIM = 3 * 16 * 16


def tiny_config(**overrides) -> MossVLVisionConfig:
    fields = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
        out_hidden_size=24,
    )
    return MossVLVisionConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def model() -> MossVLVisionModel:
    torch.manual_seed(0)
    vision = MossVLVisionModel(tiny_config())
    with torch.no_grad():
        vision.pos_embed.weight.normal_(0.0, 0.5)
    return vision.eval()


def random_pixels(grid_thw: torch.Tensor, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(int(grid_thw.prod(-1).sum()), PATCH_DIM, generator=generator)


def encode(model, pixel_values, grid_thw, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values, torch.as_tensor(grid_thw), **kwargs)


# Merge-window order (spec §3.a): for each 2x2 window in raster order, its 4 patches in raster order.
def test_merge_window_ids_on_4x4_grid():
    ids = merge_window_ids(4, 4, 2)
    assert ids[:, 0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    assert ids[:, 1].tolist() == [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3]


def test_merge_window_ids_on_rectangular_grid():
    ids = merge_window_ids(4, 2, 2)
    assert ids.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0], [3, 1]]


def test_pos_embed_on_native_grid_is_the_table_in_merge_window_order(model):
    table = model.pos_embed.weight  # 4x4 grid, so a 4x4 frame needs no interpolation
    expected_rows = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    torch.testing.assert_close(model.interpolated_pos_embed(4, 4), table[expected_rows], rtol=0, atol=1e-6)


def test_pos_embed_interpolates_bilinearly_with_aligned_corners():
    vision = MossVLVisionModel(tiny_config())
    with torch.no_grad():  # a table that is linear in (row, col) is reproduced exactly by bilinear resampling
        rows, cols = torch.arange(16) // 4, torch.arange(16) % 4
        vision.pos_embed.weight.zero_()
        vision.pos_embed.weight[:, 0] = rows.float()
        vision.pos_embed.weight[:, 1] = cols.float()
        embed = vision.interpolated_pos_embed(2, 6)
    # align corners: rows linspace(0, 3, 2) = [0, 3]; cols linspace(0, 3, 6) = [0, .6, 1.2, 1.8, 2.4, 3]
    assert embed[:, 0].tolist() == pytest.approx([0, 0, 3, 3, 0, 0, 3, 3, 0, 0, 3, 3], abs=1e-6)
    assert embed[:, 1].tolist() == pytest.approx(
        [0, 0.6, 0, 0.6, 1.2, 1.8, 1.2, 1.8, 2.4, 3.0, 2.4, 3.0], abs=1e-6
    )


def test_rotary_angles_use_row_then_column_ids_in_merge_window_order(model):
    head_dim = 32 // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim // 2, 2, dtype=torch.float32) / (head_dim // 2)))
    ids = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]  # a 2x4 frame
    expected = torch.stack([torch.cat([r * inv_freq, c * inv_freq]) for r, c in ids])
    torch.testing.assert_close(model.rotary_angles(2, 4), expected)


def test_rotary_frequencies_are_a_float32_non_persistent_buffer():
    vision = MossVLVisionModel(tiny_config())
    reference = vision.rotary_angles(4, 6)
    assert not any("inv_freq" in name for name in vision.state_dict())
    vision.to(torch.bfloat16)
    assert vision.rotary_angles(4, 6).dtype == torch.float32
    torch.testing.assert_close(vision.rotary_angles(4, 6), reference)


def test_state_dict_matches_checkpoint_layout():
    config = tiny_config()
    shapes = {name: tuple(value.shape) for name, value in MossVLVisionModel(config).state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == (32, 3, 1, 16, 16)
    assert shapes["pos_embed.weight"] == (16, 32)
    assert shapes["blocks.2.attn.qkv.weight"] == (96, 32)
    assert shapes["blocks.2.mlp.linear_fc1.weight"] == (64, 32)
    assert shapes["merger.linear_fc1.weight"] == (3 * 32 * 4, 3 * 32 * 4)
    assert shapes["merger.linear_fc2.weight"] == (24, 3 * 32 * 4)
    expected_block = {
        f"{module}.{kind}"
        for module in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")
        for kind in ("weight", "bias")
    }
    assert {name[len("blocks.0.") :] for name in shapes if name.startswith("blocks.0.")} == expected_block
    merger = {name for name in shapes if name.startswith("merger.")}
    assert merger == {
        f"merger.{module}.{kind}"
        for module in ("norms.0", "norms.1", "norms.2", "linear_fc1", "linear_fc2")
        for kind in ("weight", "bias")
    }


def test_output_has_one_token_per_merge_window(model):
    grid = [[1, 4, 6], [3, 2, 4]]
    out = encode(model, random_pixels(torch.tensor(grid)), grid)
    assert out.shape == (6 + 3 * 2, 24)


def test_frames_attend_only_within_themselves(model):
    grid = torch.tensor([[3, 4, 4]])
    pixels = random_pixels(grid)
    changed = pixels.clone()
    changed[32:48] = torch.randn(16, PATCH_DIM)  # frame 2 (0-based) of 16 patches each
    before, after = encode(model, pixels, grid), encode(model, changed, grid)
    torch.testing.assert_close(after[:8], before[:8], rtol=0, atol=1e-6)  # frames 0 and 1: 4 tokens each
    assert (after[8:] - before[8:]).abs().max() > 1e-3


def test_mixed_frame_sizes_in_one_call_equal_separate_calls(model):
    grid = torch.tensor([[1, 4, 6], [3, 2, 2], [1, 4, 6], [2, 4, 4]])
    pixels = random_pixels(grid)
    separate, start = [], 0
    for row in grid:
        count = int(row.prod())
        separate.append(encode(model, pixels[start : start + count], row[None]))
        start += count
    torch.testing.assert_close(encode(model, pixels, grid), torch.cat(separate), rtol=0, atol=1e-5)


def test_position_tables_are_built_once_per_frame_size(model, monkeypatch):
    # Streams and training batches give one grid row per frame: the tables of a frame size must not be rebuilt
    # for each of them.
    rows = torch.tensor([[1, 4, 4]] * 6 + [[1, 2, 4]] * 3)
    pixels = random_pixels(rows)
    video = torch.tensor([[6, 4, 4], [3, 2, 4]])
    reference = encode(model, pixels, video)
    built = []
    for name in ("interpolated_pos_embed", "rotary_angles"):
        original = getattr(MossVLVisionModel, name)
        monkeypatch.setattr(
            MossVLVisionModel,
            name,
            lambda self, h, w, name=name, f=original: built.append((name, h, w)) or f(self, h, w),
        )
    torch.testing.assert_close(encode(model, pixels, rows), reference, rtol=0, atol=1e-6)
    assert sorted(built) == [
        ("interpolated_pos_embed", 2, 4),
        ("interpolated_pos_embed", 4, 4),
        ("rotary_angles", 2, 4),
        ("rotary_angles", 4, 4),
    ]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 64])
def test_chunk_size_gives_the_same_result(model, chunk_size):
    grid = torch.tensor([[1, 4, 6], [2, 2, 2], [1, 2, 4], [3, 4, 4]])
    pixels = random_pixels(grid)
    reference = encode(model, pixels, grid)
    torch.testing.assert_close(
        encode(model, pixels, grid, chunk_size=chunk_size), reference, rtol=0, atol=1e-5
    )


def test_frame_groups_cover_every_row_once():
    grids = [(1, 4, 6), (2, 2, 2), (1, 4, 6)]
    groups = frame_groups(grids, torch.device("cpu"))
    assert [(g.num_frames, g.frame_len) for g in groups] == [(2, 4), (2, 24)]
    assert groups[0].token_index.tolist() == list(range(24, 32))
    assert sorted(torch.cat([g.token_index for g in groups]).tolist()) == list(range(56))
    (single,) = frame_groups([(5, 4, 4)], torch.device("cpu"))
    assert (single.num_frames, single.frame_len, single.token_index) == (5, 16, None)


def test_empty_input_gives_no_tokens(model):
    out = encode(model, torch.zeros(0, PATCH_DIM), torch.zeros(0, 3, dtype=torch.long))
    assert out.shape == (0, 24)


@pytest.mark.parametrize(
    ("pixels", "grid", "message"),
    [
        (torch.zeros(16, 3 * 14 * 14), [[1, 4, 4]], r"pixel_values must have shape \(num_patches, 768\)"),
        (torch.zeros(16, PATCH_DIM), [[1, 4, 4], [1, 2, 2]], r"16 patch rows .* sum\(t\*h\*w\) = 20"),
        (torch.zeros(12, PATCH_DIM), [[1, 3, 4]], r"row 0 = \[1, 3, 4\].*multiples of spatial_merge_size 2"),
        (torch.zeros(0, PATCH_DIM), [[0, 2, 2]], r"row 0 = \[0, 2, 2\] has a non-positive entry"),
        (torch.zeros(16, PATCH_DIM), [[1.0, 4.0, 4.0]], r"grid_thw must be an integer tensor"),
        (torch.zeros(16, PATCH_DIM), [1, 4, 4], r"shape \(num_media, 3\)"),
    ],
)
def test_bad_inputs_raise_media_error(model, pixels, grid, message):
    with pytest.raises(MediaError, match=message):
        encode(model, pixels, grid)


def test_bad_chunk_size_raises(model):
    grid = torch.tensor([[1, 2, 2]])
    with pytest.raises(ConfigError, match="must be a positive integer, got 0"):
        encode(model, random_pixels(grid), grid, chunk_size=0)


def test_runs_in_bfloat16(model):
    grid = torch.tensor([[1, 4, 6], [2, 2, 2]])
    pixels = random_pixels(grid)
    reference = encode(model, pixels, grid)
    vision = MossVLVisionModel(tiny_config()).eval()
    vision.load_state_dict(model.state_dict())
    vision.to(torch.bfloat16)
    out = encode(vision, pixels, grid)  # float32 pixels are cast to the weights' dtype
    assert out.dtype == torch.bfloat16
    assert ((out.float() - reference).abs().max() / reference.abs().max()) < 0.05


def test_init_vision_weights():
    config = tiny_config(hidden_size=256, num_heads=4, initializer_range=0.05)
    vision = MossVLVisionModel(config)
    vision.blocks[0].norm1.weight.data.fill_(3.0)
    vision.blocks[
        0
    ].attn.qkv.weight._is_hf_initialized = True  # loaded from a checkpoint: must stay untouched
    kept = vision.blocks[0].attn.qkv.weight.clone()
    vision.reset_parameters()
    assert torch.equal(vision.blocks[0].attn.qkv.weight, kept)
    assert torch.equal(vision.blocks[0].norm1.weight, torch.ones(256))
    assert torch.equal(vision.blocks[1].attn.proj.bias, torch.zeros(256))
    assert vision.blocks[1].attn.proj.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert vision.pos_embed.weight.std().item() == pytest.approx(0.05, rel=0.1)
    vision.rotary_pos_emb.inv_freq.zero_()
    init_vision_weights(vision.rotary_pos_emb, 0.05)
    assert torch.equal(vision.rotary_pos_emb.inv_freq, vision.rotary_pos_emb.compute_inv_freq())


def test_gradient_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    vision = MossVLVisionModel(tiny_config()).train()
    grid = torch.tensor([[2, 2, 4], [1, 4, 4]])
    pixels = random_pixels(grid)

    def gradients() -> dict[str, torch.Tensor]:
        vision.zero_grad()
        vision(pixels, grid).square().sum().backward()
        return {name: param.grad.clone() for name, param in vision.named_parameters()}

    plain = gradients()
    for block in vision.blocks:
        block.gradient_checkpointing = True
        block._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    checkpointed = gradients()
    assert all(plain[name].abs().sum() > 0 for name in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)
