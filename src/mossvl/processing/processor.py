"""MossVLProcessor: conversations and media → the model's input tensors (ids, masks, pixel rows, grids, labels).

It loads like any transformers processor (``AutoProcessor.from_pretrained`` after ``import mossvl``, for official
checkpoint folders without their remote code, our own saved folders and hub ids), renders conversations with the
checkpoint's chat template (``apply_chat_template``), and saves with the official file names.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from mossvl import constants as C
from mossvl.checkpoint import copy_remote_code, resolve_folder
from mossvl.errors import ConfigError, QueryError
from mossvl.processing.conversation import Conversation, conversation_from_query
from mossvl.processing.image import MossVLImageProcessor, blank_image
from mossvl.processing.limits import InputLimits, check_planned_pixels, check_prompt_chars
from mossvl.processing.masks import assistant_labels, cross_attention_mask
from mossvl.processing.media_plan import PlannedMedia
from mossvl.processing.prompt import (
    PLACEHOLDER_RE,
    assistant_spans,
    default_chat_template,
    render_chat,
    video_prompt,
)
from mossvl.processing.video import MossVLVideoProcessor

IMAGE_KWARGS = ("min_pixels", "max_pixels", "multi_image_max_pixels")
VIDEO_KWARGS = (
    "min_pixels",
    "max_pixels",
    "video_max_pixels",
    "video_fps",
    "min_frames",
    "max_frames",
    "num_extract_threads",
)
KWARG_ALIASES = {
    "shortest_edge": "min_pixels",
    "longest_edge": "max_pixels",
    "video_minlen": "min_frames",
    "video_maxlen": "max_frames",
    "frame_extract_num_threads": "num_extract_threads",
}
# Control tokens that must not appear in user text: they would desynchronise text and media.
RESERVED_IN_TEXT = (C.IMAGE_PAD, C.VIDEO_PAD, C.VISION_START, C.VISION_END)
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# What transformers' Auto classes and pipelines pass to from_pretrained; none changes a MOSS-VL processor.
HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download", "subfolder", "proxies")
# Pipelines also forward the model's loading kwargs to the processor.
IGNORED_LOAD_KWARGS = (
    "_from_auto",
    "_from_pipeline",
    "_commit_hash",
    "trust_remote_code",
    "code_revision",
    "use_fast",
    "backend",
    "dtype",
    "torch_dtype",
    "device_map",
    "attn_implementation",
)
# Chat-template call options that transformers' pipelines and users pass but that mean nothing for MOSS-VL.
IGNORED_TEMPLATE_KWARGS = ("truncation", "max_length", "return_attention_mask", "load_audio_from_video")


@dataclass
class PlannedInputs:
    """A processor call up to the pixels: token ids, masks and the planned media of every sample in text order.

    ``media[b]`` lists sample b's media (a text-only sample gets the blank image); ``labels`` only when asked.
    """

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    media: list[list[PlannedMedia]]
    cross_attention_mask: torch.Tensor  # (B, 1, L, F) True = masked
    labels: torch.Tensor | None = None
    texts: list[str] = field(default_factory=list)

    def to_features(self) -> BatchFeature:
        flat = [item for sample in self.media for item in sample]
        data = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "pixel_values": torch.cat([item.load() for item in flat]),
            "grid_thw": torch.tensor([item.grid_thw for item in flat], dtype=torch.long),
            "cross_attention_mask": self.cross_attention_mask,
            "media_nums_per_sample": torch.tensor([len(sample) for sample in self.media], dtype=torch.long),
        }
        if self.labels is not None:
            data["labels"] = self.labels
        return BatchFeature(data)


def canonical_media_kwargs(media_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Official media kwargs with aliases resolved and None values dropped; unknown keys raise QueryError."""
    canonical = {}
    for key, value in media_kwargs.items():
        key = KWARG_ALIASES.get(key, key)
        if key not in IMAGE_KWARGS and key not in VIDEO_KWARGS:
            raise QueryError(
                f"unknown media kwarg {key!r}; known: {sorted({*IMAGE_KWARGS, *VIDEO_KWARGS, *KWARG_ALIASES})}"
            )
        if value is not None:
            canonical[key] = value
    return canonical


