"""MossVLConfig: official defaults, loading the golden config.json unchanged, and ConfigError on bad settings."""

import json
import re

import pytest

from mossvl.errors import ConfigError
from mossvl.model import MossVLConfig, MossVLTextConfig, MossVLVisionConfig


def test_defaults_are_the_11b_model():
    config = MossVLConfig()
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (48, 4096, 12288)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (32, 8, 128)
    assert text.cross_attention_layers == list(range(2, 48, 4))
    assert text.rope_parameters == {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    }
    assert (text.vocab_size, text.max_position_embeddings, text.rms_norm_eps) == (151936, 262144, 1e-6)
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (
        27,
        1152,
        4304,
        16,
    )
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (16, 2, 1)
    assert vision.deepstack_visual_indexes == [8, 16, 24]
    assert (vision.num_position_embeddings, vision.out_hidden_size) == (2304, 4096)
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert config.vision_seq_pad_multiple == 8
    assert config.tie_word_embeddings is False
    assert config.rotate_cross_query_in_decode is False


def test_golden_config_loads_unchanged(golden_dir):
    raw = json.loads((golden_dir / "config.json").read_text())
    config = MossVLConfig.from_pretrained(golden_dir)
    text = config.text_config
    assert text.cross_attention_layers == raw["text_config"]["cross_attention_layers"]
    assert text.rope_parameters["rope_theta"] == raw["text_config"]["rope_theta"]
    assert text.rope_parameters["mrope_section"] == [6, 5, 5]
    assert text.rope_scaling["mrope_interleaved"] is True
    assert config.vision_config.deepstack_visual_indexes == [0, 1, 2]
    assert (config.image_token_id, config.vision_seq_pad_multiple) == (396, 8)


def test_round_trip_keeps_the_settings(tmp_path):
    config = MossVLConfig(rotate_cross_query_in_decode=True, vision_seq_pad_multiple=1)
    config.save_pretrained(tmp_path)
    loaded = MossVLConfig.from_pretrained(tmp_path)
    assert loaded.rotate_cross_query_in_decode is True
    assert loaded.vision_seq_pad_multiple == 1
    assert loaded.text_config.rope_parameters == config.text_config.rope_parameters


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: MossVLTextConfig(
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [24, 20, 21]}
            ),
            "mrope_section [24, 20, 21]",
        ),
        (lambda: MossVLTextConfig(cross_attention_layers=[2, 48]), "cross_attention_layers entry 48"),
        (lambda: MossVLTextConfig(cross_attention_layers=[-1]), "cross_attention_layers entry -1"),
        (lambda: MossVLTextConfig(cross_attention_layers=[2, 6, 2]), "repeats layer(s) [2]"),
        (lambda: MossVLTextConfig(num_key_value_heads=5), "num_attention_heads 32 is not divisible"),
        (lambda: MossVLVisionConfig(num_heads=7), "hidden_size 1152 is not divisible by num_heads 7"),
        (lambda: MossVLVisionConfig(deepstack_visual_indexes=[8, 27]), "deepstack_visual_indexes entry 27"),
        (lambda: MossVLVisionConfig(num_position_embeddings=2300), "2300 is not a perfect square"),
        (lambda: MossVLConfig(vision_config={"out_hidden_size": 3584}), "out_hidden_size 3584 must equal"),
        (lambda: MossVLConfig(vision_seq_pad_multiple=0), "vision_seq_pad_multiple must be >= 1"),
    ],
)
def test_inconsistent_settings_raise_config_error(build, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()
