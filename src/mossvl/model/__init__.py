"""MOSS-VL model: config, vision encoder, XRoPE, cross-attention masks, text decoder and the top-level model."""

from .cache import MossVLCache
from .configuration import MossVLConfig, MossVLTextConfig, MossVLVisionConfig
from .modeling import MossVLForConditionalGeneration, MossVLModel, MossVLPreTrainedModel
from .text import MossVLTextModel
from .vision import MossVLVisionModel

__all__ = [
    "MossVLCache",
    "MossVLConfig",
    "MossVLForConditionalGeneration",
    "MossVLModel",
    "MossVLPreTrainedModel",
    "MossVLTextConfig",
    "MossVLTextModel",
    "MossVLVisionConfig",
    "MossVLVisionModel",
]
