"""What the benchmarks share: the random "mid" MOSS-VL, its processor, synthetic frames and memory readings.

The "mid" model: text hidden 1024, 12 decoder layers of which 3 are cross-attention, 16 heads / 4 KV heads of 64,
MLP 2816, a 4-block ViT of width 256 and the golden fixture's tokenizer (a small vocabulary, so the LM head does
not dominate). Cross-layer gates are set to 0.5 so that the cross layers do real work. Random weights never stop
early: the EOS id is set to one no token has, so every run decodes the number of tokens it asks for.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mossvl.model import MossVLConfig, MossVLForConditionalGeneration  # noqa: E402
from mossvl.processing.processor import MossVLProcessor  # noqa: E402

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"


def mid_sizes(hidden: int = 1024, layers: int = 12) -> dict:
    heads = hidden // 64
    return {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": max(1, heads // 4),
        "intermediate": int(hidden * 2.75),
        "vision_hidden": 256,
        "vision_depth": 4,
    }


def load_processor() -> MossVLProcessor:
    return MossVLProcessor.from_pretrained(TOKENIZER_DIR)


def token_ids(processor: MossVLProcessor) -> dict:
    return {
        "image_token_id": processor.image_token_id,
        "video_token_id": processor.video_token_id,
        "vision_start_token_id": processor.vision_start_token_id,
        "vision_end_token_id": processor.vision_end_token_id,
    }


def build_mossvl(sizes: dict, processor: MossVLProcessor, seed: int = 0) -> MossVLForConditionalGeneration:
    """A random MOSS-VL of the given sizes (fp32, eval mode, cross gates 0.5) that never emits EOS.

    Optional keys and their defaults: ``cross_layers`` (3 spread over the decoder, e.g. [2, 5, 8] of 12),
    ``vocab`` (the demo tokenizer's), ``head_dim`` 64 with ``mrope_section`` [12, 10, 10], ``vision_heads`` 4 and
    ``deepstack`` [0, 1, 2].
    """
    torch.manual_seed(seed)
    layers = sizes["layers"]
    cross = sizes.get("cross_layers") or [layers * (i + 1) // 4 - 1 for i in range(3)]
    config = MossVLConfig(
        vision_config={
            "depth": sizes["vision_depth"],
            "hidden_size": sizes["vision_hidden"],
            "intermediate_size": sizes["vision_hidden"] * 4,
            "num_heads": sizes.get("vision_heads", 4),
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 1,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": sizes.get("deepstack", [0, 1, 2]),
            "out_hidden_size": sizes["hidden"],
        },
        text_config={
            "vocab_size": sizes.get("vocab", len(processor.tokenizer)),
            "hidden_size": sizes["hidden"],
            "intermediate_size": sizes["intermediate"],
            "num_hidden_layers": layers,
            "num_attention_heads": sizes["heads"],
            "num_key_value_heads": sizes["kv_heads"],
            "head_dim": sizes.get("head_dim", 64),
            "cross_attention_layers": cross,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": sizes.get("mrope_section", [12, 10, 10]),
            },
        },
        attn_implementation="sdpa",
        **token_ids(processor),
    )
    model = MossVLForConditionalGeneration(config).eval()
    for layer in cross:
        block = model.model.language_model.layers[layer]
        block.cross_attn_attn_gate.data.fill_(0.5)
        block.cross_attn_mlp_gate.data.fill_(0.5)
    model.generation_config.eos_token_id = [-1]
    return model


def param_millions(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def random_frames(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def frames_video(frames: list[np.ndarray], fps: float = 1.0) -> dict:
    """Pre-extracted frames as a video (no decoding)."""
    return {"frames": frames, "fps": fps}


def write_video(path: Path, frames: list[np.ndarray], fps: int = 1) -> Path:
    """An H.264 MP4 of the frames (to time decoding as well)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# The "mid" configuration of the roofline benchmark: the shape the side-by-side comparison with the
# official code used. Unlike ``mid_sizes`` it has the real 151,936-token vocabulary (so the LM head is a large
# part of a decode step), 8 query / 4 KV heads of 128, cross-attention at [2, 6, 10] and an 8-block ViT. Build it
# with ``build_mossvl(ROOFLINE_MID, processor)``.
ROOFLINE_MID = {
    "hidden": 1024,
    "layers": 12,
    "cross_layers": [2, 6, 10],
    "heads": 8,
    "kv_heads": 4,
    "head_dim": 128,
    "mrope_section": [24, 20, 20],
    "intermediate": 3072,
    "vocab": 151936,
    "vision_hidden": 256,
    "vision_depth": 8,
    "vision_heads": 4,
    "deepstack": [1, 3, 5],
}
