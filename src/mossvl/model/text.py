"""The MOSS-VL decoder (``model.language_model``): Qwen3-style self-attention layers and gated cross-attention layers.

Spec §5. Layers listed in ``cross_attention_layers`` replace self-attention by tanh-gated cross-attention to the
vision memory; every other layer is a plain Qwen3 decoder layer. Attention goes through transformers' attention
registry (``config._attn_implementation``): sdpa, eager, or flash attention for the self-attention layers (the
cross layers use sdpa then, as they need an arbitrary mask); under sdpa, one-token queries on the CPU (decode steps)
use ``single_query_attention``.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

from .cache import MossVLCache, VisionAppend
from .compat import CACHE_FIELD
from .configuration import MossVLTextConfig
from .linear import Linear
from .xrope import MossVLTextRotaryEmbedding, apply_rotary


class MossVLTextRMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype before the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused kernel, bitwise equal to the lines below in float32 (not in 16-bit dtypes, whose rounding
            # before the weight the official code has).
            return nn.functional.rms_norm(hidden, self.weight.shape, self.weight, self.variance_epsilon)
        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden.to(dtype)


class MossVLTextMLP(nn.Module):
    def __init__(self, config: MossVLTextConfig):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(hidden)) * self.up_proj(hidden))


def apply_attention_mask(scores: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention scores with a mask applied: bool (True = attend) masks fill the rest with the dtype's minimum,
    float masks are added."""
    if attention_mask is None:
        return scores
    if attention_mask.dtype == torch.bool:
        return scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    return scores + attention_mask


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: q (B, H, L, D), k/v (B, Hkv, S, D), mask bool (True = attend) or additive."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, L, S)
    scores = apply_attention_mask(scores, attention_mask)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, L, H, D)
    return output, weights


