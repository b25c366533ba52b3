"""Open, fast, weight-compatible Python implementation of MOSS-VL."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
)

from .inference.api import batch_chat, chat, load, new_session
from .inference.session import Session
from .model import (
    MossVLConfig,
    MossVLForConditionalGeneration,
    MossVLModel,
    MossVLTextConfig,
    MossVLVisionConfig,
)

# Registering the model types lets transformers' Auto classes load official checkpoint folders (model_type
# "moss_vl") with our code, without trust_remote_code, even though their config.json names remote code.
AutoConfig.register(MossVLConfig.model_type, MossVLConfig, exist_ok=True)
AutoConfig.register(MossVLTextConfig.model_type, MossVLTextConfig, exist_ok=True)
AutoConfig.register(MossVLVisionConfig.model_type, MossVLVisionConfig, exist_ok=True)
AutoModel.register(MossVLConfig, MossVLModel, exist_ok=True)
AutoModelForCausalLM.register(MossVLConfig, MossVLForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MossVLConfig, MossVLForConditionalGeneration, exist_ok=True)

__all__ = [
    "MossVLConfig",
    "MossVLForConditionalGeneration",
    "MossVLModel",
    "Session",
    "batch_chat",
    "chat",
    "load",
    "new_session",
]
