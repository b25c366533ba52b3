"""Open, fast, weight-compatible Python implementation of MOSS-VL.

Importing the package is cheap: the public names below load their modules (and torch, transformers) on first use,
so that ``mossvl --help`` or a CLI error does not pay for them. Registering the model with transformers' Auto classes
(``register``) happens at import when transformers is already loaded, else as soon as it is.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# libgomp (torch's OpenMP) reads this once, when torch loads it, so it must be set before torch is imported. Its
# default (spin, then sleep) costs ~8 ms per parallel region on cores shared with other processes whenever the
# spinning partner thread was preempted: most of a decode step's time there (benchmarks/bench_roofline.py). A
# value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
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

# Public name -> the module that defines it.
_LAZY_NAMES = {
    "batch_chat": "mossvl.inference.api",
    "chat": "mossvl.inference.api",
    "load": "mossvl.inference.api",
    "new_session": "mossvl.inference.api",
    "EngineConfig": "mossvl.inference.core",
    "Engine": "mossvl.inference.engine",
    "Session": "mossvl.inference.session",
    "MossVLConfig": "mossvl.model",
    "MossVLForConditionalGeneration": "mossvl.model",
    "MossVLModel": "mossvl.model",
    "MossVLTextConfig": "mossvl.model",
    "MossVLVisionConfig": "mossvl.model",
    "MossVLImageProcessor": "mossvl.processing.image",
    "MossVLProcessor": "mossvl.processing.processor",
}

try:
    __version__ = version("mossvl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'mossvl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    register()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


_registration = {"done": False, "running": False}


def register() -> None:
    """Register the model types with transformers' Auto classes (safe to call more than once).

    This lets the Auto classes load official checkpoint folders (model_type "moss_vl") with this package's code,
    without trust_remote_code, even though their config.json names remote code; it also teaches transformers the
    ``mossvl-int8-dynamic`` quantization method. Importing ``mossvl`` arranges for it (see the module docstring).
    """
    if _registration["done"] or _registration["running"]:
        return
    _registration["running"] = True
    try:
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoModelForMultimodalLM,
            AutoProcessor,
        )

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

        AutoConfig.register(MossVLConfig.model_type, MossVLConfig, exist_ok=True)
        AutoConfig.register(MossVLTextConfig.model_type, MossVLTextConfig, exist_ok=True)
        AutoConfig.register(MossVLVisionConfig.model_type, MossVLVisionConfig, exist_ok=True)
        AutoModel.register(MossVLConfig, MossVLModel, exist_ok=True)
        for auto_class in (AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM):
            auto_class.register(MossVLConfig, MossVLForConditionalGeneration, exist_ok=True)
        AutoProcessor.register(MossVLConfig, MossVLProcessor, exist_ok=True)
        AutoImageProcessor.register(
            MossVLConfig,
            image_processor_classes={"pil": MossVLImageProcessor, "torchvision": MossVLImageProcessor},
            exist_ok=True,
        )
        register_quantizers()
        _registration["done"] = True
    finally:
        _registration["running"] = False
    if _REGISTRAR in sys.meta_path:
        sys.meta_path.remove(_REGISTRAR)


def _initializing(name: str) -> bool:
    """Whether module ``name`` is halfway through its import (importlib marks its spec meanwhile)."""
    module = sys.modules.get(name)
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_when_ready(finished: str) -> None:
    """Register once transformers is imported and no mossvl module but ``finished`` is halfway through its import."""
    if "transformers" not in sys.modules:
        return
    if not any(
        _initializing(name) for name in list(sys.modules) if name.startswith("mossvl.") and name != finished
    ):
        register()


class _NotifyingLoader:
    """A module's own loader, that calls ``_register_when_ready`` after executing the module."""

    def __init__(self, loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register_when_ready(self._name)

    def __getattr__(self, attribute: str):
        return getattr(self._loader, attribute)


class _RegisterAfterImport:
    """Import hook that registers once transformers is imported and no mossvl module is halfway through its own
    import: transformers is often first imported by one of them, and registering then would import this package's
    modules while they are incomplete. So every import of transformers or of a mossvl module retries when it
    completes, until registration is done (``register`` then removes the hook)."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "transformers" and not name.startswith("mossvl."):
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    if hasattr(spec.loader, "exec_module"):
                        spec.loader = _NotifyingLoader(spec.loader, name)
                    return spec
        return None


_REGISTRAR = _RegisterAfterImport()
if "transformers" in sys.modules:
    register()
else:
    sys.meta_path.insert(0, _REGISTRAR)

__all__ = [
    "Engine",
    "EngineConfig",
    "MossVLConfig",
    "MossVLForConditionalGeneration",
    "MossVLImageProcessor",
    "MossVLModel",
    "MossVLProcessor",
    "MossVLTextConfig",
    "MossVLVisionConfig",
    "Session",
    "__version__",
    "batch_chat",
    "chat",
    "load",
    "new_session",
    "register",
]
