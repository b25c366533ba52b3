"""MOSS-VL top level: vision memory assembly, positions, masks and the causal-LM head, with generate() support.

Spec §4, §6–§8, §10–§12. The module tree is the checkpoint layout: ``model.visual.*``,
``model.language_model.*``, ``model.separator_token`` and ``lm_head.weight``.
"""

import os

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from ..checkpoint import copy_remote_code, local_folder
from ..errors import ConfigError, QueryError
from . import cross_attention_mask as xmask
from .cache import MossVLCache
from .compat import CACHE_FIELD, cache_argument
from .configuration import MossVLConfig
from .linear import Linear
from .text import CROSS_ATTENTION_IMPLEMENTATIONS, CrossAttentionInputs, MossVLTextModel, init_text_weights
from .vision import MossVLVisionModel, MossVLVisionRotaryEmbedding, init_vision_weights
from .xrope import frame_grids, text_position_ids, vision_position_ids

# Media inputs packed over the whole batch (not indexed by sample), and those generate() passes to prefill only.
PACKED_MEDIA_INPUTS = ("pixel_values", "grid_thw", "media_nums_per_sample", "vision_position_ids")
PREFILL_ONLY_INPUTS = (
    "pixel_values",
    "grid_thw",
    "media_nums_per_sample",
    "cross_attention_mask",
    "vision_position_ids",
)


