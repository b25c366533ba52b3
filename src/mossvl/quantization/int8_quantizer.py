"""The int8-dynamic quantization method as a transformers quantizer (``quant_method "mossvl-int8-dynamic"``).

Once :func:`register` has run, ``from_pretrained`` loads a checkpoint whose ``config.json`` holds this
``quantization_config`` straight into :class:`Int8DynamicLinear` layers, and quantizes a float checkpoint on the
fly when given ``quantization_config=MossVLInt8DynamicConfig()``; ``save_pretrained`` writes the int8 form back.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.quantizers_utils import get_module_from_name
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import ConfigError
from .int8_linear import Int8DynamicLinear, quantize_weight
from .scope import EXTENTS, check_linear_targets, dense_targets, layer_scope

INT8_DYNAMIC_METHOD = "mossvl-int8-dynamic"
CPU_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


class MossVLInt8DynamicConfig(QuantizationConfigMixin):
    """int8 weights per output channel, int8 activations quantized at each call (CPU only).

    ``targets``: full module names of the quantized linears; None picks them from the model's config with
    ``scope`` (see :mod:`mossvl.quantization.scope`; ``official`` by default, None when only ``targets`` says
    what was quantized). ``reduce_range``: 7-bit activations; None (default) decides on the CPU that loads the
    checkpoint (see :class:`Int8DynamicLinear`).
    """

    def __init__(
        self,
        targets: list[str] | None = None,
        scope: str | None = "official",
        reduce_range: bool | None = None,
        **kwargs: Any,
    ):
        if (scope is None and targets is None) or (scope is not None and scope not in EXTENTS):
            raise ConfigError(f"unknown scope {scope!r}; choose one of {list(EXTENTS)}")
        self.quant_method = INT8_DYNAMIC_METHOD
        self.targets = list(targets) if targets is not None else None
        self.scope = scope
        self.reduce_range = reduce_range
        self.weights = {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True}
        self.input_activations = {"num_bits": 8, "type": "int", "strategy": "tensor", "dynamic": True}


class _QuantizeInt8(ConversionOps):
    """Load-time op of on-the-fly quantization: a float ``weight`` becomes ``weight`` (int8) + ``weight_scale``."""

    def __init__(self, hf_quantizer: HfQuantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict: dict[str, Any], **kwargs: Any) -> dict[str, torch.Tensor]:
        key, value = next(iter(input_dict.items()))
        weight, scale = quantize_weight(value[0] if isinstance(value, list) else value)
        return {key: weight, f"{key}_scale": scale}


class MossVLInt8DynamicQuantizer(HfQuantizer):
    """Swaps the target linears for :class:`Int8DynamicLinear` before the weights load, packs them after."""

    requires_calibration = False
    quantization_config: MossVLInt8DynamicConfig

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        device_map = kwargs.get("device_map")
        devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
        allowed = {"None", "cpu"} | (set() if torch.cuda.is_available() else {"auto"})
        if {str(device) for device in devices} - allowed:
            raise ConfigError(
                f"int8-dynamic checkpoints run on the CPU only (device_map {device_map!r}); load with "
                "device='cpu', or quantize the source checkpoint with fp8-dynamic or nf4 for a GPU"
            )
        if not set(CPU_ENGINES) & set(torch.backends.quantized.supported_engines):
            raise ConfigError(
                "this torch build has no CPU quantized-kernel engine (supported: "
                f"{torch.backends.quantized.supported_engines}); int8-dynamic needs one of {list(CPU_ENGINES)}"
            )

    def _process_model_before_weight_loading(self, model, **kwargs: Any) -> None:
        config = self.quantization_config
        if config.targets is None:
            config.targets = dense_targets(layer_scope(model.config.get_text_config()), config.scope)
        check_linear_targets(model, config.targets)
        for name in config.targets:
            linear = model.get_submodule(name)
            with torch.device("meta"):
                layer = Int8DynamicLinear(
                    linear.in_features, linear.out_features, linear.bias is not None, config.reduce_range
                )
            model.set_submodule(name, layer)

    def param_needs_quantization(self, model, param_name: str, **kwargs: Any) -> bool:
        module, tensor_name = get_module_from_name(model, param_name)
        return not self.pre_quantized and isinstance(module, Int8DynamicLinear) and tensor_name == "weight"

    def get_quantize_ops(self) -> ConversionOps:
        return _QuantizeInt8(self)

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        # Packing now rather than at the first forward keeps the first answer's latency honest.
        for module in model.modules():
            if isinstance(module, Int8DynamicLinear):
                module.pack()
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Teach transformers the ``mossvl-int8-dynamic`` method (safe to call more than once)."""
    if INT8_DYNAMIC_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(INT8_DYNAMIC_METHOD)(MossVLInt8DynamicConfig)
    if INT8_DYNAMIC_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(INT8_DYNAMIC_METHOD)(MossVLInt8DynamicQuantizer)
