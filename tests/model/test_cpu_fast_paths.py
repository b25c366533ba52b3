"""The CPU fast paths of the decoder compute what the general code does: one-query attention without SDPA, the
fused float32 RMSNorm, cross layers without a row mask, and the oneDNN linear layer."""

import pytest
import torch
from torch.nn import functional as F

from mossvl.model import MossVLConfig, MossVLForConditionalGeneration
from mossvl.model.linear import MIN_ONEDNN_WEIGHT_ELEMENTS, Linear, onednn_linear_available, uses_onednn
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


@pytest.mark.parametrize(
    "shape_of_inputs", [(5, 64), (2, 7, 64), (1, 1, 64), (0, 64)], ids=["rows", "batch", "one", "empty"]
)
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_linear_matches_f_linear(shape_of_inputs, bias):
    torch.manual_seed(0)
    layer = Linear(64, MIN_ONEDNN_WEIGHT_ELEMENTS // 64, bias=bias)
    inputs = torch.randn(*shape_of_inputs)
    with torch.no_grad():
        assert uses_onednn(inputs, layer.weight, layer.bias) == onednn_linear_available()
        torch.testing.assert_close(
            layer(inputs), F.linear(inputs, layer.weight, layer.bias), rtol=1e-5, atol=1e-5
        )
        sliced = torch.randn(3, 9, 64)[:, -1]  # the LM head reads the last position of each row: strided rows
        torch.testing.assert_close(
            layer(sliced), F.linear(sliced, layer.weight, layer.bias), rtol=1e-5, atol=1e-5
        )


def test_linear_needing_gradients_other_dtypes_or_small_weights_takes_nn_linear_path():
    torch.manual_seed(0)
    layer = Linear(16, MIN_ONEDNN_WEIGHT_ELEMENTS // 16, bias=True)
    inputs = torch.randn(4, 16, requires_grad=True)
    assert not uses_onednn(inputs, layer.weight, layer.bias)  # oneDNN's kernel has no backward
    layer(inputs).square().sum().backward()
    reference = inputs.detach().clone().requires_grad_()
    F.linear(reference, layer.weight, layer.bias).square().sum().backward()
    torch.testing.assert_close(inputs.grad, reference.grad)
    with torch.no_grad():
        assert not uses_onednn(inputs.bfloat16(), layer.weight.bfloat16(), None)
        assert uses_onednn(inputs, layer.weight, layer.bias) == onednn_linear_available()
        assert not uses_onednn(inputs, layer.weight[:-1], layer.bias[:-1])  # one row under the threshold


def test_model_uses_the_onednn_linear_for_every_projection(golden_dir):
    model = MossVLForConditionalGeneration(MossVLConfig.from_pretrained(golden_dir))
    projections = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert projections and all(isinstance(m, Linear) for m in projections)
