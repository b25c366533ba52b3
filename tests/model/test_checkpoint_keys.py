"""Weight layout: the 11B model's state-dict keys and shapes are exactly spec §10; checkpoints round-trip and
official checkpoint folders load through transformers' Auto classes without trust_remote_code."""

import json

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

import mossvl  # noqa: F401  (registers the Auto classes)
from mossvl.model import MossVLConfig, MossVLForConditionalGeneration, MossVLModel

CROSS_LAYERS = {2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42, 46}


def spec_keys() -> dict[str, tuple[int, ...]]:
    """Spec §10, written out: every checkpoint key of the 11B model with its shape."""
    keys: dict[str, tuple[int, ...]] = {
        "lm_head.weight": (151936, 4096),
        "model.separator_token": (4096,),
        "model.visual.patch_embed.proj.weight": (1152, 3, 1, 16, 16),
        "model.visual.patch_embed.proj.bias": (1152,),
        "model.visual.pos_embed.weight": (2304, 1152),
        "model.visual.merger.linear_fc1.weight": (18432, 18432),
        "model.visual.merger.linear_fc1.bias": (18432,),
        "model.visual.merger.linear_fc2.weight": (4096, 18432),
        "model.visual.merger.linear_fc2.bias": (4096,),
        "model.language_model.embed_tokens.weight": (151936, 4096),
        "model.language_model.norm.weight": (4096,),
    }
    for i in range(4):
        keys[f"model.visual.merger.norms.{i}.weight"] = (1152,)
        keys[f"model.visual.merger.norms.{i}.bias"] = (1152,)
    for i in range(27):
        block = f"model.visual.blocks.{i}."
        for norm in ("norm1", "norm2"):
            keys[block + norm + ".weight"] = (1152,)
            keys[block + norm + ".bias"] = (1152,)
        keys[block + "attn.qkv.weight"] = (3456, 1152)
        keys[block + "attn.qkv.bias"] = (3456,)
        keys[block + "attn.proj.weight"] = (1152, 1152)
        keys[block + "attn.proj.bias"] = (1152,)
        keys[block + "mlp.linear_fc1.weight"] = (4304, 1152)
        keys[block + "mlp.linear_fc1.bias"] = (4304,)
        keys[block + "mlp.linear_fc2.weight"] = (1152, 4304)
        keys[block + "mlp.linear_fc2.bias"] = (1152,)
    for i in range(48):
        layer = f"model.language_model.layers.{i}."
        attn = layer + ("cross_attn." if i in CROSS_LAYERS else "self_attn.")
        keys[attn + "q_proj.weight"] = (4096, 4096)
        keys[attn + "k_proj.weight"] = (1024, 4096)
        keys[attn + "v_proj.weight"] = (1024, 4096)
        keys[attn + "o_proj.weight"] = (4096, 4096)
        keys[attn + "q_norm.weight"] = (128,)
        keys[attn + "k_norm.weight"] = (128,)
        keys[layer + "input_layernorm.weight"] = (4096,)
        keys[layer + "post_attention_layernorm.weight"] = (4096,)
        keys[layer + "mlp.gate_proj.weight"] = (12288, 4096)
        keys[layer + "mlp.up_proj.weight"] = (12288, 4096)
        keys[layer + "mlp.down_proj.weight"] = (4096, 12288)
        if i in CROSS_LAYERS:
            keys[layer + "cross_attn_attn_gate"] = (1,)
            keys[layer + "cross_attn_mlp_gate"] = (1,)
    return keys


def test_11b_state_dict_matches_spec():
    with torch.device("meta"):
        model = MossVLForConditionalGeneration(MossVLConfig())
    actual = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = spec_keys()
    assert sorted(set(expected) - set(actual)) == []
    assert sorted(set(actual) - set(expected)) == []
    assert {key: shape for key, shape in actual.items() if expected[key] != shape} == {}
    assert 11.0e9 < sum(value.numel() for value in model.state_dict().values()) < 11.6e9


def tiny_config() -> MossVLConfig:
    return MossVLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
            "out_hidden_size": 64,
        },
        text_config={
            "num_hidden_layers": 3,
            "cross_attention_layers": [1],
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 100,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
        },
        image_token_id=99,
    )


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MossVLForConditionalGeneration(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MossVLForConditionalGeneration)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[key], restored[key]) for key in original)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert loaded.config.text_config.rope_parameters["mrope_section"] == [4, 2, 2]


def test_golden_folder_loads_through_auto_classes_without_remote_code(golden_dir):
    assert "auto_map" in json.loads((golden_dir / "config.json").read_text())
    config = AutoConfig.from_pretrained(golden_dir)
    assert isinstance(config, MossVLConfig)
    causal = AutoModelForCausalLM.from_pretrained(golden_dir, dtype=torch.float32)
    assert isinstance(causal, MossVLForConditionalGeneration)
    assert causal.dtype == torch.float32
    assert isinstance(AutoModelForImageTextToText.from_pretrained(golden_dir), MossVLForConditionalGeneration)
    base = AutoModel.from_pretrained(golden_dir, dtype=torch.float32)
    assert isinstance(base, MossVLModel)
    assert torch.equal(base.separator_token, causal.model.separator_token)
