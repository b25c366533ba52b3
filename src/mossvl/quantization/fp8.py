"""FP8-dynamic in the official format: compressed-tensors' preset scheme ``FP8_DYNAMIC``.

Weights are FP8 e4m3 with one static scale per output channel (``weight`` + ``weight_scale`` per linear), and
activations are quantized to FP8 per token at run time, so no calibration data is needed. compressed-tensors
attaches the scheme, compresses the weights and writes ``quantization_config`` (quant_method
"compressed-tensors", format "float-quantized", ``targets: ["Linear"]`` and the unquantized linears listed
under ``ignore``), which is what the official llmcompressor recipe produces and what transformers, vLLM and
SGLang read. This module also turns such a model into int8-dynamic layers for the CPU (see :func:`to_int8_dynamic`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .int8_linear import Int8DynamicLinear

FP8_SCHEME = "FP8_DYNAMIC"


def require_compressed_tensors() -> None:
    """Raise ConfigError naming the install command when compressed-tensors is missing."""
    try:
        import compressed_tensors  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "FP8 (compressed-tensors) checkpoints need the compressed-tensors package: "
            "pip install 'mossvl[quant]'"
        ) from exc


def quantize_fp8_dynamic(model: nn.Module, targets: Sequence[str]):
    """Quantize the ``targets`` linears of ``model`` in place (compressed: FP8 weights + scales) and return the
    compressed-tensors ``ModelCompressor`` whose ``update_config(folder)`` writes the ``quantization_config``."""
    require_compressed_tensors()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    wanted = set(targets)
    ignore = [
        name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in wanted
    ]
    config = QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme(FP8_SCHEME, ["Linear"])}, ignore=ignore
    )
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        for module in quantized_modules(model).values():
            # The weight observer of a calibration-free recipe: the per-channel min/max of the weight itself.
            weight = module.weight
            scale, zero_point = calculate_qparams(
                weight.amin(dim=1, keepdim=True),
                weight.amax(dim=1, keepdim=True),
                module.quantization_scheme.weights,
            )
            module.weight_scale.copy_(scale)
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(zero_point)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    return compressor


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that carry a compressed-tensors quantization scheme, by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if getattr(module, "quantization_scheme", None) is not None
    }


def to_int8_dynamic(model: nn.Module, reduce_range: bool | None = None) -> list[str]:
    """Replace every compressed-tensors linear of a loaded FP8 model by an :class:`Int8DynamicLinear` holding
    the same weights (dequantized by compressed-tensors, requantized per channel to int8); returns their names.

    The model's quantization config and quantizer become int8-dynamic ones, so ``save_pretrained`` writes an
    int8-dynamic checkpoint rather than FP8 metadata over int8 weights.
    """
    from compressed_tensors.compressors.base import decompress_module
    from compressed_tensors.quantization import QuantizationStatus

    from .int8_quantizer import MossVLInt8DynamicConfig, MossVLInt8DynamicQuantizer

    names = []
    for name, module in quantized_modules(model).items():
        if not isinstance(module, nn.Linear):
            continue
        # One module at a time, so that at most one linear is ever held dense. A forward pass may already have
        # decompressed the model (compressed-tensors does so on the first call).
        if module.quantization_status == QuantizationStatus.COMPRESSED:
            decompress_module(module)
        layer = Int8DynamicLinear.from_linear(module, reduce_range)
        layer.pack()
        model.set_submodule(name, layer)
        names.append(name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.compressor.remove_decompression_hook(model)
        quantizer.remove_quantization_config(model)
    config = MossVLInt8DynamicConfig(targets=names, scope=None, reduce_range=reduce_range)
    model.config.quantization_config = config
    model.hf_quantizer = MossVLInt8DynamicQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = config.quant_method
    return names
