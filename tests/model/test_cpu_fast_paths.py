"""The CPU fast paths of the decoder compute what the general code does: one-query attention without SDPA, the
fused float32 RMSNorm, cross layers without a row mask, and input-major linear weights."""

import pytest
import torch

from mossvl.model import MossVLConfig, MossVLForConditionalGeneration
from mossvl.model.modeling import store_linear_weights_input_major
from mossvl.model.text import (
    CrossAttentionInputs,
    MossVLTextRMSNorm,
    eager_attention_forward,
    single_query_attention,
)


class _Module(torch.nn.Module):
    pass


def reference_attention(query, key, value, mask, scaling):
    output, _ = eager_attention_forward(_Module().eval(), query, key, value, mask, scaling)
    return output


@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
@pytest.mark.parametrize(("heads", "kv_heads"), [(8, 4), (4, 4), (6, 1)])
def test_single_query_attention_matches_eager_attention(mask_kind, heads, kv_heads):
    torch.manual_seed(0)
    batch, length, dim = 3, 11, 16
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    visible = torch.arange(length)[None, :] < torch.tensor([11, 4, 1])[:, None]
    mask = None
    if mask_kind == "bool":
        mask = visible.view(batch, 1, 1, length)
    elif mask_kind == "additive":
        mask = torch.zeros(batch, 1, 1, length).masked_fill(~visible.view(batch, 1, 1, length), -1e30)
    expected = reference_attention(query, key, value, mask, dim**-0.5)
    torch.testing.assert_close(single_query_attention(query, key, value, mask, dim**-0.5), expected)


def test_fused_float32_rms_norm_is_bitwise_the_reference_formula():
    torch.manual_seed(0)
    norm = MossVLTextRMSNorm(64, eps=1e-6)
    norm.weight.data.normal_()
    hidden = torch.randn(2, 5, 64) * 3
    expected = norm.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert torch.equal(norm(hidden), expected)
    rounded = hidden.bfloat16().float()
    reference = (rounded * torch.rsqrt(rounded.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert torch.equal(norm.to(torch.bfloat16)(hidden.bfloat16()), norm.weight * reference)


@torch.no_grad()
def test_cross_layer_without_masks_equals_all_visible_masks(golden_dir):
    torch.manual_seed(0)
    model = MossVLForConditionalGeneration(MossVLConfig.from_pretrained(golden_dir)).eval()
    text = model.model.language_model
    layer = text.layers[model.config.text_config.cross_attention_layers[0]]
    layer.cross_attn_attn_gate.fill_(0.5)
    layer.cross_attn_mlp_gate.fill_(0.5)
    hidden_size = model.config.text_config.hidden_size
    hidden, states = torch.randn(1, 5, hidden_size), torch.randn(1, 7, hidden_size)
    cos, sin = text.rotary_emb(hidden, torch.arange(5).view(1, 1, 5).expand(3, 1, 5))
    vision_cos, vision_sin = text.rotary_emb(states, torch.arange(7).view(1, 1, 7).expand(3, 1, 7))

    def run(mask, rows):
        cross = CrossAttentionInputs(states, vision_cos, vision_sin, mask, rows, True, None, True)
        return layer(hidden, cos, sin, None, None, cross)

    masked = run(torch.zeros(1, 1, 5, 7), torch.ones(1, 5, 1))
    assert not torch.equal(masked, hidden)  # the layer does something
    torch.testing.assert_close(run(None, None), masked, rtol=0, atol=1e-6)


@torch.no_grad()
def test_input_major_weights_keep_values_and_results(golden_dir, golden_expected, tmp_path):
    expected = golden_expected("interleaved")
    keys = ("input_ids", "attention_mask", "pixel_values", "grid_thw", "media_nums_per_sample")
    inputs = {key: expected[key] for key in keys}
    model = MossVLForConditionalGeneration.from_pretrained(golden_dir, dtype=torch.float32).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reference = model(**inputs, use_cache=False).logits
    assert store_linear_weights_input_major(model) > 0
    assert store_linear_weights_input_major(model) == 0  # already input-major
    assert model.lm_head.weight.stride() == (1, model.lm_head.out_features)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    torch.testing.assert_close(model(**inputs, use_cache=False).logits, reference, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = MossVLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(reloaded.lm_head.weight, before["lm_head.weight"])


def test_input_major_weights_leave_a_tied_lm_head(golden_dir):
    model = MossVLForConditionalGeneration(MossVLConfig.from_pretrained(golden_dir))
    model.lm_head.weight = model.get_input_embeddings().weight
    store_linear_weights_input_major(model)
    assert model.get_input_embeddings().weight.is_contiguous()