class MossVLPreTrainedModel(PreTrainedModel):
    config_class = MossVLConfig
    config: MossVLConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "MossVLSelfAttentionDecoderLayer",
        "MossVLCrossAttentionDecoderLayer",
        "MossVLVisionBlock",
    ]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq", r"rotary_pos_emb\.inv_freq"]

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained`` that keeps an official checkpoint loadable by the official code and by
        SGLang: the config's ``auto_map`` is written, and its remote-code files copied, when the folder the model was
        loaded from has them; otherwise the ``auto_map`` is left out (it would name missing files)."""
        auto_map = getattr(self.config, "auto_map", None)
        os.makedirs(save_directory, exist_ok=True)
        source = local_folder(self.config._name_or_path)
        if not auto_map or copy_remote_code(source, save_directory, auto_map):
            return super().save_pretrained(save_directory, *args, **kwargs)
        del self.config.auto_map
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.auto_map = auto_map

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.get_text_config().initializer_range
        init_text_weights(module)
        if isinstance(module, MossVLVisionRotaryEmbedding):
            init_vision_weights(module, std)
        elif isinstance(module, MossVLModel):
            init.normal_(module.separator_token, mean=0.0, std=std)


class MossVLModel(MossVLPreTrainedModel):
    """Vision tower + decoder. Vision tokens never enter the text stream: they form the cross-attention memory."""

    def __init__(self, config: MossVLConfig):
        super().__init__(config)
        choice = config.cross_attention_implementation or config.text_config.cross_attention_implementation
        if choice not in (None, *CROSS_ATTENTION_IMPLEMENTATIONS):
            raise ConfigError(
                f"cross_attention_implementation={choice!r} is not available: use one of "
                f"{list(CROSS_ATTENTION_IMPLEMENTATIONS)} (the official flash_attention_3 boundary kernel is CUDA-only "
                "code this package does not ship)"
            )
        config.cross_attention_implementation = config.text_config.cross_attention_implementation = choice
        self.visual = MossVLVisionModel(config.vision_config)
        self.language_model = MossVLTextModel(config.text_config)
        self.separator_token = nn.Parameter(torch.zeros(config.vision_config.out_hidden_size))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    # ----- vision memory ------------------------------------------------------------------------------------------

    def get_vision_features(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, vision_chunked_length: int | None = None
    ) -> torch.Tensor:
        """Merged vision tokens (N / merge², H) of all media, packed in ``grid_thw`` order (no separators)."""
        pixel_values = pixel_values.to(self.visual.patch_embed.proj.weight.dtype)
        return self.visual(pixel_values, grid_thw, chunk_size=vision_chunked_length)

    def build_cross_attention_states(
        self, vision_embeds: torch.Tensor, grid_thw: torch.Tensor, media_nums_per_sample: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-sample vision memory (B, Lv, H) and the token count of each of its frames.

        Each frame contributes its merged tokens (raster order) then one separator; a sample's media follow in
        text order; samples are zero-padded to the longest, rounded up to ``vision_seq_pad_multiple``.
        """
        merge = self.config.vision_config.spatial_merge_size
        grid = grid_thw.to(torch.long).cpu()
        tokens_per_frame = grid[:, 1] * grid[:, 2] // merge**2
        per_media = torch.split(vision_embeds, (grid[:, 0] * tokens_per_frame).tolist())
        separator = self.separator_token.to(vision_embeds.dtype)
        samples, frame_sizes, start = [], [], 0
        for count in media_nums_per_sample:
            parts, sizes = [], []
            for index in range(start, start + count):
                frames, per_frame = int(grid[index, 0]), int(tokens_per_frame[index])
                media = per_media[index].view(frames, per_frame, -1)
                parts.append(torch.cat([media, separator.expand(frames, 1, -1)], dim=1).flatten(0, 1))
                sizes += [per_frame + 1] * frames
            start += count
            samples.append(torch.cat(parts) if parts else vision_embeds.new_zeros(0, vision_embeds.shape[-1]))
            frame_sizes.append(torch.tensor(sizes, dtype=torch.long))
        longest = max(len(sample) for sample in samples)
        length = longest + (-longest) % self.config.vision_seq_pad_multiple
        states = vision_embeds.new_zeros(len(samples), length, vision_embeds.shape[-1])
        for b, sample in enumerate(samples):
            states[b, : len(sample)] = sample
        return states, frame_sizes

    # ----- positions and visibility -------------------------------------------------------------------------------

    def compute_position_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        grids: list[torch.Tensor] | None,
        vision_length: int = 0,
        start_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Text positions (3, B, L), vision positions (3, B, vision_length) and each sample's next text position.

        ``grids[b]`` is the merged (eh, ew) grid of each new frame of sample b (``frame_grids``); None when the
        chunk brings no media, and then image_pad tokens are plain text (a generated token, say).
        """
        image_token = self.config.image_token_id if grids is not None else None
        extents = []
        for b in range(input_ids.shape[0]):
            frames = len(grids[b]) if grids is not None else 0
            pads = int(((input_ids[b] == self.config.image_token_id) & attention_mask[b].bool()).sum())
            if grids is not None and pads > frames:
                raise QueryError(
                    f"sample {b} has {pads} <|image_pad|> tokens but only {frames} image/video frames were given "
                    "(one image_pad per image or video frame)"
                )
            extents.append(
                grids[b][:pads].amax(dim=1) if grids is not None else torch.zeros(0, dtype=torch.long)
            )
        positions, next_position = text_position_ids(
            input_ids, attention_mask, image_token, extents, start_position
        )
        vision = None
        if grids is not None:
            vision = vision_position_ids(
                positions, input_ids, attention_mask, self.config.image_token_id, grids, vision_length
            )
        return positions, vision, next_position

    def compute_cross_attention_prefix(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        offsets: torch.Tensor,
        has_media: bool,
        cross_attention_mask: torch.Tensor | None = None,
        cache: MossVLCache | None = None,
    ) -> torch.Tensor:
        """(B, L) number of vision tokens each text token may attend to (spec §7), given frame ``offsets``.

        From the official bool ``cross_attention_mask`` (True = masked, frames numbered over the whole memory) when
        given; otherwise the k-th new image_pad reveals the k-th new frame, and tokens before the first new
        image_pad see what the cache's last token saw.
        """
        valid = attention_mask.to(torch.bool)
        if cross_attention_mask is not None:
            visible = xmask.visible_frames_from_mask(cross_attention_mask[:, :, -input_ids.shape[1] :])
            return xmask.visible_prefix(visible, offsets).masked_fill(~valid, 0)
        stored = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        last = torch.zeros_like(stored)
        if cache is not None and cache.num_frames is not None:
            stored, last = cache.num_frames.to(stored.device), cache.last_prefix.to(stored.device)
        if has_media:
            seen = xmask.visible_frames_from_input_ids(input_ids, attention_mask, self.config.image_token_id)
        else:
            seen = torch.zeros_like(input_ids)
        prefix = torch.where(seen > 0, xmask.visible_prefix(seen + stored[:, None], offsets), last[:, None])
        return prefix.masked_fill(~valid, 0)

    # ----- forward ------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        grid_thw: torch.LongTensor | None = None,
        media_nums_per_sample: torch.Tensor | list[int] | None = None,
        cross_attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        vision_position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_chunked_length: int | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Run one chunk: a whole prompt (empty cache) or a continuation / decode step on top of a cache.

        ``pixel_values`` / ``grid_thw`` / ``media_nums_per_sample`` describe only the media whose
        ``<|image_pad|>`` tokens are in this chunk; their vision K/V are appended to the cache.
        ``position_ids`` (3, B, L) and ``vision_position_ids`` (3, B, Lv) override the computed XRoPE positions;
        ``inputs_embeds`` (B, L, H) replaces the token embeddings of ``input_ids``. The cache may be passed as
        ``cache`` (transformers >= 5.24) or ``past_key_values``.
        """
        if input_ids is None:
            raise QueryError(
                "input_ids are required (they place the <|image_pad|> tokens); inputs_embeds may only replace "
                "their embeddings"
            )
        if use_cache is None:
            # A cache built in a training forward is never read, and activation checkpointing would fill it twice.
            use_cache = self.config.use_cache and not self.training
        cache = self._resolve_cache(cache_argument(cache, past_key_values), use_cache)
        batch, length = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + length, dtype=torch.long, device=input_ids.device)
        chunk_mask = attention_mask[:, -length:]

        states = grids = plan = None
        frame_sizes = [torch.zeros(0, dtype=torch.long)] * batch
        if pixel_values is not None:
            if grid_thw is None:
                raise QueryError("pixel_values were given without grid_thw")
            media = self._media_per_sample(media_nums_per_sample, grid_thw, batch)
            merge = self.config.vision_config.spatial_merge_size
            grids = frame_grids(grid_thw, media, merge)
            embeds = self.get_vision_features(pixel_values, grid_thw, vision_chunked_length)
            states, frame_sizes = self.build_cross_attention_states(embeds, grid_thw, media)

        start = cache.next_position if cache is not None and cache.next_position is not None else None
        vision_length = states.shape[1] if states is not None else 0
        computed, computed_vision, next_position = self.compute_position_ids(
            input_ids, chunk_mask, grids, vision_length, start
        )
        if position_ids is None:
            position_ids = computed
        else:
            if position_ids.dim() == 2:
                position_ids = position_ids[None].expand(3, -1, -1)
            next_position = _next_position(position_ids, chunk_mask, start)
        if vision_position_ids is None:
            vision_position_ids = computed_vision

        if cache is not None and states is not None:
            pads = ((input_ids == self.config.image_token_id) & chunk_mask.bool()).sum(dim=1)
            plan = cache.plan_vision_append(
                frame_sizes, vision_length, self.config.vision_seq_pad_multiple, referenced=pads.cpu()
            )
            offsets = plan.offsets
        elif cache is not None and cache.frame_offsets is not None:
            offsets = cache.frame_offsets
        else:
            offsets = xmask.frame_offsets(frame_sizes, input_ids.device)

        cross = prefix = None
        memory_length = plan.length if plan is not None else (cache.vision_length if cache is not None else 0)
        memory_length = memory_length or vision_length
        if memory_length:
            prefix = self.compute_cross_attention_prefix(
                input_ids,
                chunk_mask,
                offsets.to(input_ids.device),
                states is not None,
                cross_attention_mask,
                cache,
            )
            dtype = self.language_model.embed_tokens.weight.dtype
            vision_cos = vision_sin = None
            if states is not None:
                vision_cos, vision_sin = self.language_model.rotary_emb(states, vision_position_ids)
            decode_step = states is None and length == 1 and past > 0
            # Decode steps usually see the whole memory: then neither mask is needed.
            sees_all = bool((prefix == memory_length).all())
            cross = CrossAttentionInputs(
                states=states,
                cos=vision_cos,
                sin=vision_sin,
                mask=None if sees_all else xmask.expand(prefix, memory_length, dtype),
                rows=None if sees_all else xmask.row_mask(prefix, dtype),
                sees_vision=bool((prefix > 0).any()),
                plan=plan,
                rotate_query=not decode_step or self.config.rotate_cross_query_in_decode,
            )

        outputs = self.language_model(
            input_ids=input_ids if inputs_embeds is None else None,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            cross=cross,
            output_hidden_states=bool(output_hidden_states),
        )
        if cache is not None:
            last_prefix = _last_valid(prefix, chunk_mask, cache.last_prefix) if prefix is not None else None
            cache.record_step(next_position, last_prefix, plan)
        return outputs

    def _resolve_cache(self, cache: Cache | None, use_cache: bool) -> MossVLCache | None:
        if isinstance(cache, MossVLCache):
            return cache
        if cache is None:
            return MossVLCache(self.config) if use_cache else None
        if isinstance(cache, DynamicCache) and cache.get_seq_length() == 0:
            return MossVLCache(self.config)
        raise QueryError(
            f"the cache must be a MossVLCache (got a filled {type(cache).__name__}); "
            "start from None or MossVLCache(model.config)"
        )

    @staticmethod
    def _media_per_sample(media_nums_per_sample, grid_thw: torch.Tensor, batch: int) -> list[int]:
        if media_nums_per_sample is None:
            if batch != 1:
                raise QueryError(
                    "media_nums_per_sample is required when a batch of several samples has media"
                )
            return [grid_thw.shape[0]]
        media = [int(n) for n in media_nums_per_sample]
        if len(media) != batch:
            raise QueryError(f"media_nums_per_sample has {len(media)} entries for a batch of {batch} samples")
        return media


