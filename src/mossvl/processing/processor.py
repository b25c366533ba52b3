"""MossVLProcessor: rendered prompts + media → the model's input tensors (ids, masks, pixel rows, grids, labels)."""

import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from mossvl import constants as C
from mossvl.errors import ConfigError, QueryError
from mossvl.processing.image import MossVLImageProcessor, VisualPatches, blank_image_patches
from mossvl.processing.masks import assistant_labels, cross_attention_mask
from mossvl.processing.prompt import (
    CHAT_TEMPLATE,
    PLACEHOLDER_RE,
    Conversation,
    normalize_query,
    render_chat,
    video_prompt,
)
from mossvl.processing.video import MossVLVideoProcessor, expand_segments

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


@dataclass
class RenderedBatch:
    """Queries rendered for one processor call: texts with placeholders and flat media lists in text order."""

    texts: list[str]
    images: list[Any]
    videos: list[Any]
    media_kwargs: dict[str, Any]
    conversations: list[Conversation]


def split_media_kwargs(media_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Official media kwargs (aliases accepted) → (image processor kwargs, video processor kwargs)."""
    canonical = {}
    for key, value in media_kwargs.items():
        key = KWARG_ALIASES.get(key, key)
        if key not in IMAGE_KWARGS and key not in VIDEO_KWARGS:
            raise QueryError(
                f"unknown media kwarg {key!r}; known: {sorted({*IMAGE_KWARGS, *VIDEO_KWARGS, *KWARG_ALIASES})}"
            )
        if value is not None:
            canonical[key] = value
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
    """Image processor + video processor + Qwen2 tokenizer.

    `__call__(text, images, videos)` takes prompts already rendered with `<|image|>` / `<|video|>` placeholders
    and media as flat lists in placeholder order across the batch; `prepare(queries)` goes from query dicts or
    message lists to model inputs. Special-token ids are looked up in the tokenizer by their strings.
    """

    def __init__(
        self,
        image_processor: MossVLImageProcessor | None = None,
        video_processor: MossVLVideoProcessor | None = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
    ) -> None:
        if tokenizer is None:
            raise ConfigError(
                "MossVLProcessor needs a tokenizer (a Qwen2 tokenizer with the MOSS-VL special tokens)"
            )
        image_processor = image_processor or MossVLImageProcessor()
        video_processor = video_processor or MossVLVideoProcessor()
        super().__init__(
            image_processor, video_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE
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
        """Write tokenizer files, preprocessor_config.json, video_preprocessor_config.json, chat_template.jinja."""
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        files = self.image_processor.save_pretrained(save_directory)
        files += self.video_processor.save_pretrained(save_directory)
        template_path = os.path.join(save_directory, CHAT_TEMPLATE_FILE)
        Path(template_path).write_text(self.chat_template, encoding="utf-8")
        return [*files, template_path]

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> "MossVLProcessor":
        """Load from a local folder holding the official processor config files and the tokenizer (at the top
        level or in a `tokenizer/` subfolder).

        Missing preprocessor files fall back to the MOSS-VL defaults. Extra kwargs override processor settings
        (e.g. `num_extract_threads=1`, `frame_extract_num_threads=1`, `multi_image_max_pixels=...`).
        """
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            raise ConfigError(f"processor folder not found: {path}")
        tokenizer_dir = path
        if not os.path.isfile(os.path.join(path, "tokenizer_config.json")) and os.path.isdir(
            os.path.join(path, "tokenizer")
        ):
            tokenizer_dir = os.path.join(path, "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        kwargs.pop("trust_remote_code", None)  # accepted for drop-in use with the official loading code
        overrides = {KWARG_ALIASES.get(k, k): v for k, v in kwargs.items()}
        image_keys, video_keys = _init_keys(MossVLImageProcessor), _init_keys(MossVLVideoProcessor)
        unknown = set(overrides) - image_keys - video_keys
        if unknown:
            raise ConfigError(f"unknown processor settings {sorted(unknown)}")
        image_config = _read_json(os.path.join(path, IMAGE_PROCESSOR_FILE))
        video_config = _read_json(os.path.join(path, VIDEO_PROCESSOR_FILE))
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
        return cls(image_processor, video_processor, tokenizer, chat_template=chat_template)

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
        **media_kwargs: Any,
    ) -> BatchFeature:
        """Rendered prompts + flat media lists (placeholder order across the batch) → model inputs.

        Returns input_ids (B, L), attention_mask (B, L), pixel_values (N, 768) float32, grid_thw (M, 3),
        cross_attention_mask (B, 1, L, F) bool (True = masked), media_nums_per_sample (B,), and labels (B, L)
        when `return_labels`. A sample with no media gets a blank 128×128 image (spec §9.4).
        """
        if return_tensors not in ("pt", None):
            raise QueryError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        if padding_side not in ("left", "right"):
            raise QueryError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise QueryError("text must be a string or a non-empty list of strings")
        images, videos = _as_list(images), expand_segments(_as_list(videos))
        kinds = [[m.group() for m in PLACEHOLDER_RE.finditer(t)] for t in texts]
        self._check_placeholders(texts, kinds, len(images), len(videos))

        image_kwargs, video_kwargs = split_media_kwargs(media_kwargs)
        image_out = iter(self.image_processor.process(images, **image_kwargs) if images else [])
        video_out = iter(self.video_processor.process(videos, **video_kwargs) if videos else [])

        expanded, media, media_nums, frames = self._expand(texts, kinds, image_out, video_out)
        encoded = self.tokenizer(
            expanded,
            padding=padding,
            padding_side=padding_side,
            return_tensors=None,
            add_special_tokens=False,
            return_offsets_mapping=return_labels,
        )
        lengths = {len(ids) for ids in encoded["input_ids"]}
        if len(lengths) > 1:
            raise QueryError("prompts of different lengths need padding=True")
        input_ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
        attention_mask = torch.tensor(encoded["attention_mask"], dtype=torch.long)
        pads = (input_ids == self.image_token_id).sum(dim=1).tolist()
        for b, (n_pad, n_frames) in enumerate(zip(pads, frames, strict=True)):
            if n_pad != (n_frames if kinds[b] else 0):
                raise QueryError(
                    f"sample {b}: {n_pad} {C.IMAGE_PAD} tokens for {n_frames} frames after tokenization"
                )

        data = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.cat([p.pixel_values for p in media]),
            "grid_thw": torch.tensor([p.grid_thw for p in media], dtype=torch.long),
            "cross_attention_mask": cross_attention_mask(
                input_ids, attention_mask, self.image_token_id, frames
            ),
            "media_nums_per_sample": torch.tensor(media_nums, dtype=torch.long),
        }
        if return_labels:
            ignored = [self.token_ids[t] for t in (C.IMAGE_PAD, C.VIDEO_PAD, C.TIME_START, C.TIME_END)]
            data["labels"] = assistant_labels(
                input_ids,
                torch.tensor(encoded["offset_mapping"], dtype=torch.long),
                attention_mask,
                expanded,
                ignored,
                (self.vision_start_token_id, self.vision_end_token_id),
            )
        return BatchFeature(data)

    def _expand(
        self,
        texts: list[str],
        kinds: list[list[str]],
        images: Iterator[VisualPatches],
        videos: Iterator[VisualPatches],
    ) -> tuple[list[str], list[VisualPatches], list[int], list[int]]:
        """Replace placeholders (image → one image_pad; video → timestamped frames); a sample without media gets
        the blank image. Returns expanded texts, media in text order, media and frame counts per sample."""
        expanded, media, media_nums, frames = [], [], [], []
        for text, sample_kinds in zip(texts, kinds, strict=True):
            pieces = PLACEHOLDER_RE.split(text)
            out = [pieces[0]]
            sample_media: list[VisualPatches] = []
            for kind, tail in zip(sample_kinds, pieces[1:], strict=True):
                if kind == C.IMAGE_PLACEHOLDER:
                    sample_media.append(next(images))
                    out.append(C.IMAGE_PAD)
                else:
                    sample_media.append(next(videos))
                    out.append(video_prompt(sample_media[-1].timestamps))
                out.append(tail)
            if not sample_media:
                sample_media.append(blank_image_patches(self.image_processor.patch_size))
            expanded.append("".join(out))
            media.extend(sample_media)
            media_nums.append(len(sample_media))
            frames.append(sum(p.grid_thw[0] for p in sample_media))
        return expanded, media, media_nums, frames

    def _check_placeholders(
        self, texts: list[str], kinds: list[list[str]], n_images: int, n_videos: int
    ) -> None:
        for b, t in enumerate(texts):
            for token in RESERVED_IN_TEXT:
                if token in t:
                    raise QueryError(
                        f"sample {b}: the text contains {token}; write {C.IMAGE_PLACEHOLDER} / {C.VIDEO_PLACEHOLDER} "
                        "placeholders and pass the media instead"
                    )
        flat = [k for sample in kinds for k in sample]
        n_image_ph, n_video_ph = flat.count(C.IMAGE_PLACEHOLDER), flat.count(C.VIDEO_PLACEHOLDER)
        if n_image_ph != n_images or n_video_ph != n_videos:
            raise QueryError(
                f"placeholder count does not match the media: {n_image_ph} {C.IMAGE_PLACEHOLDER} for {n_images} "
                f"image(s) and {n_video_ph} {C.VIDEO_PLACEHOLDER} for {n_videos} video unit(s)"
            )

    # ---- queries -------------------------------------------------------------------------------------------

    def render_queries(
        self,
        queries: Any,
        add_generation_prompt: bool = True,
        base_dir: str | None = None,
        trim_trailing_assistant: bool | None = None,
    ) -> RenderedBatch:
        """Queries (a query dict, a message list, or a list of either) → texts and flat media for one call.

        Every query of a batch must carry the same `media_kwargs` (reference rule for batched calls).
        """
        if trim_trailing_assistant is None:
            trim_trailing_assistant = add_generation_prompt
        if isinstance(queries, dict):
            queries = [queries]
        if not isinstance(queries, list) or not queries:
            raise QueryError("expected a query dict, a message list, or a non-empty list of them")
        if isinstance(queries[0], dict) and "role" in queries[0]:
            queries = [queries]
        conversations = []
        for i, query in enumerate(queries):
            query = {"messages": query} if isinstance(query, list) else query
            try:
                conversations.append(
                    normalize_query(query, base_dir, trim_trailing_assistant=trim_trailing_assistant)
                )
            except QueryError as err:
                raise QueryError(f"query #{i}: {err}") from err
        kwargs = conversations[0].media_kwargs
        for i, conv in enumerate(conversations[1:], start=1):
            if conv.media_kwargs != kwargs:
                diff = sorted(
                    k for k in {*kwargs, *conv.media_kwargs} if kwargs.get(k) != conv.media_kwargs.get(k)
                )
                raise QueryError(
                    f"query #{i}: media_kwargs differ from query #0 in {diff}; batch them separately"
                )
        return RenderedBatch(
            texts=[render_chat(c.messages, add_generation_prompt) for c in conversations],
            images=[m for c in conversations for m in c.images],
            videos=[m for c in conversations for m in c.videos],
            media_kwargs=dict(kwargs),
            conversations=conversations,
        )

    def prepare(
        self,
        queries_or_messages: Any,
        add_generation_prompt: bool = True,
        base_dir: str | None = None,
        padding_side: str = "left",
        return_labels: bool = False,
        **media_kwargs: Any,
    ) -> BatchFeature:
        """Queries or message lists → model inputs (explicit media kwargs override the queries' own)."""
        batch = self.render_queries(queries_or_messages, add_generation_prompt, base_dir)
        return self(
            batch.texts,
            images=batch.images,
            videos=batch.videos,
            padding=True,
            padding_side=padding_side,
            return_labels=return_labels,
            **{**batch.media_kwargs, **media_kwargs},
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
