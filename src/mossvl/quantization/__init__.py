"""Weight quantization of MOSS-VL checkpoints: the official recipes (FP8-dynamic, NF4 keep-ends) and int8-dynamic for
CPUs, their layer scope and count checks, and the checks and CPU conversion used when loading quantized checkpoints.

Importing this package is cheap: compressed-tensors and bitsandbytes are imported only by the methods that use them.
"""

from .checkpoint import METHODS, quantize_checkpoint
from .int8_linear import Int8DynamicLinear
from .int8_quantizer import INT8_DYNAMIC_METHOD, MossVLInt8DynamicConfig
from .int8_quantizer import register as register_quantizers
from .loading import (
    QuantizedCacheWarning,
    adapt_quantized_model,
    check_kv_cache_packaging,
    check_quantized_checkpoint,
    packaged_kv_cache_dtype,
    run_decompression_hook,
)

__all__ = [
    "INT8_DYNAMIC_METHOD",
    "Int8DynamicLinear",
    "METHODS",
    "MossVLInt8DynamicConfig",
    "QuantizedCacheWarning",
    "adapt_quantized_model",
    "check_kv_cache_packaging",
    "check_quantized_checkpoint",
    "packaged_kv_cache_dtype",
    "quantize_checkpoint",
    "register_quantizers",
    "run_decompression_hook",
]
