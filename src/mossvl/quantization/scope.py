"""Which linears a quantization method touches, read from the checkpoint's ``text_config``, and the count checks.

The official recipes (spec reference-features §4.1) fix the scope:

* FP8-dynamic (and our int8-dynamic): q/k/v/o and gate/up/down of every self-attention decoder layer, i.e.
  7 × (number of self-attention layers), 252 for the 11B. The vision tower, the merger, every cross-attention
  layer, the embeddings, the norms and ``lm_head`` stay in 16-bit.
* NF4 keep-ends: the language layers minus the first and last ``keep_end_layers``; in the middle layers every
  self-attention layer loses its 7 linears and every cross-attention layer its 3 MLP linears (its ``cross_attn``
  projections stay 16-bit), i.e. 7 × middle self + 3 × middle cross, 240 for the 11B with 4 kept at each end.

Wider extents for CPUs, where decoding reads every weight once per token: ``official+lm_head`` adds ``lm_head``
(on the demo model it costs no accuracy), ``decoder+lm_head`` also the cross-attention layers' 7 linears (on the
demo model that costs 68 points of temporal accuracy: the cross layers are the sensitive part, and the official
recipes keep them in 16-bit). The module names are the checkpoint's key prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import CheckpointError, ConfigError

LAYERS_PREFIX = "model.language_model.layers"
LM_HEAD = "lm_head"
SELF_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
CROSS_ATTENTION = ("cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
EXTENTS = ("official", "official+lm_head", "decoder+lm_head")
DEFAULT_KEEP_END_LAYERS = 4


@dataclass(frozen=True)
class LayerScope:
    """The decoder's layer layout: ``num_layers`` layers, of which ``cross_layers`` are cross-attention layers."""

    num_layers: int
    cross_layers: tuple[int, ...]

    @property
    def self_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in self.cross_layers)


def layer_scope(
    text_config, num_layers: int | None = None, cross_layers: Sequence[int] | None = None
) -> LayerScope:
    """The layer layout of ``text_config``. ``num_layers`` / ``cross_layers`` (the official scripts' ``--num-layers``
    / ``--cross-layers``) state what the caller expects: a checkpoint that disagrees is refused, so that a recipe
    meant for one layout never silently quantizes another."""
    scope = LayerScope(
        int(text_config.num_hidden_layers), tuple(sorted(int(i) for i in text_config.cross_attention_layers))
    )
    if num_layers is not None and num_layers != scope.num_layers:
        raise ConfigError(
            f"unexpected scope: --num-layers {num_layers} but the checkpoint's text_config.num_hidden_layers is "
            f"{scope.num_layers}"
        )
    if cross_layers is not None and tuple(sorted(cross_layers)) != scope.cross_layers:
        raise ConfigError(
            f"unexpected scope: --cross-layers {sorted(cross_layers)} but the checkpoint's "
            f"text_config.cross_attention_layers is {list(scope.cross_layers)}"
        )
    if not scope.self_layers:
        raise ConfigError("unexpected scope: the decoder has no self-attention layer to quantize")
    return scope


def dense_targets(scope: LayerScope, extent: str = "official") -> list[str]:
    """Module names that FP8-dynamic and int8-dynamic quantize, in layer order (see the module docstring)."""
    if extent not in EXTENTS:
        raise ConfigError(f"unknown scope {extent!r}; choose one of {list(EXTENTS)}")
    names = []
    for i in range(scope.num_layers):
        if i not in scope.cross_layers:
            names += [f"{LAYERS_PREFIX}.{i}.{name}" for name in SELF_ATTENTION + MLP]
        elif extent == "decoder+lm_head":
            names += [f"{LAYERS_PREFIX}.{i}.{name}" for name in CROSS_ATTENTION + MLP]
    if extent != "official":
        names.append(LM_HEAD)
    return names


def expected_dense_count(scope: LayerScope, extent: str = "official") -> int:
    """The official count (7 per self-attention layer), plus lm_head and 7 per cross layer for wider extents."""
    count = 7 * len(scope.self_layers)
    if extent == "decoder+lm_head":
        count += 7 * len(scope.cross_layers)
    return count + (extent != "official")


def keep_ends_middle(scope: LayerScope, keep_end_layers: int) -> range:
    """The layers NF4 keep-ends quantizes: all but the first and last ``keep_end_layers``."""
    if keep_end_layers < 0:
        raise ConfigError(f"--keep-end-layers must be >= 0, got {keep_end_layers}")
    middle = range(keep_end_layers, scope.num_layers - keep_end_layers)
    if not any(i not in scope.cross_layers for i in middle):
        raise ConfigError(
            f"unexpected scope: keeping {keep_end_layers} layers at each end of {scope.num_layers} leaves no "
            "self-attention layer to quantize"
        )
    return middle


def keep_ends_targets(scope: LayerScope, keep_end_layers: int = DEFAULT_KEEP_END_LAYERS) -> list[str]:
    """Module names that NF4 keep-ends quantizes."""
    names = []
    for i in keep_ends_middle(scope, keep_end_layers):
        kept = MLP if i in scope.cross_layers else SELF_ATTENTION + MLP
        names += [f"{LAYERS_PREFIX}.{i}.{name}" for name in kept]
    return names


def expected_keep_ends_count(scope: LayerScope, keep_end_layers: int = DEFAULT_KEEP_END_LAYERS) -> int:
    """The official NF4 count: 7 × middle self-attention layers + 3 × middle cross-attention layers."""
    middle = keep_ends_middle(scope, keep_end_layers)
    crosses = sum(i in scope.cross_layers for i in middle)
    return 7 * (len(middle) - crosses) + 3 * crosses


def keep_ends_skipped(scope: LayerScope, keep_end_layers: int = DEFAULT_KEEP_END_LAYERS) -> list[str]:
    """Module-name prefixes NF4 keep-ends leaves in 16-bit (bitsandbytes' ``llm_int8_skip_modules``)."""
    middle = keep_ends_middle(scope, keep_end_layers)
    ends = [f"{LAYERS_PREFIX}.{i}" for i in range(scope.num_layers) if i not in middle]
    crosses = [f"{LAYERS_PREFIX}.{i}.cross_attn" for i in middle if i in scope.cross_layers]
    return ["model.visual", LM_HEAD, *ends, *crosses]


def check_linear_targets(model: nn.Module, targets: Sequence[str]) -> None:
    """Raise CheckpointError unless every target names an ``nn.Linear`` of ``model``."""
    modules = dict(model.named_modules())
    missing = [name for name in targets if name not in modules]
    if missing:
        raise CheckpointError(
            f"unexpected scope: the model has no module {missing[0]!r} ({len(missing)} of {len(targets)} "
            "quantization targets are missing); is this a MOSS-VL checkpoint?"
        )
    wrong = [name for name in targets if not isinstance(modules[name], nn.Linear)]
    if wrong:
        raise CheckpointError(
            f"unexpected scope: {wrong[0]!r} is a {type(modules[wrong[0]]).__name__}, not a Linear"
        )


def check_count(quantized: Sequence[str], expected: int, what: str) -> None:
    """The official guard: abort unless exactly ``expected`` linears were quantized."""
    if len(quantized) != expected:
        raise CheckpointError(
            f"unexpected scope: {what} quantized {len(quantized)} linears, expected {expected}; nothing was written"
        )