def _next_position(
    position_ids: torch.Tensor, mask: torch.Tensor, start: torch.Tensor | None
) -> torch.Tensor:
    valid = mask.to(torch.bool)
    top = position_ids.amax(dim=0).masked_fill(~valid, -1).amax(dim=1)
    fallback = start.to(top.device) if start is not None else torch.zeros_like(top)
    return torch.where(top >= 0, top + 1, fallback)


def _last_valid(values: torch.Tensor, mask: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Value at each row's last non-padding token; ``previous`` (or 0) for rows without one."""
    valid = mask.to(torch.bool)
    index = (valid.long() * torch.arange(1, valid.shape[1] + 1, device=valid.device)).argmax(dim=1)
    last = values.gather(1, index[:, None])[:, 0]
    fallback = previous.to(last.device) if previous is not None else torch.zeros_like(last)
    return torch.where(valid.any(dim=1), last, fallback)


def _repeat_media_per_sample(media: dict, repeats: int, batch: int) -> dict:
    """Packed media inputs for a batch whose samples are each repeated ``repeats`` times in a row."""
    grid = media["grid_thw"]
    counts = media["media_nums_per_sample"]
    counts = [grid.shape[0]] if counts is None and batch == 1 else [int(n) for n in counts]
    rows = torch.split(media["pixel_values"], grid.prod(dim=1).tolist())
    pixels, grids, start = [], [], 0
    for count in counts:
        pixels += list(rows[start : start + count]) * repeats
        grids += [grid[start : start + count]] * repeats
        start += count
    expanded = {
        "pixel_values": torch.cat(pixels),
        "grid_thw": torch.cat(grids),
        "media_nums_per_sample": [count for count in counts for _ in range(repeats)],
        "vision_position_ids": None,
    }
    if media["vision_position_ids"] is not None:
        expanded["vision_position_ids"] = media["vision_position_ids"].repeat_interleave(repeats, dim=1)
    return expanded


class MossVLForConditionalGeneration(MossVLPreTrainedModel, GenerationMixin):
    """MOSS-VL with its LM head; works with ``generate()`` (pixel inputs at prefill only).

    Decode quirk (spec §12.1): the official Hugging Face code rotates the cross-attention query with XRoPE at
    prefill but not in single-token decode steps that read the cached vision memory. The rule here: the query
    is rotated unless the step brings no new vision memory, is a single token on a non-empty cache, and
    ``config.rotate_cross_query_in_decode`` is False. The default (False) reproduces the official ``generate()``
    tokens; True rotates every step, as SGLang and training do, and then cached decoding equals a full
    recompute.
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: MossVLConfig):
        super().__init__(config)
        self.model = MossVLModel(config)
        text = config.text_config
        self.lm_head = Linear(text.hidden_size, text.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.language_model.embed_tokens = value

    @property
    def visual(self) -> MossVLVisionModel:
        return self.model.visual

    @property
    def language_model(self) -> MossVLTextModel:
        return self.model.language_model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        grid_thw: torch.LongTensor | None = None,
        media_nums_per_sample: torch.Tensor | list[int] | None = None,
        cross_attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        vision_position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_chunked_length: int | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (B, L, V) (or of the last ``logits_to_keep`` tokens) and, with ``labels`` (-100 = ignored),
        the next-token cross-entropy loss. Inputs as in ``MossVLModel.forward``."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            grid_thw=grid_thw,
            media_nums_per_sample=media_nums_per_sample,
            cross_attention_mask=cross_attention_mask,
            position_ids=position_ids,
            vision_position_ids=vision_position_ids,
            cache=cache_argument(cache, past_key_values),
            use_cache=use_cache,
            vision_chunked_length=vision_chunked_length,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        cache: Cache | None = None,
        **kwargs,
    ) -> dict:
        cache = cache_argument(cache, past_key_values)
        prefill = is_first_iteration or cache is None or cache.get_seq_length() == 0
        if not prefill:
            kwargs = {key: value for key, value in kwargs.items() if key not in PREFILL_ONLY_INPUTS}
        return super().prepare_inputs_for_generation(
            input_ids,
            attention_mask=attention_mask,
            is_first_iteration=is_first_iteration,
            **{CACHE_FIELD: cache},
            **kwargs,
        )

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
        **model_kwargs,
    ) -> tuple[torch.LongTensor | None, dict]:
        # Media inputs are packed over the batch (rows per media item, not per sample): repeat each sample's block.
        media = {key: model_kwargs.pop(key, None) for key in PACKED_MEDIA_INPUTS}
        batch = input_ids.shape[0] if input_ids is not None else None
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if expand_size > 1 and media["pixel_values"] is not None:
            media = _repeat_media_per_sample(media, expand_size, batch)
        model_kwargs.update({key: value for key, value in media.items() if value is not None})
        return input_ids, model_kwargs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs: dict, *args, **kwargs) -> dict:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # Without a cache every step re-reads the whole sequence: the new token sees what the last one saw.
        mask = model_kwargs.get("cross_attention_mask")
        if mask is not None:
            model_kwargs["cross_attention_mask"] = torch.cat([mask, mask[:, :, -1:]], dim=2)
        return model_kwargs

    def _prepare_position_ids_for_generation(self, inputs_tensor: torch.Tensor, model_kwargs: dict) -> None:
        # XRoPE positions are computed by forward (prefill) and continued from the cache (decode).
        return None

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs) -> None:
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if type(model_kwargs.get(CACHE_FIELD)) is DynamicCache:
            model_kwargs[CACHE_FIELD] = MossVLCache(self.config)


__all__ = [
    "MossVLForConditionalGeneration",
    "MossVLModel",
    "MossVLPreTrainedModel",
]
