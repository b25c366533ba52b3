"""Quantization scope: the official targets and counts read from a config, and the errors for an unexpected scope."""

import pytest
from torch import nn

from mossvl.errors import CheckpointError, ConfigError
from mossvl.model import MossVLTextConfig
from mossvl.quantization import scope as sc

OFFICIAL_11B = MossVLTextConfig()  # 48 layers, cross-attention at 2, 6, ..., 46 (spec §2.3)


def test_official_11b_counts_match_the_release():
    layers = sc.layer_scope(OFFICIAL_11B)
    assert len(layers.self_layers) == 36
    assert len(sc.dense_targets(layers)) == sc.expected_dense_count(layers) == 252
    assert len(sc.keep_ends_targets(layers, 4)) == sc.expected_keep_ends_count(layers, 4) == 240


def test_dense_targets_are_the_self_attention_layers_linears():
    layers = sc.layer_scope(MossVLTextConfig(num_hidden_layers=4, cross_attention_layers=[1]))
    targets = sc.dense_targets(layers)
    assert targets[:7] == [
        "model.language_model.layers.0.self_attn.q_proj",
        "model.language_model.layers.0.self_attn.k_proj",
        "model.language_model.layers.0.self_attn.v_proj",
        "model.language_model.layers.0.self_attn.o_proj",
        "model.language_model.layers.0.mlp.gate_proj",
        "model.language_model.layers.0.mlp.up_proj",
        "model.language_model.layers.0.mlp.down_proj",
    ]
    assert len(targets) == 21
    assert not any(".layers.1." in name for name in targets)


@pytest.mark.parametrize(
    ("extent", "count"), [("official", 21), ("official+lm_head", 22), ("decoder+lm_head", 29)]
)
def test_wider_extents_add_lm_head_and_cross_layers(extent, count):
    layers = sc.layer_scope(MossVLTextConfig(num_hidden_layers=4, cross_attention_layers=[1]))
    targets = sc.dense_targets(layers, extent)
    assert len(targets) == sc.expected_dense_count(layers, extent) == count
    assert ("model.language_model.layers.1.cross_attn.q_proj" in targets) == (extent == "decoder+lm_head")
    assert ("lm_head" in targets) == (extent != "official")


def test_keep_ends_quantizes_only_the_mlp_of_middle_cross_layers():
    layers = sc.layer_scope(MossVLTextConfig(num_hidden_layers=8, cross_attention_layers=[1, 4, 7]))
    targets = sc.keep_ends_targets(layers, keep_end_layers=2)
    assert {name.split(".")[3] for name in targets} == {"2", "3", "4", "5"}
    assert [name for name in targets if ".layers.4." in name] == [
        "model.language_model.layers.4.mlp.gate_proj",
        "model.language_model.layers.4.mlp.up_proj",
        "model.language_model.layers.4.mlp.down_proj",
    ]
    assert len(targets) == sc.expected_keep_ends_count(layers, 2) == 7 * 3 + 3
    skipped = sc.keep_ends_skipped(layers, 2)
    assert "model.language_model.layers.4.cross_attn" in skipped
    assert {
        "model.visual",
        "lm_head",
        "model.language_model.layers.0",
        "model.language_model.layers.7",
    } <= set(skipped)


def test_expected_layout_flags_must_match_the_config():
    assert sc.layer_scope(OFFICIAL_11B, 48, list(range(2, 48, 4))).num_layers == 48
    with pytest.raises(ConfigError, match=r"--num-layers 40 but .*num_hidden_layers is 48"):
        sc.layer_scope(OFFICIAL_11B, num_layers=40)
    with pytest.raises(ConfigError, match=r"--cross-layers \[3, 7\] but .*cross_attention_layers is \[2, 6"):
        sc.layer_scope(OFFICIAL_11B, cross_layers=[3, 7])


def test_keep_end_layers_that_leave_nothing_are_refused():
    layers = sc.layer_scope(MossVLTextConfig(num_hidden_layers=8, cross_attention_layers=[1, 4, 7]))
    with pytest.raises(ConfigError, match="leaves no self-attention layer"):
        sc.keep_ends_targets(layers, keep_end_layers=4)
    with pytest.raises(ConfigError, match=">= 0"):
        sc.keep_ends_targets(layers, keep_end_layers=-1)


def test_targets_must_be_linears_of_the_model():
    model = nn.Module()
    model.add_module("proj", nn.Linear(2, 2))
    model.add_module("norm", nn.LayerNorm(2))
    sc.check_linear_targets(model, ["proj"])
    with pytest.raises(CheckpointError, match="no module 'missing'"):
        sc.check_linear_targets(model, ["proj", "missing"])
    with pytest.raises(CheckpointError, match="'norm' is a LayerNorm, not a Linear"):
        sc.check_linear_targets(model, ["norm"])


def test_count_check_aborts_on_an_unexpected_count():
    sc.check_count(["a", "b"], 2, "fp8-dynamic")
    with pytest.raises(CheckpointError, match="quantized 1 linears, expected 2; nothing was written"):
        sc.check_count(["a"], 2, "fp8-dynamic")
