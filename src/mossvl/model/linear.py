"""The linear layer of the MOSS-VL model: ``nn.Linear`` whose float32 inference on the CPU runs through oneDNN.

PyTorch sends a float32 ``nn.Linear`` on the CPU to MKL's GEMM, which multiplies a few rows (a decode step of a
batch, a short prompt) well below the machine's speed. Through the "mid" model's decoder weights (516 MiB) on a
2-core AVX-512 machine, MKL takes 37 ms for one row, 58 ms for 8 and 70 ms for 16, this layer 25, 38 and 49 ms, and
a 512-row prefill chunk 863 vs 724 ms (``benchmarks/bench_linear.py``). oneDNN computes the same float32 products
in another summation order (differences of a few float32 ulps). It has no backward, so anything that needs
gradients takes ``nn.Linear``'s own path, as do other devices, other dtypes and quantized weights. So do small
weights: a oneDNN call costs ~20 µs however small the product, MKL's ~7 µs, which made the 4.8M-parameter demo model
decode at 300 instead of 480 tokens/s; the two break even near 512 x 1024 weights.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

# Weights below this many elements stay with MKL, whose fixed cost per call is lower.
MIN_ONEDNN_WEIGHT_ELEMENTS = 512 * 1024


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear kernel (CPU builds with MKLDNN)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def uses_onednn(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``linear(inputs, weight, bias)`` runs through oneDNN: float32 CPU tensors, a weight of at least
    ``MIN_ONEDNN_WEIGHT_ELEMENTS``, no gradient needed."""
    needs_grad = torch.is_grad_enabled() and (
        inputs.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    return (
        not needs_grad
        and inputs.dtype == weight.dtype == torch.float32
        and inputs.device.type == weight.device.type == "cpu"
        and weight.layout == torch.strided
        and weight.numel() >= MIN_ONEDNN_WEIGHT_ELEMENTS
        and (bias is None or bias.dtype == torch.float32)
        and onednn_linear_available()
    )


def linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN where ``uses_onednn`` says so."""
    if uses_onednn(inputs, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(inputs, weight, bias, "none", [], "")
    return F.linear(inputs, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state-dict keys and initialisation) computed by ``linear``."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return linear(inputs, self.weight, self.bias)
