"""The SGLang plugin: lets ``python -m sglang.launch_server --model-path CKPT`` serve MOSS-VL checkpoints
without their remote-code files.

SGLang runs every function of the ``sglang.srt.plugins`` entry-point group (declared in ``pyproject.toml``) early
in each of its processes (server, tokenizer manager, schedulers, detokenizer). Its own MOSS-VL model class reads
the checkpoint's config and calls its processor through transformers' ``AutoConfig`` / ``AutoProcessor``, so
registering ``moss_vl`` there, which ``import mossvl`` does, is all the plugin has to do.
"""

from __future__ import annotations


def register() -> None:
    """Register ``moss_vl``'s config, model, processor and image processor with transformers' Auto classes
    (idempotent; SGLang ignores the return value)."""
    import mossvl  # noqa: F401 - importing the package registers the classes