def split_media_kwargs(media_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Official media kwargs (aliases accepted) → (image processor kwargs, video processor kwargs)."""
    canonical = canonical_media_kwargs(media_kwargs)
    image = {k: v for k, v in canonical.items() if k in IMAGE_KWARGS}
    video = {k: v for k, v in canonical.items() if k in VIDEO_KWARGS}
    return image, video


def _as_list(media: Any) -> list[Any]:
    """None → [], a list or tuple → list, a single item (path, image, array, dict) → [item]."""
    if media is None:
        return []
    return list(media) if isinstance(media, list | tuple) else [media]


def _init_keys(cls: type) -> set[str]:
    """Settings a sub-processor takes: its named __init__ parameters plus the min/max pixel aliases."""
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD} | {
        "min_pixels",
        "max_pixels",
    }


def _read_json(path: str) -> dict[str, Any]:
    """A sub-processor config file, or {} (MOSS-VL defaults) when the checkpoint does not ship it."""
    if not os.path.isfile(path):
        return {}
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err


class MossVLProcessor(ProcessorMixin):
    """Image processor + video processor + Qwen2 tokenizer + chat template.

    ``__call__(text, images, videos)`` takes rendered prompts with ``<|image|>`` / ``<|video|>`` placeholders and
    the media as flat lists in placeholder order across the batch; ``apply_chat_template`` and ``prepare`` start
    from conversations. Special-token ids are looked up in the tokenizer by their strings.
    """

    def __init__(
        self,
        image_processor: MossVLImageProcessor | None = None,
        video_processor: MossVLVideoProcessor | None = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        limits: InputLimits | None = None,
    ) -> None:
        if tokenizer is None:
            raise ConfigError(
                "MossVLProcessor needs a tokenizer (a Qwen2 tokenizer with the MOSS-VL special tokens)"
            )
        image_processor = image_processor or MossVLImageProcessor()
        video_processor = video_processor or MossVLVideoProcessor()
        super().__init__(
            image_processor,
            video_processor,
            tokenizer,
            chat_template=chat_template or default_chat_template(),
        )
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in C.SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ConfigError(f"the tokenizer lacks the MOSS-VL special tokens {missing}")
        self.token_ids = ids
        self.image_token_id = ids[C.IMAGE_PAD]
        self.video_token_id = ids[C.VIDEO_PAD]
        self.vision_start_token_id = ids[C.VISION_START]
        self.vision_end_token_id = ids[C.VISION_END]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[C.ENDOFTEXT]
        self.source_folder: str | None = None
        self.limits = limits or self.image_processor.limits

    @property
    def limits(self) -> InputLimits:
        """What one call may read, decode and allocate (see ``limits.InputLimits``); the image and video processors
        share it."""
        return self.image_processor.limits

    @limits.setter
    def limits(self, limits: InputLimits) -> None:
        if not isinstance(limits, InputLimits):
            raise ConfigError(f"limits must be an InputLimits, got {type(limits).__name__}")
        self.image_processor.limits = limits
        self.video_processor.limits = limits

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
        # transformers resolves the video base class through a registry that needs torchvision; check ours directly.
        expected = {"image_processor": MossVLImageProcessor, "video_processor": MossVLVideoProcessor}.get(
            argument_name
        )
        if expected is None:
            return super().check_argument_for_proper_class(argument_name, argument)
        if not isinstance(argument, expected):
            raise ConfigError(f"{argument_name} must be a {expected.__name__}, got {type(argument).__name__}")
        return expected

    # ---- save / load -------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write the tokenizer files, preprocessor_config.json, video_preprocessor_config.json and
        chat_template.jinja; when loaded from a folder that shipped the official remote code, keep its
        ``auto_map`` entries and copy that code, so the official loaders still read the folder."""
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        files = []
        for name, processor in (
            (IMAGE_PROCESSOR_FILE, self.image_processor),
            (VIDEO_PROCESSOR_FILE, self.video_processor),
        ):
            config = processor.to_dict()
            source = _read_json(os.path.join(self.source_folder, name)) if self.source_folder else {}
            # The official loaders look their processor classes up by these names.
            kept = ("image_processor_type", "video_processor_type")
            config.update({key: source[key] for key in kept if key in source})
            auto_map = source.get("auto_map")
            if auto_map and copy_remote_code(self.source_folder, save_directory, auto_map):
                config["auto_map"] = auto_map
            path = os.path.join(save_directory, name)
            Path(path).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            files.append(path)
        template_path = os.path.join(save_directory, CHAT_TEMPLATE_FILE)
        Path(template_path).write_text(self.chat_template, encoding="utf-8")
        return [*files, template_path]

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> MossVLProcessor:
        """Load from a checkpoint folder or hub id (the tokenizer at the top level or in ``tokenizer/``).

        Missing preprocessor files fall back to the MOSS-VL defaults. Extra kwargs override processor settings
        (e.g. ``frame_extract_num_threads=1``, ``max_pixels=...``, ``limits=InputLimits(...)``); transformers'
        loading kwargs (``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``use_fast``, ...) are
        accepted.
        """
        hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
        for key in IGNORED_LOAD_KWARGS:
            kwargs.pop(key, None)
        path = resolve_folder(pretrained_model_name_or_path, **hub)
        tokenizer_dir = path
        if not os.path.isfile(os.path.join(path, "tokenizer_config.json")) and os.path.isdir(
            os.path.join(path, "tokenizer")
        ):
            tokenizer_dir = os.path.join(path, "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        overrides = {KWARG_ALIASES.get(k, k): v for k, v in kwargs.items()}
        image_keys, video_keys = _init_keys(MossVLImageProcessor), _init_keys(MossVLVideoProcessor)
        unknown = set(overrides) - image_keys - video_keys
        if unknown:
            raise ConfigError(
                f"unknown processor settings {sorted(unknown)}; known: {sorted((image_keys | video_keys) - {'kwargs'})}"
            )
        image_config = _read_json(os.path.join(path, IMAGE_PROCESSOR_FILE))
        video_config = _read_json(os.path.join(path, VIDEO_PROCESSOR_FILE))
        for config in (image_config, video_config):
            config.pop("auto_map", None)
        image_processor = MossVLImageProcessor(
            **{**image_config, **{k: v for k, v in overrides.items() if k in image_keys}}
        )
        video_processor = MossVLVideoProcessor(
            **{**video_config, **{k: v for k, v in overrides.items() if k in video_keys}}
        )
        template_file = os.path.join(path, CHAT_TEMPLATE_FILE)
        if not os.path.isfile(template_file):
            template_file = os.path.join(tokenizer_dir, CHAT_TEMPLATE_FILE)
        if os.path.isfile(template_file):
            chat_template = Path(template_file).read_text(encoding="utf-8")
        else:
            chat_template = getattr(tokenizer, "chat_template", None)
        processor = cls(image_processor, video_processor, tokenizer, chat_template=chat_template)
        processor.source_folder = path
        return processor

    # ---- chat template ---------------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of normalised messages under this processor's chat template."""
        return render_chat(self.chat_template, messages, add_generation_prompt)

    def apply_chat_template(
        self,
        conversation: Any,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = None,
        continue_final_message: bool = False,
        padding: bool | str = True,
        padding_side: str = "left",
        processor_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        """transformers' chat-template call: one conversation or a batch of them (message lists with typed
        ``text`` / ``image`` / ``image_url`` / ``video`` / ``video_url`` items, ``url`` / ``path`` / ``base64``
        sources, PIL images, ``{video_path, segments}`` videos).

        ``tokenize=False`` returns the rendered text(s); otherwise the model inputs (a BatchFeature with
        ``return_dict=True``, else the ``input_ids``). Media settings (``video_fps``, ``max_pixels``, ... and
        transformers' ``fps`` / ``num_frames``) may be given directly or in ``processor_kwargs``.
        """
        for key in IGNORED_TEMPLATE_KWARGS:
            kwargs.pop(key, None)
        media_kwargs = _template_media_kwargs({**(processor_kwargs or {}), **kwargs})
        batched = (
            isinstance(conversation, list | tuple)
            and bool(conversation)
            and not isinstance(conversation[0], dict)
        )
        chats = list(conversation) if batched else [conversation]
        conversations = [
            conversation_from_query(
                list(chat.messages if hasattr(chat, "messages") else chat), trim_trailing_assistant=False
            )
            for chat in chats
        ]
        template = chat_template or self.chat_template
        texts = []
        for conv in conversations:
            text = render_chat(template, conv.messages, add_generation_prompt and not continue_final_message)
            if continue_final_message:
                text = _continue_final_message(text, conv.messages)
            texts.append(text)
        if not tokenize:
            return texts if batched else texts[0]
        if return_tensors not in ("pt", None):
            raise QueryError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        features = self(
            texts,
            images=[image for conv in conversations for image in conv.images],
            videos=[video for conv in conversations for video in conv.videos],
            padding=padding,
            padding_side=padding_side,
            **media_kwargs,
        )
        return features if return_dict else features["input_ids"]

    # ---- main call -----------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str],
        images: list[Any] | None = None,
        videos: list[Any] | None = None,
        padding: bool | str = True,
        padding_side: str = "left",
        return_tensors: str | None = "pt",
        return_labels: bool = False,
        assistant_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
        device: str | torch.device | None = None,
        **media_kwargs: Any,
    ) -> BatchFeature:
        """Rendered prompts + flat media lists (placeholder order across the batch) → model inputs.

        Returns input_ids (B, L), attention_mask (B, L), pixel_values (N, 768) float32, grid_thw (M, 3),
        cross_attention_mask (B, 1, L, F) bool (True = masked), media_nums_per_sample (B,), and labels (B, L)
        when ``return_labels`` (``assistant_spans``: per sample, the character spans of the assistant turns in
        ``text``, see ``prompt.assistant_spans``). A sample with no media gets a blank 128×128 image. ``device``:
        where the tensors go (SGLang passes it).
        """
        if return_tensors not in ("pt", None):
            raise QueryError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        planned = self.plan(
            text, images, videos, padding, padding_side, return_labels, assistant_spans, **media_kwargs
        )
        features = planned.to_features()
        return features if device is None else features.to(device)

    def plan(
        self,
        text: str | list[str],
        images: list[Any] | None = None,
        videos: list[Any] | None = None,
        padding: bool | str = True,
        padding_side: str = "left",
        return_labels: bool = False,
        assistant_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
        **media_kwargs: Any,
    ) -> PlannedInputs:
        """``__call__`` up to the pixels: ids, masks and labels are final; each media item knows its grid, its
        cache key and how to load its pixel rows (videos are indexed and sampled here, decoded only on load)."""
        if padding_side not in ("left", "right"):
            raise QueryError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise QueryError("text must be a string or a non-empty list of strings")
        for b, t in enumerate(texts):
            check_prompt_chars(t, self.limits, f"sample {b}'s text")
        if return_labels and (assistant_spans is None or len(assistant_spans) != len(texts)):
            raise QueryError(
                "labels need the assistant spans of every text (processor.assistant_spans(messages)); "
                "or use processor.prepare(..., return_labels=True) with conversations"
            )
        kinds = [[m.group() for m in PLACEHOLDER_RE.finditer(t)] for t in texts]
        images, videos = _as_list(images), _as_list(videos)
        image_kwargs, video_kwargs = split_media_kwargs(media_kwargs)
        image_items = self.image_processor.plan(images, **image_kwargs) if images else []
        video_items = self.video_processor.plan(videos, **video_kwargs) if videos else []
        self.check_text(texts, len(image_items), len(video_items))
        resized = sum(t * h * w for t, h, w in (item.grid_thw for item in [*image_items, *video_items]))
        check_planned_pixels(resized * self.image_processor.patch_size**2, 0, self.limits)

        expanded, media, shifts = self._expand(texts, kinds, iter(image_items), iter(video_items))
        encoded = self.tokenizer(
            expanded,
            padding=padding,
            padding_side=padding_side,
            return_tensors=None,
            add_special_tokens=False,
            return_offsets_mapping=return_labels,
        )
        if len({len(ids) for ids in encoded["input_ids"]}) > 1:
            raise QueryError("prompts of different lengths need padding=True")
        input_ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
        attention_mask = torch.tensor(encoded["attention_mask"], dtype=torch.long)
        frames = [sum(item.num_frames for item in sample) for sample in media]
        pads = (input_ids == self.image_token_id).sum(dim=1).tolist()
        for b, n_pad in enumerate(pads):
            referenced = (
                frames[b] if kinds[b] else 0
            )  # the blank image of a text-only sample has no image_pad
            if n_pad != referenced:
                raise QueryError(
                    f"sample {b}: {n_pad} {C.IMAGE_PAD} tokens for {referenced} frames after tokenization"
                )
        planned = PlannedInputs(
            input_ids=input_ids,
            attention_mask=attention_mask,
            media=media,
            cross_attention_mask=cross_attention_mask(input_ids, attention_mask, self.image_token_id, frames),
            texts=expanded,
        )
        if return_labels:
            spans = [
                [(_shift(s, shift), _shift(e, shift)) for s, e in sample]
                for sample, shift in zip(assistant_spans, shifts, strict=True)
            ]
            ignored = [self.token_ids[t] for t in (C.IMAGE_PAD, C.VIDEO_PAD, C.TIME_START, C.TIME_END)]
            planned.labels = assistant_labels(
                input_ids,
                torch.tensor(encoded["offset_mapping"], dtype=torch.long),
                attention_mask,
                spans,
                ignored,
                (self.vision_start_token_id, self.vision_end_token_id),
                self.token_ids[C.SILENCE],
            )
        return planned

    def _expand(
        self, texts: list[str], kinds: list[list[str]], images, videos
    ) -> tuple[list[str], list[list[PlannedMedia]], list[list[tuple[int, int]]]]:
        """Replace placeholders (image → one image_pad; video → timestamped frames); a sample without media gets
        the blank image. Returns the expanded texts, each sample's media in text order, and per sample the
        (end offset in the original text, growth so far) of every placeholder, to move character spans."""
        expanded, media, shifts = [], [], []
        for text, sample_kinds in zip(texts, kinds, strict=True):
            pieces = PLACEHOLDER_RE.split(text)
            out = [pieces[0]]
            sample_media: list[PlannedMedia] = []
            sample_shifts, position, growth = [], len(pieces[0]), 0
            for kind, tail in zip(sample_kinds, pieces[1:], strict=True):
                if kind == C.IMAGE_PLACEHOLDER:
                    sample_media.append(next(images))
                    replacement = C.IMAGE_PAD
                else:
                    sample_media.append(next(videos))
                    replacement = video_prompt(sample_media[-1].timestamps)
                out += [replacement, tail]
                position += len(kind)
                growth += len(replacement) - len(kind)
                sample_shifts.append((position, growth))
                position += len(tail)
            if not sample_media:
                sample_media.append(blank_image(self.image_processor.patch_size))
            expanded.append("".join(out))
            media.append(sample_media)
            shifts.append(sample_shifts)
        return expanded, media, shifts

    @staticmethod
    def check_text(texts: list[str], num_images: int = 0, num_videos: int = 0) -> None:
        """Raise QueryError if a text holds raw vision tokens or its placeholders do not match the media units."""
        for b, t in enumerate(texts):
            for token in RESERVED_IN_TEXT:
                if token in t:
                    raise QueryError(
                        f"sample {b}: the text contains {token}; write {C.IMAGE_PLACEHOLDER} / {C.VIDEO_PLACEHOLDER} "
                        "placeholders and pass the media instead"
                    )
        flat = [m.group() for t in texts for m in PLACEHOLDER_RE.finditer(t)]
        n_image_ph, n_video_ph = flat.count(C.IMAGE_PLACEHOLDER), flat.count(C.VIDEO_PLACEHOLDER)
        if n_image_ph != num_images or n_video_ph != num_videos:
            raise QueryError(
                f"placeholder count does not match the media: {n_image_ph} {C.IMAGE_PLACEHOLDER} for {num_images} "
                f"image(s) and {n_video_ph} {C.VIDEO_PLACEHOLDER} for {num_videos} video unit(s)"
            )

    # ---- conversations -------------------------------------------------------------------------------------

    def assistant_spans(self, messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """Character spans of the assistant turns in ``render(messages, add_generation_prompt=False)``."""
        return assistant_spans(self.chat_template, messages)

    def conversations(
        self, queries: Any, base_dir: str | None = None, trim_trailing_assistant: bool = True
    ) -> list[Conversation]:
        """Queries (a query dict, a message list, or a list of either) → conversations."""
        if isinstance(queries, dict):
            queries = [queries]
        if not isinstance(queries, list) or not queries:
            raise QueryError("expected a query dict, a message list, or a non-empty list of them")
        if isinstance(queries[0], dict) and "role" in queries[0]:
            queries = [queries]
        conversations = []
        for i, query in enumerate(queries):
            try:
                conversations.append(
                    conversation_from_query(query, base_dir, trim_trailing_assistant=trim_trailing_assistant)
                )
            except QueryError as err:
                raise QueryError(f"query #{i}: {err}") from err
        return conversations

    def prepare(
        self,
        queries_or_messages: Any,
        add_generation_prompt: bool = True,
        base_dir: str | None = None,
        padding_side: str = "left",
        return_labels: bool = False,
        **media_kwargs: Any,
    ) -> BatchFeature:
        """Queries or message lists → model inputs (explicit media kwargs override the queries' own; the queries
        of one call must share their media kwargs, as in the official batch helper)."""
        conversations = self.conversations(queries_or_messages, base_dir, add_generation_prompt)
        shared = conversations[0].media_kwargs
        for i, conv in enumerate(conversations[1:], start=1):
            if conv.media_kwargs != shared:
                diff = sorted(
                    k for k in {*shared, *conv.media_kwargs} if shared.get(k) != conv.media_kwargs.get(k)
                )
                raise QueryError(
                    f"query #{i}: media_kwargs differ from query #0 in {diff}; batch them separately"
                )
        return self(
            [self.render(c.messages, add_generation_prompt) for c in conversations],
            images=[m for c in conversations for m in c.images],
            videos=[m for c in conversations for m in c.videos],
            padding=True,
            padding_side=padding_side,
            return_labels=return_labels,
            assistant_spans=[self.assistant_spans(c.messages) for c in conversations]
            if return_labels
            else None,
            **{**shared, **media_kwargs},
        )

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "pixel_values",
            "grid_thw",
            "cross_attention_mask",
            "media_nums_per_sample",
        ]


def _shift(offset: int, shifts: list[tuple[int, int]]) -> int:
    """An offset of the original text moved into the expanded text (placeholders ending at or before it grew)."""
    growth = 0
    for end, total in shifts:
        if end > offset:
            break
        growth = total
    return offset + growth


def _continue_final_message(text: str, messages: list[dict]) -> str:
    """The rendering cut right after the final message's content, so the model continues that message."""
    final = messages[-1]["content"]
    tail = final[-1].get("text", "") if final and final[-1]["type"] == "text" else ""
    cut = text.rfind(tail) if tail else -1
    if cut < 0:
        raise QueryError("continue_final_message needs a final message that ends with text")
    return text[: cut + len(tail)]


def _template_media_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Media settings from a chat-template call: ours and aliases, plus transformers' ``fps`` / ``num_frames``."""
    kwargs = dict(kwargs)
    for nested in ("images_kwargs", "videos_kwargs"):
        kwargs.update(kwargs.pop(nested, None) or {})
    if "fps" in kwargs:
        kwargs["video_fps"] = kwargs.pop("fps")
    if "num_frames" in kwargs:
        kwargs["max_frames"] = kwargs.pop("num_frames")
    return canonical_media_kwargs(kwargs)
