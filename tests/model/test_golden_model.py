"""Golden parity of the whole model with the official Hugging Face code (tests/fixtures/golden, README.md there).

Inputs are the golden processor outputs; the model is the golden tiny checkpoint upcast to float32.

One documented divergence: in a batch, the official code pairs frames with ``<|image_pad|>`` tokens in one
flat list across the whole batch. When a text-only sample (whose injected blank image has no image_pad) comes
before a sample with images (``batch_text_and_images``), the later sample's images get the blank image's grid in
their XRoPE positions. mossvl pairs frames with image_pads per sample. For that case the per-sample positions
are checked against the same sample run alone, and the logits / generation parity is checked by passing the
official positions explicitly (``position_ids`` / ``vision_position_ids``).
"""

import pytest
import torch

from mossvl.model import cross_attention_mask as xmask
from mossvl.model.xrope import frame_grids

HF_BATCH_PAIRING_CASES = {"batch_text_and_images"}
TOLERANCE = 1e-4
INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "pixel_values",
    "grid_thw",
    "media_nums_per_sample",
    "cross_attention_mask",
)

pytestmark = pytest.mark.usefixtures("single_thread")


def load_case(golden_expected, name: str) -> tuple[dict, dict]:
    expected = golden_expected(name)
    inputs = {key: expected[key] for key in INPUT_KEYS}
    if name in HF_BATCH_PAIRING_CASES:
        inputs["position_ids"] = expected["position_ids"]
        inputs["vision_position_ids"] = expected["vision_position_ids"]
    return expected, inputs


def positions_of(model, expected: dict):
    media = expected["media_nums_per_sample"].tolist()
    grids = frame_grids(expected["grid_thw"], media, model.config.vision_config.spatial_merge_size)
    return model.model.compute_position_ids(
        expected["input_ids"], expected["attention_mask"], grids, expected["vision_position_ids"].shape[-1]
    )


def max_diff_on_valid_rows(
    actual: torch.Tensor, reference: torch.Tensor, attention_mask: torch.Tensor
) -> float:
    return (actual - reference).abs()[attention_mask.bool()].max().item()


def test_positions_and_rope_deltas(golden_model, golden_expected, golden_case_name):
    expected, _ = load_case(golden_expected, golden_case_name)
    positions, vision_positions, next_position = positions_of(golden_model, expected)
    rope_deltas = next_position - expected["input_ids"].shape[1]
    if golden_case_name not in HF_BATCH_PAIRING_CASES:
        assert torch.equal(positions, expected["position_ids"])
        assert torch.equal(vision_positions, expected["vision_position_ids"])
        assert torch.equal(rope_deltas, expected["rope_deltas"])
        return
    # Sample 0 (text only) matches; sample 1 equals the same sample computed on its own.
    assert torch.equal(positions[:, 0], expected["position_ids"][:, 0])
    assert torch.equal(vision_positions[:, 0], expected["vision_position_ids"][:, 0])
    media = expected["media_nums_per_sample"].tolist()
    grids = frame_grids(expected["grid_thw"], media, 2)
    alone, alone_vision, alone_next = golden_model.model.compute_position_ids(
        expected["input_ids"][1:], expected["attention_mask"][1:], grids[1:], vision_positions.shape[-1]
    )
    assert torch.equal(positions[:, 1:], alone)
    assert torch.equal(vision_positions[:, 1:], alone_vision)
    assert torch.equal(next_position[1:], alone_next)


