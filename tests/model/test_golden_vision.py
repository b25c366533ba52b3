"""Golden parity of the vision encoder: block input, every block output and the merged tokens vs the official code."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mossvl.model.configuration import MossVLVisionConfig
from mossvl.model.vision import MossVLVisionModel

TOLERANCE = 1e-4
PREFIX = "model.visual."


@pytest.fixture(scope="module")
def golden_vision(golden_dir) -> MossVLVisionModel:
    config = MossVLVisionConfig(**json.loads((golden_dir / "config.json").read_text())["vision_config"])
    weights = load_file(golden_dir / "model.safetensors")
    state = {name[len(PREFIX) :]: value.float() for name, value in weights.items() if name.startswith(PREFIX)}
    model = MossVLVisionModel(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def run_with_captures(model: MossVLVisionModel, pixel_values, grid_thw) -> dict[str, torch.Tensor]:
    captured = {}
    hooks = [
        model.blocks[0].register_forward_pre_hook(
            lambda _m, args: captured.__setitem__("vit_block_input", args[0])
        )
    ]
    for index, block in enumerate(model.blocks):
        hooks.append(
            block.register_forward_hook(
                lambda _m, _args, out, index=index: captured.__setitem__(f"vit_block_out.{index}", out)
            )
        )
    try:
        with torch.no_grad():
            captured["vision_embeds_packed"] = model(pixel_values, grid_thw)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def test_vision_matches_official(golden_vision, golden_expected, golden_case_name):
    expected = golden_expected(golden_case_name)
    captured = run_with_captures(golden_vision, expected["pixel_values"], expected["grid_thw"])
    names = [name for name in captured if name in expected]
    assert "vision_embeds_packed" in names
    if golden_case_name in ("image_single", "video_single"):
        assert len(names) == 2 + len(golden_vision.blocks)
    for name in names:
        assert captured[name].shape == expected[name].shape, name
        diff = (captured[name] - expected[name]).abs().max().item()
        assert diff <= TOLERANCE, f"{golden_case_name} {name}: max abs diff {diff:.3e}"
