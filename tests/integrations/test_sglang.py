"""The SGLang plugin and the contract with SGLang's MOSS-VL code (sglang 0.5.23, read from its wheel):
`sglang/srt/plugins/__init__.py` runs every `sglang.srt.plugins` entry point; `multimodal/processors/moss_vl.py`
and `base_processor.py` call our processor and read its outputs; `models/moss_vl.py` reads the config."""

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch
from PIL import Image

from mossvl.inference.api import demo_model_dir
from mossvl.integrations.sglang import register

# What SGLang's MOSS-VL processor reads from a processor call.
SGLANG_KEYS = {
    "input_ids",
    "attention_mask",
    "pixel_values",
    "grid_thw",
    "media_nums_per_sample",
    "cross_attention_mask",
}


def test_the_entry_point_is_installed_and_is_register():
    plugins = {ep.name: ep for ep in entry_points(group="sglang.srt.plugins")}
    assert "mossvl" in plugins, "entry point missing: reinstall the package (pip install -e .)"
    assert plugins["mossvl"].value == "mossvl.integrations.sglang:register"
    assert plugins["mossvl"].dist.name == "mossvl"
    assert plugins["mossvl"].load() is register


PLUGIN_RUN = """
import json, sys
from importlib.metadata import entry_points
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

out = {}
for name, folder in (("official", sys.argv[1]), ("demo", sys.argv[2])):
    try:
        AutoConfig.from_pretrained(folder, trust_remote_code=False)
        out[name + "_before"] = "loaded"
    except (ValueError, KeyError) as exc:
        out[name + "_before"] = type(exc).__name__
out["imported_before"] = "mossvl" in sys.modules
# As SGLang does: every process loads the group and calls each plugin (several times is harmless).
for ep in entry_points(group="sglang.srt.plugins"):
    if ep.name == "mossvl":
        ep.load()()
        ep.load()()
for name, folder in (("official", sys.argv[1]), ("demo", sys.argv[2])):
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=False)
    pil = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False, backend="pil")
    text = config.text_config
    out[name] = {
        "config": type(config).__name__,
        "architectures": config.architectures,
        "processor": type(processor).__name__,
        "pil_image_processor": type(pil).__name__,
        "image_token_id": config.image_token_id,
        "image_pad_id": processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "mrope_section": text.rope_scaling["mrope_section"],
        "mrope_interleaved": text.rope_scaling["mrope_interleaved"],
        "encodes_empty_to": processor.tokenizer.encode(""),
    }
out["ray_imported"] = "ray" in sys.modules  # mossvl.integrations must not need the ray extra
# SGLang also loads the tokenizer on its own (the official layout keeps it in the checkpoint's root).
out["demo"]["tokenizer"] = type(AutoTokenizer.from_pretrained(sys.argv[2])).__name__
print(json.dumps(out))
"""