def single_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Attention of one query token per row with plain matmuls: q (B, H, 1, D) over k / v (B, Hkv, S, D), mask
    (B, 1, 1, S) bool (True = attend) or additive → (B, 1, H, D).

    The query heads of each KV group are the rows of one product, so K/V are read once and never repeated. On the
    CPU this replaces SDPA in decode steps: its kernels have a fixed cost per call (about 0.5 ms on two cores, most
    of a decode step's attention) and its ``enable_gqa`` path for one query is slower still.
    """
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim) * scaling
    scores = torch.matmul(grouped, key.transpose(2, 3))  # (B, Hkv, groups, S)
    scores = apply_attention_mask(scores, attention_mask)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(weights, value).reshape(batch, 1, heads, dim)


CROSS_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def _attention_implementation(config: MossVLTextConfig, cross: bool) -> str | None:
    """The kernel of a layer: ``cross_attention_implementation`` for cross layers when set, else the model's
    implementation, except that cross layers use SDPA under flash attention (it cannot take their mask)."""
    implementation = config._attn_implementation
    if cross:
        implementation = config.cross_attention_implementation or (
            implementation if implementation in ("eager", "flex_attention") else "sdpa"
        )
    return implementation


@dataclass
class CrossAttentionInputs:
    """Everything a cross layer needs in one forward, computed once by the model.

    ``states`` (B, Lnew, H): new vision memory brought by this forward (None: read the cache only);
    ``cos`` / ``sin``: its XRoPE tables. ``mask`` (B, 1, L, Lv) additive mask over the whole memory and ``rows``
    (B, L, 1) the row mask (spec §7); both None when every token sees the whole memory. ``sees_vision``: some token
    sees a frame (else every cross layer is an identity). ``plan``: where the new memory goes in the cache.
    ``rotate_query``: apply XRoPE to the query.
    """

    states: torch.Tensor | None
    cos: torch.Tensor | None
    sin: torch.Tensor | None
    mask: torch.Tensor | None
    rows: torch.Tensor | None
    sees_vision: bool
    plan: VisionAppend | None
    rotate_query: bool


class _GroupedQueryAttention(nn.Module):
    """What self- and cross-attention share: GQA q/k/v/o projections, a per-head RMSNorm for q and k, and the
    call of the configured attention kernel. Subclasses set ``is_causal``."""

    is_causal: bool

    def __init__(self, config: MossVLTextConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim**-0.5
        bias = config.attention_bias
        self.q_proj = Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = MossVLTextRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = MossVLTextRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def heads(self, states: torch.Tensor, proj: nn.Linear, norm: nn.Module | None = None) -> torch.Tensor:
        """States (B, L, H) through ``proj`` (then ``norm`` per head) → (B, heads, L, D)."""
        batch, length, _ = states.shape
        states = proj(states).view(batch, length, -1, self.head_dim)
        return (states if norm is None else norm(states)).transpose(1, 2)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """q (B, H, L, D) over k / v (B, Hkv, S, D), then o_proj → (B, L, hidden)."""
        implementation = _attention_implementation(self.config, cross=not self.is_causal)
        batch, _, length, _ = q.shape
        if length == 1 and implementation == "sdpa" and q.device.type == "cpu" and not self.training:
            output = single_query_attention(q, k, v, attention_mask, self.scaling)
        else:
            attend = eager_attention_forward
            if implementation not in (None, "eager"):
                attend = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
            # No position_ids here: XRoPE positions jump at images, which must not look like packed sequences.
            output, _ = attend(
                self,
                q,
                k,
                v,
                attention_mask,
                dropout=self.config.attention_dropout if self.training else 0.0,
                scaling=self.scaling,
                is_causal=self.is_causal,
            )
        return self.o_proj(output.reshape(batch, length, -1))


class MossVLTextAttention(_GroupedQueryAttention):
    """Causal GQA self-attention; q_norm / k_norm per head before XRoPE (spec §5.1)."""

    is_causal = True

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: MossVLCache | None,
    ) -> torch.Tensor:
        q = self.heads(hidden, self.q_proj, self.q_norm)
        k = self.heads(hidden, self.k_proj, self.k_norm)
        v = self.heads(hidden, self.v_proj)  # (B, Hkv, L, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        return self.attend(q, k, v, attention_mask)


class MossVLTextCrossAttention(_GroupedQueryAttention):
    """Text-to-vision GQA attention: q_norm then XRoPE on text queries, k_norm then XRoPE on vision keys, plain v."""

    is_causal = False

    def vision_key_values(
        self, states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, Hkv, Lv, D) of vision memory states (B, Lv, H)."""
        k = self.heads(states, self.k_proj, self.k_norm)
        return apply_rotary(k, cos, sin), self.heads(states, self.v_proj)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        rotate_query: bool,
        keys: torch.Tensor,
        values: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        q = self.heads(hidden, self.q_proj, self.q_norm)
        if rotate_query:
            q = apply_rotary(q, cos, sin)
        return self.attend(q, keys, values, attention_mask)


class MossVLSelfAttentionDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: MossVLTextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MossVLTextAttention(config, layer_idx)
        self.mlp = MossVLTextMLP(config)
        self.input_layernorm = MossVLTextRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MossVLTextRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: MossVLCache | None,
        cross: CrossAttentionInputs | None,
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, attention_mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class MossVLCrossAttentionDecoderLayer(GradientCheckpointingLayer):
    """Gated cross-attention layer (spec §5.2): no self-attention; the row mask zeroes both residual branches."""

    def __init__(self, config: MossVLTextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.cross_attn = MossVLTextCrossAttention(config, layer_idx)
        self.mlp = MossVLTextMLP(config)
        self.input_layernorm = MossVLTextRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MossVLTextRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.cross_attn_attn_gate = nn.Parameter(torch.zeros(1))
        self.cross_attn_mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: MossVLCache | None,
        cross: CrossAttentionInputs | None,
    ) -> torch.Tensor:
        if cross is None:
            return hidden
        # When no token sees a frame the layer is an exact identity and is skipped; training still runs it (the row
        # mask zeroes it), so that data-parallel ranks always compute gradients for the same weights.
        skip = not cross.sees_vision and not self.training
        stores_memory = cross.states is not None and cache is not None
        if skip and not stores_memory:
            return hidden
        keys, values = self._memory(cross, cache)
        if skip:
            return hidden
        attended = self.cross_attn(
            self.input_layernorm(hidden), cos, sin, cross.rotate_query, keys, values, cross.mask
        )
        if cross.rows is not None:
            attended = cross.rows * attended
        hidden = hidden + self.cross_attn_attn_gate.tanh() * attended
        mlp_out = self.mlp(self.post_attention_layernorm(hidden))
        if cross.rows is not None:
            mlp_out = cross.rows * mlp_out
        return hidden + self.cross_attn_mlp_gate.tanh() * mlp_out

    def _memory(
        self, cross: CrossAttentionInputs, cache: MossVLCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision keys/values to attend to: new ones (also appended to the cache) or the cached ones."""
        if cross.states is None:
            return cache.cached_vision(self.layer_idx)
        keys, values = self.cross_attn.vision_key_values(cross.states, cross.cos, cross.sin)
        if cache is None:
            return keys, values
        return cache.append_vision(self.layer_idx, keys, values, cross.plan)


@torch.no_grad()
def init_text_weights(module: nn.Module) -> None:
    """Decoder-specific initialisation on top of PreTrainedModel's generic one (Linear, Embedding, norms).

    Cross-layer gates start at 0, so a fresh cross layer is an identity; the rotary frequencies are recomputed
    (a model built on the meta device has none).
    """
    if isinstance(module, MossVLTextRotaryEmbedding):
        init.copy_(module.inv_freq, module.compute_inv_freq(module.inv_freq.device))
    elif isinstance(module, MossVLCrossAttentionDecoderLayer):
        init.zeros_(module.cross_attn_attn_gate)
        init.zeros_(module.cross_attn_mlp_gate)


class MossVLTextPreTrainedModel(PreTrainedModel):
    config_class = MossVLTextConfig
    config: MossVLTextConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MossVLSelfAttentionDecoderLayer", "MossVLCrossAttentionDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_text_weights(module)


class MossVLTextModel(MossVLTextPreTrainedModel):
    """Embeddings, the 48-layer mixed decoder stack and the final norm (``model.language_model``)."""

    def __init__(self, config: MossVLTextConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        cross_layers = set(config.cross_attention_layers)
        self.layers = nn.ModuleList(
            (MossVLCrossAttentionDecoderLayer if i in cross_layers else MossVLSelfAttentionDecoderLayer)(
                config, i
            )
            for i in range(config.num_hidden_layers)
        )
        self.norm = MossVLTextRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = MossVLTextRotaryEmbedding(config)
        self.first_self_layer = next((i for i in range(config.num_hidden_layers) if i not in cross_layers), 0)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: MossVLCache | None = None,
        cross: CrossAttentionInputs | None = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPast:
        """Run the decoder over one chunk of text.

        ``position_ids`` (3, B, L) are XRoPE text positions (plain consecutive positions after the cached ones when
        None); ``attention_mask`` is the 2D padding mask over cached + new tokens, or a ready 4D mask (B, 1, L, S);
        ``cross`` carries the vision memory inputs (None: every cross layer is skipped).
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length, _ = inputs_embeds.shape
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            steps = torch.arange(past, past + length, device=inputs_embeds.device)
            position_ids = steps.view(1, 1, -1).expand(3, batch, -1)
        # Positional: the cache parameter was renamed in transformers 5.24.
        causal_mask = create_causal_mask(
            self.config, inputs_embeds, attention_mask, cache, layer_idx=self.first_self_layer
        )
        all_hidden = [] if output_hidden_states else None
        hidden = self.run_layers(inputs_embeds, position_ids, causal_mask, cache, cross, all_hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **{CACHE_FIELD: cache},
        )

    def run_layers(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        self_attention_mask: torch.Tensor | None,
        cache,
        cross: CrossAttentionInputs | None,
        all_hidden: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The decoder stack and final norm over embeddings (B, L, H): the math shared by ``forward`` and the
        inference engine, which brings its own cache (anything with ``update`` / ``cached_vision`` /
        ``append_vision``) and a ready self-attention mask (None: causal within the chunk)."""
        cos, sin = self.rotary_emb(hidden, position_ids)
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden)
            hidden = layer(hidden, cos, sin, self_attention_mask, cache, cross)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden.append(hidden)
        return hidden
