"""``Int8DynamicLinear``: int8 weights with one scale per output channel, activations quantized to int8 at each call
(one scale per call, from the input's range).

The matmul runs in PyTorch's CPU dynamic-quantization kernels (``torch.ops.quantized.linear_dynamic``, the
kernels behind ``torch.ao.quantization.quantize_dynamic``); benchmarks/bench_quantization.py measured it as the
fastest CPU path here. The checkpoint form is two plain tensors, ``weight`` (int8, out × in) and
``weight_scale`` (float32, out × 1), with ``weight ≈ int8 · scale``. Once loaded (or at the first call) they are
packed into the kernel's layout and the int8 copy is dropped, as it would double the memory; ``state_dict``
unpacks it again.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError

INT8_MAX = 127


def needs_reduced_range() -> bool:
    """Whether activations must be quantized to 7 bits on this CPU: on x86 without AVX512-VNNI the kernels add
    pairs of 8-bit products into 16 bits, which can saturate; with VNNI (or on ARM) they accumulate in 32 bits."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if capabilities.get("architecture", "x86_64") != "x86_64":
        return False
    return not capabilities.get("avx512_vnni", False)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(int8 (out, in), float32 scale (out, 1))``, ``weight ≈ q · scale``."""
    weight = weight.detach().to(torch.float32)
    scale = weight.abs().amax(dim=1, keepdim=True) / INT8_MAX
    # An all-zero row gets scale 1 rather than 0, so that dequantizing never divides by zero.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


@contextmanager
def _quantized_tensor_warnings_silenced():
    # The kernels take weights as a torch.qint8 tensor, whose creation functions warn about their future
    # deprecation on every new load; the pinned torch has them, and the warning tells a user nothing to act on.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*quantized tensor creation functions", category=UserWarning
        )
        yield


class Int8DynamicLinear(nn.Module):
    """Drop-in for a CPU ``nn.Linear`` (any float input dtype; output in the input's dtype).

    ``reduce_range`` quantizes activations to 7 bits; None decides per CPU (:func:`needs_reduced_range`). On
    the golden model 8-bit activations halve the logit error of 7-bit ones (0.17 vs 0.35).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, reduce_range: bool | None = None
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.reduce_range = needs_reduced_range() if reduce_range is None else reduce_range
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=torch.int8), requires_grad=False
        )
        self.weight_scale = nn.Parameter(
            torch.empty(out_features, 1, dtype=torch.float32), requires_grad=False
        )
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self._packed = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, reduce_range: bool | None = None) -> Int8DynamicLinear:
        """Quantize a float ``nn.Linear`` (its weight and bias are copied, not shared)."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, reduce_range)
        module.set_weight(*quantize_weight(linear.weight))
        if linear.bias is not None:
            module.bias.data = linear.bias.detach().to(torch.float32).clone()
        return module

    def set_weight(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        """Replace the int8 weight (out, in) and its float scale (out, 1)."""
        self.weight.data = weight.to(torch.int8)
        self.weight_scale.data = scale.to(torch.float32).reshape(self.out_features, 1)
        self._packed = None

    @property
    def is_packed(self) -> bool:
        return self._packed is not None

    def pack(self) -> None:
        """Build the kernel's packed weight and free the plain int8 copy (``state_dict`` rebuilds it)."""
        if self._packed is not None:
            return
        if self.weight.device.type != "cpu":
            raise ConfigError(
                f"int8-dynamic layers run on the CPU only (this one is on {self.weight.device}); load the "
                "checkpoint with device='cpu', or quantize the source checkpoint with fp8-dynamic or nf4 for a GPU"
            )
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        scales = self.weight_scale.detach().reshape(-1).to(torch.float64)
        bias = None if self.bias is None else self.bias.detach().to(torch.float32)
        with _quantized_tensor_warnings_silenced():
            qweight = torch._make_per_channel_quantized_tensor(self.weight.detach(), scales, zero_points, 0)
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.weight.data = torch.empty(0, dtype=torch.int8)

    def unpacked_weight(self) -> torch.Tensor:
        """The int8 weight (out, in), whether packed or not."""
        if self._packed is None:
            return self.weight.detach()
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr()

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this layer computes with (out, in)."""
        return self.unpacked_weight().to(torch.float32) * self.weight_scale.detach()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.pack()
        if hidden.device.type != "cpu":
            raise ConfigError(f"int8-dynamic layers run on the CPU only; got an input on {hidden.device}")
        output = torch.ops.quantized.linear_dynamic(hidden.to(torch.float32), self._packed, self.reduce_range)
        return output.to(hidden.dtype)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.unpacked_weight()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Loading replaces the weights: drop the packed copy and give `weight` its full shape back to load into.
        self._packed = None
        self.weight.data = torch.empty(self.out_features, self.in_features, dtype=torch.int8)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"reduce_range={self.reduce_range}, packed={self.is_packed}"
        )
