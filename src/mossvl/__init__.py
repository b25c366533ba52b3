"""Open, fast, weight-compatible Python implementation of MOSS-VL."""

from importlib.metadata import PackageNotFoundError, version

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
)

from .inference.api import batch_chat, chat, load, new_session
from .inference.core import EngineConfig
from .inference.engine import Engine
from .inference.session import Session
from .model import (
    MossVLConfig,
    MossVLForConditionalGeneration,
    MossVLModel,
    MossVLTextConfig,
    MossVLVisionConfig,
)
from .processing.image import MossVLImageProcessor
from .processing.processor import MossVLProcessor
from .quantization import register_quantizers

try:
    __version__ = version("mossvl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Registering the model types lets transformers' Auto classes load official checkpoint folders (model_type
# "moss_vl") with our code, without trust_remote_code, even though their config.json names remote code.
AutoConfig.register(MossVLConfig.model_type, MossVLConfig, exist_ok=True)
AutoConfig.register(MossVLTextConfig.model_type, MossVLTextConfig, exist_ok=True)
AutoConfig.register(MossVLVisionConfig.model_type, MossVLVisionConfig, exist_ok=True)
AutoModel.register(MossVLConfig, MossVLModel, exist_ok=True)
for _auto_class in (AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM):
    _auto_class.register(MossVLConfig, MossVLForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MossVLConfig, MossVLProcessor, exist_ok=True)
AutoImageProcessor.register(
    MossVLConfig,
    image_processor_classes={"pil": MossVLImageProcessor, "torchvision": MossVLImageProcessor},
    exist_ok=True,
)
register_quantizers()

__all__ = [
    "Engine",
    "EngineConfig",
    "MossVLConfig",
    "MossVLForConditionalGeneration",
    "MossVLImageProcessor",
    "MossVLModel",
    "MossVLProcessor",
    "Session",
    "__version__",
    "batch_chat",
    "chat",
    "load",
    "new_session",
]