def test_calling_the_plugin_registers_moss_vl_for_sglangs_auto_loading(golden_dir):
    """In a fresh process: before the plugin the official folder does not load without remote code; after it,
    AutoConfig / AutoProcessor / AutoImageProcessor(backend="pil") give our classes, with what SGLang reads."""
    run = subprocess.run(
        [sys.executable, "-c", PLUGIN_RUN, str(golden_dir), str(demo_model_dir())],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    # Without the plugin: the official folder needs its remote code, ours is an unknown model type.
    assert out["official_before"] == out["demo_before"] == "ValueError"
    assert out["imported_before"] is False and out["ray_imported"] is False
    for name in ("official", "demo"):
        loaded = out[name]
        assert loaded["config"] == "MossVLConfig"
        assert loaded["architectures"] == ["MossVLForConditionalGeneration"]  # SGLang's model class name
        assert loaded["processor"] == "MossVLProcessor"
        assert loaded["pil_image_processor"] == "MossVLImageProcessor"
        assert loaded["image_token_id"] == loaded["image_pad_id"]
        assert loaded["mrope_interleaved"] is True
        assert sum(loaded["mrope_section"]) > 0
        # SGLang adds add_special_tokens=False only for tokenizers that add tokens to an empty string.
        assert loaded["encodes_empty_to"] == []
    assert out["demo"]["tokenizer"].startswith("Qwen2Tokenizer")


@pytest.fixture(scope="module")
def sglang_call(golden_processor, golden_dir):
    """Our processor called as SGLang's base processor calls it: one chat-templated text with inline placeholders,
    PIL images, and videos as a path and as ``{"video_path", "segments"}``."""
    media = golden_dir / "media"
    prompt = "<|im_start|>user\n<|image|><|video|><|video|>\nCompare them.<|im_end|>\n<|im_start|>assistant\n"
    videos = [
        str(media / "vid_a_47f_10fps_48x64.mp4"),
        {"video_path": str(media / "vid_b_30f_6fps_40x90.mp4"), "segments": [[1.0, 3.0]]},
    ]
    image = Image.open(media / "img_a_64x96.png")
    return golden_processor(text=[prompt], padding=True, return_tensors="pt", images=[image], videos=videos)


def test_processor_outputs_have_the_keys_dtypes_and_shapes_sglang_reads(sglang_call, golden_model):
    out = sglang_call
    assert set(out) >= SGLANG_KEYS
    ids, grid = out["input_ids"], out["grid_thw"]
    assert ids.dtype == torch.long and ids.ndim == 2 and ids.shape[0] == 1
    assert out["attention_mask"].shape == ids.shape and out["attention_mask"].bool().all()
    assert grid.dtype == torch.long and grid.shape == (3, 3)  # the image, the video, the video segment
    assert out["media_nums_per_sample"].tolist() == [3]
    vision = golden_model.config.vision_config
    row = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    assert out["pixel_values"].dtype == torch.float32
    assert out["pixel_values"].shape == (int(grid.prod(dim=1).sum()), row)
    merge = vision.spatial_merge_size
    assert (grid[:, 1:] % merge == 0).all()  # SGLang's tokens per frame: t*h*w // merge**2 // t
    frames = int(grid[:, 0].sum())
    assert grid[0, 0] == 1 and frames > 3
    assert out["cross_attention_mask"].dtype == torch.bool
    assert out["cross_attention_mask"].shape == (1, 1, ids.shape[1], frames)


def test_cross_attention_mask_is_true_where_masked_and_maps_frames_to_image_tokens(sglang_call, golden_model):
    """SGLang requires one `<|image_pad|>` per frame, and reads visible frames per token as (~mask).sum(-1):
    token i sees the frames whose `<|image_pad|>` is at or before i."""
    ids, mask = sglang_call["input_ids"], sglang_call["cross_attention_mask"]
    image_tokens = ids[0] == golden_model.config.image_token_id
    assert int(image_tokens.sum()) == mask.shape[-1]
    visible = (~mask).sum(dim=-1, dtype=torch.int32).reshape(-1)
    assert torch.equal(visible, torch.cumsum(image_tokens, dim=0).to(torch.int32))
    assert visible[0] == 0 and visible[-1] == mask.shape[-1]


def test_processor_accepts_the_device_argument_sglang_passes(golden_processor, golden_dir):
    image = Image.open(golden_dir / "media" / "img_a_64x96.png")
    prompt = "<|im_start|>user\n<|image|>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"
    plain = golden_processor(text=[prompt], padding=True, return_tensors="pt", images=[image])
    placed = golden_processor(text=[prompt], padding=True, return_tensors="pt", images=[image], device="cpu")
    assert torch.equal(plain["pixel_values"], placed["pixel_values"])


def test_text_config_exposes_rope_theta_as_sglang_reads_it(golden_model, golden_dir):
    written = json.loads((golden_dir / "config.json").read_text())["text_config"]["rope_theta"]
    assert getattr(golden_model.config.text_config, "rope_theta", 1_000_000) == written