def test_vision_memory(golden_model, golden_expected, golden_case_name):
    expected, inputs = load_case(golden_expected, golden_case_name)
    with torch.no_grad():
        packed = golden_model.model.get_vision_features(inputs["pixel_values"], inputs["grid_thw"])
        states, _ = golden_model.model.build_cross_attention_states(
            packed, inputs["grid_thw"], expected["media_nums_per_sample"].tolist()
        )
    assert (packed - expected["vision_embeds_packed"]).abs().max().item() <= TOLERANCE
    assert states.shape == expected["cross_attention_states"].shape
    assert (states - expected["cross_attention_states"]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("from_official_mask", [False, True])
def test_cross_attention_mask_pattern(golden_model, golden_expected, golden_case_name, from_official_mask):
    expected, inputs = load_case(golden_expected, golden_case_name)
    model = golden_model.model
    media = expected["media_nums_per_sample"].tolist()
    merge = model.config.vision_config.spatial_merge_size
    sizes = [grid[:, 0] * grid[:, 1] + 1 for grid in frame_grids(expected["grid_thw"], media, merge)]
    prefix = model.compute_cross_attention_prefix(
        expected["input_ids"],
        expected["attention_mask"],
        xmask.frame_offsets(sizes),
        has_media=True,
        cross_attention_mask=expected["cross_attention_mask"] if from_official_mask else None,
    )
    kv_length = expected["cross_attention_mask_expanded"].shape[-1]
    reference = expected["cross_attention_mask_expanded"]
    rows = expected["full_text_row_masked_out_mask"]
    assert torch.equal(xmask.row_mask(prefix, torch.float32), rows[:, 0])
    ours = xmask.expand(prefix, kv_length, torch.float32)
    seen = rows.bool().expand_as(reference)
    assert torch.equal((ours == 0) & seen, (reference == 0) & seen)
    assert bool((ours[~seen] == 0).all()) and bool((reference[~seen] == 0).all())


def test_logits(golden_model, golden_expected, golden_case_name, record_property):
    expected, inputs = load_case(golden_expected, golden_case_name)
    with torch.no_grad():
        logits = golden_model(**inputs, use_cache=False).logits
    diff = max_diff_on_valid_rows(logits, expected["logits"], expected["attention_mask"])
    record_property("max_abs_logit_diff", diff)
    print(f"{golden_case_name}: max |logits - golden| = {diff:.3g}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("case", ["image_single", "video_single"])
def test_decoder_layer_outputs(golden_model, golden_expected, case):
    expected, inputs = load_case(golden_expected, case)
    captured = {}
    hooks = [
        layer.register_forward_hook(lambda module, args, output, i=i: captured.__setitem__(i, output))
        for i, layer in enumerate(golden_model.model.language_model.layers)
    ]
    try:
        with torch.no_grad():
            golden_model(**inputs, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    for i in range(len(golden_model.model.language_model.layers)):
        reference = expected[f"layer_out.{i}"]
        assert max_diff_on_valid_rows(captured[i], reference, expected["attention_mask"]) <= TOLERANCE, i


@pytest.mark.parametrize("rotate", [False, True], ids=["hf_decode", "rotated_query"])
def test_greedy_generate(golden_model, golden_expected, golden_case_name, rotate, record_property):
    expected, inputs = load_case(golden_expected, golden_case_name)
    suffix = "_rotq" if rotate else ""
    golden_model.config.rotate_cross_query_in_decode = rotate
    try:
        out = golden_model.generate(
            **inputs,
            max_new_tokens=8,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=384,
            eos_token_id=[386, 384],
        )
    finally:
        golden_model.config.rotate_cross_query_in_decode = False
    tokens = out.sequences[:, expected["input_ids"].shape[1] :]
    assert torch.equal(tokens, expected[f"gen_tokens{suffix}"])
    diff = (torch.stack(out.logits) - expected[f"gen_logits{suffix}"]).abs().max().item()
    record_property("max_abs_gen_logit_diff", diff)
    print(f"{golden_case_name}{suffix}: max |generate logits - golden| = {diff:.3g}")
    assert diff <= TOLERANCE


def test_generate_without_cache_equals_the_rotated_query_tokens(
    golden_model, golden_expected, golden_case_name
):
    """``use_cache=False`` re-reads the whole sequence each step, so every step rotates the cross-attention query,
    as the official code does then: the tokens are the rotated-query ones."""
    expected, inputs = load_case(golden_expected, golden_case_name)
    out = golden_model.generate(
        **inputs,
        max_new_tokens=8,
        do_sample=False,
        use_cache=False,
        pad_token_id=384,
        eos_token_id=[386, 384],
    )
    assert torch.equal(out[:, expected["input_ids"].shape[1] :], expected["gen_tokens_rotq"])
