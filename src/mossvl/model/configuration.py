"""MOSS-VL configuration classes (vision tower, decoder, top level) with their consistency checks.

Field names and defaults are those of the official checkpoints (spec §2), so an official ``config.json`` loads
unchanged. RoPE settings follow transformers 5: the legacy ``rope_theta`` / ``rope_scaling`` keys of a
checkpoint's text config are folded into ``rope_parameters`` (``config.rope_scaling`` still reads it).
"""

import math

from transformers.configuration_utils import PreTrainedConfig

from ..errors import ConfigError

DEFAULT_CROSS_ATTENTION_LAYERS = list(range(2, 48, 4))
DEFAULT_ROPE_THETA = 5_000_000.0


def _default_rope_parameters() -> dict:
    return {
        "rope_type": "default",
        "rope_theta": DEFAULT_ROPE_THETA,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    }


class MossVLVisionConfig(PreTrainedConfig):
    """Vision tower: a 2D-RoPE ViT with DeepStack taps and one patch merger (spec §2.2, §3).

    ``out_hidden_size`` is the width of the merged vision tokens and must equal the decoder's ``hidden_size``.
    """

    model_type = "moss_vl_vision"
    base_config_key = "vision_config"

    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    in_channels: int = 3
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 1
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: list[int] | None = None
    out_hidden_size: int = 4096
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.deepstack_visual_indexes is None:
            self.deepstack_visual_indexes = [8, 16, 24]
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise ConfigError if the vision settings are inconsistent."""
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"vision_config: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        for index in self.deepstack_visual_indexes:
            if not 0 <= index < self.depth:
                raise ConfigError(
                    f"vision_config: deepstack_visual_indexes entry {index} is outside the {self.depth} blocks "
                    f"(valid: 0..{self.depth - 1})"
                )
        if len(set(self.deepstack_visual_indexes)) != len(self.deepstack_visual_indexes):
            raise ConfigError(
                f"vision_config: deepstack_visual_indexes {self.deepstack_visual_indexes} has duplicates"
            )
        side = math.isqrt(self.num_position_embeddings)
        if side * side != self.num_position_embeddings:
            raise ConfigError(
                f"vision_config: num_position_embeddings {self.num_position_embeddings} is not a perfect square "
                "(it must hold a square grid of learned position embeddings)"
            )


class MossVLTextConfig(PreTrainedConfig):
    """Decoder: a Qwen3-style stack whose layers at ``cross_attention_layers`` are gated cross-attention layers.

    ``rope_parameters`` holds the XRoPE settings: ``rope_theta``, ``mrope_section`` (pairs per t/h/w axis, summing
    to ``head_dim // 2``) and ``mrope_interleaved``.
    """

    model_type = "moss_vl_text"
    base_config_key = "text_config"
    default_theta = DEFAULT_ROPE_THETA
    ignore_keys_at_rope_validation = {"mrope_section", "mrope_interleaved"}

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 48
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 262144
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float | int = 0.0
    cross_attention_layers: list[int] | None = None
    cross_attention_implementation: str | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.cross_attention_layers is None:
            self.cross_attention_layers = list(DEFAULT_CROSS_ATTENTION_LAYERS)
        if self.rope_parameters is None and kwargs.get("rope_scaling") is None:
            self.rope_parameters = _default_rope_parameters()
        super().__post_init__(**kwargs)
        self.rope_parameters.setdefault("mrope_section", [24, 20, 20])
        self.rope_parameters.setdefault("mrope_interleaved", True)
        self.check()

    @property
    def rope_theta(self) -> float:
        """The RoPE base, kept in ``rope_parameters``; loaders written for transformers 4 (SGLang) read it here."""
        return (self.rope_parameters or {}).get("rope_theta", self.default_theta)

    def to_dict(self) -> dict:
        """The config with its RoPE settings also in the legacy ``rope_theta`` / ``rope_scaling`` fields, which the
        official checkpoints carry and transformers-4-era loaders (the official remote code, SGLang) read."""
        out = super().to_dict()
        legacy = dict(out.get("rope_parameters") or {})
        out["rope_theta"] = legacy.pop("rope_theta", self.default_theta)
        out["rope_scaling"] = legacy
        return out

    def check(self) -> None:
        """Raise ConfigError if the decoder settings are inconsistent."""
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"text_config: num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"text_config: head_dim {self.head_dim} must be even for rotary embeddings")
        section = self.rope_parameters.get("mrope_section")
        if len(section) != 3 or sum(section) != self.head_dim // 2:
            raise ConfigError(
                f"text_config: rope mrope_section {section} must have 3 entries (t, h, w) summing to "
                f"head_dim // 2 = {self.head_dim // 2}"
            )
        if not self.rope_parameters.get("mrope_interleaved", True):
            raise ConfigError("text_config: only interleaved MRoPE (mrope_interleaved=true) is supported")
        layers = self.cross_attention_layers
        for index in layers:
            if not 0 <= index < self.num_hidden_layers:
                raise ConfigError(
                    f"text_config: cross_attention_layers entry {index} is outside the {self.num_hidden_layers} "
                    f"decoder layers (valid: 0..{self.num_hidden_layers - 1})"
                )
        duplicates = sorted({index for index in layers if layers.count(index) > 1})
        if duplicates:
            raise ConfigError(f"text_config: cross_attention_layers repeats layer(s) {duplicates}")


class MossVLConfig(PreTrainedConfig):
    """Top-level MOSS-VL configuration (``model_type "moss_vl"``).

    ``cross_attention_implementation`` (None, "sdpa" or "eager") picks the kernel of the cross-attention layers
    only, as the official ``from_pretrained(..., cross_attention_implementation=...)`` option does; it is copied
    into ``text_config`` when the model is built.

    ``rotate_cross_query_in_decode`` selects the decode-time behaviour of the cross-attention query (spec §12.1):
    False (default) reproduces the official Hugging Face ``generate()`` outputs, which leave the query un-rotated
    in single-token decode steps; True rotates it as at prefill (SGLang / training semantics, equal to a full
    recompute).
    """

    model_type = "moss_vl"
    sub_configs_defaults = {"vision_config": MossVLVisionConfig, "text_config": MossVLTextConfig}
    keys_to_ignore_at_inference = ["past_key_values"]

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_seq_pad_multiple: int = 8
    tie_word_embeddings: bool = False
    use_cache: bool = True
    rotate_cross_query_in_decode: bool = False
    cross_attention_implementation: str | None = None

    def __post_init__(self, **kwargs):
        # An official config's `auto_map` (its remote-code files) is kept: after `import mossvl` the Auto classes
        # still pick this package's classes, and `save_pretrained` keeps it only when it can copy those files.
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise ConfigError if the vision tower and the decoder do not fit together."""
        if self.vision_config.out_hidden_size != self.text_config.hidden_size:
            raise ConfigError(
                f"vision_config.out_hidden_size {self.vision_config.out_hidden_size} must equal "
                f"text_config.hidden_size {self.text_config.hidden_size} (cross-attention reads vision tokens "
                "with the decoder's k/v projections)"
            )
        if self.vision_seq_pad_multiple < 1:
            raise ConfigError(f"vision_seq_pad_multiple must be >= 1, got {self.vision_seq_pad_multiple}")


__all__ = ["MossVLConfig", "MossVLTextConfig", "MossVLVisionConfig"]
