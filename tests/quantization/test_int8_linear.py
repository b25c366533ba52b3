"""Int8DynamicLinear: weight quantization, outputs against the float linear, packing and the state dict."""

import pytest
import torch
from torch import nn

from mossvl.errors import ConfigError
from mossvl.quantization.int8_linear import Int8DynamicLinear, needs_reduced_range, quantize_weight


def make_linear(bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(64, 48, bias=bias)


def test_quantize_weight_is_symmetric_per_output_channel():
    weight = torch.randn(6, 10)
    weight[2] = 0.0
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and scale.shape == (6, 1) and scale.dtype == torch.float32
    assert q.abs().amax(dim=1).tolist() == [127, 127, 0, 127, 127, 127]
    assert scale[2].item() == 1.0  # an all-zero row must not get a zero scale
    assert ((q.float() * scale - weight).abs() <= scale / 2 + 1e-7).all()


@pytest.mark.parametrize("bias", [False, True])
def test_output_is_close_to_the_float_linear(bias):
    linear = make_linear(bias)
    layer = Int8DynamicLinear.from_linear(linear)
    x = torch.randn(3, 5, 64)
    reference = linear(x)
    output = layer(x)
    assert output.shape == reference.shape and output.dtype == torch.float32
    # int8 weights and activations: a few percent of the output's scale; measured 1.5% with 7-bit activations.
    assert (output - reference).abs().max() / reference.abs().max() < 0.04
    # The dequantized weight with float activations is much closer than that: the activations dominate the error.
    assert torch.allclose(layer.dequantized_weight(), linear.weight, atol=layer.weight_scale.max().item() / 2)


def test_eight_bit_activations_are_more_accurate_than_seven():
    linear = make_linear()
    x = torch.randn(4, 64)
    errors = [
        (Int8DynamicLinear.from_linear(linear, reduce_range=r)(x) - linear(x)).abs().mean().item()
        for r in (True, False)
    ]
    assert errors[1] < errors[0]


@pytest.mark.parametrize(
    ("capabilities", "reduced"),
    [
        ({"architecture": "x86_64", "avx2": True}, True),
        ({"architecture": "x86_64", "avx2": True, "avx512_vnni": True}, False),
        ({"architecture": "aarch64"}, False),
    ],
)
def test_seven_bit_activations_only_where_the_kernels_can_saturate(monkeypatch, capabilities, reduced):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert needs_reduced_range() is reduced
    assert Int8DynamicLinear(64, 48).reduce_range is reduced
    assert Int8DynamicLinear(64, 48, reduce_range=not reduced).reduce_range is not reduced


def test_bfloat16_input_gives_bfloat16_output():
    layer = Int8DynamicLinear.from_linear(make_linear())
    assert layer(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_packing_frees_the_int8_copy_and_the_state_dict_restores_it():
    layer = Int8DynamicLinear.from_linear(make_linear())
    weight = layer.weight.detach().clone()
    x = torch.randn(2, 64)
    before = layer(x)
    assert layer.is_packed and layer.weight.numel() == 0
    state = layer.state_dict()
    assert torch.equal(state["weight"], weight) and state["weight_scale"].shape == (48, 1)

    fresh = Int8DynamicLinear(64, 48)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), before)
    layer.load_state_dict(state)  # loading into a packed layer unpacks it first
    assert not layer.is_packed and torch.equal(layer(x), before)


def test_packing_off_the_cpu_is_refused():
    with torch.device("meta"):
        layer = Int8DynamicLinear(64, 48)
    with pytest.raises(ConfigError, match="run on the CPU only"):
        layer.pack()
