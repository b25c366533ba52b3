"""SFT data: a lazy dataset that turns records into model features, media-safe truncation, and the batch collator.

Per sample the processor renders the ChatML conversation, expands placeholders, decodes the media and returns labels
(assistant tokens and each assistant ``<|im_end|>``; -100 elsewhere, spec §9.5). Records are parsed and media
decoded only in ``__getitem__``; the file is indexed by byte offsets up front.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..constants import IGNORE_INDEX, IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START
from ..errors import MossVLError, PreparationError, QueryError
from ..processing.conversation import Conversation, conversation_from_record
from ..processing.sources import local_file_error
from .records import index_records, read_record

logger = logging.getLogger(__name__)

# One sample's features: input_ids, labels (L,), pixel_values (P, D), grid_thw (M, 3), cross_attention_mask (L, F)
# bool with True = masked, and media_nums_per_sample (int).
Features = dict[str, torch.Tensor | int]


@dataclass(frozen=True)
class LayoutTokens:
    """Token ids that truncation must respect."""

    im_start: int
    im_end: int
    image_pad: int
    vision_start: int
    vision_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> LayoutTokens:
        ids = tokenizer.convert_tokens_to_ids([IM_START, IM_END, IMAGE_PAD, VISION_START, VISION_END])
        return cls(*ids)


def truncation_point(
    input_ids: torch.Tensor, labels: torch.Tensor, max_length: int, tokens: LayoutTokens
) -> int | None:
    """Length of the longest prefix to keep (≤ max_length) with at least one supervised token, or None.

    Whole trailing turns are dropped first: the cut goes at the ``<|im_start|>`` that follows the last assistant turn
    that fits, so the sample still ends with an answer. If not even the first answer fits, its text is cut, but
    never inside ``<|vision_start|>…<|vision_end|>``: such a cut moves before the block.
    An image's lone ``<|image_pad|>`` is either kept or dropped with its image, so it cannot be split.
    """
    if len(input_ids) <= max_length:
        return len(input_ids)
    supervised = torch.cumsum(labels != IGNORE_INDEX, 0)  # (L,) supervised tokens at positions <= i
    turn_starts = (input_ids[: max_length + 1] == tokens.im_start).nonzero().flatten()
    turn_ends = (input_ids[:max_length] == tokens.im_end).nonzero().flatten()
    for cut in reversed(turn_starts.tolist()):
        previous_end = turn_ends[turn_ends < cut]
        if len(previous_end) and labels[previous_end[-1]] != IGNORE_INDEX:  # the turn before is an answer
            return cut
    cut = max_length
    starts = (input_ids[:cut] == tokens.vision_start).nonzero().flatten()
    ends = (input_ids[:cut] == tokens.vision_end).nonzero().flatten()
    if len(starts) and (not len(ends) or starts[-1] > ends[-1]):
        cut = int(starts[-1])
    return cut if cut > 0 and supervised[cut - 1] > 0 else None


def truncate_features(features: Features, cut: int, image_pad_id: int, blank: Features) -> Features:
    """Keep the first ``cut`` tokens and exactly the media whose ``<|image_pad|>`` frames all survive.

    The cut must come from `truncation_point` (never inside a media block). If every real media item is cut away the
    sample gets the processor's blank image (``blank``), as a text-only sample would.
    """
    input_ids = features["input_ids"][:cut]
    grid_thw = features["grid_thw"]
    frames_before = int((features["input_ids"] == image_pad_id).sum())
    frames_kept = int((input_ids == image_pad_id).sum())
    if frames_before == 0 or frames_kept == frames_before:
        mask = features["cross_attention_mask"][:cut]
        return {
            **features,
            "input_ids": input_ids,
            "labels": features["labels"][:cut],
            "cross_attention_mask": mask,
        }
    if frames_kept == 0:
        mask = torch.ones(cut, blank["cross_attention_mask"].shape[-1], dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "labels": features["labels"][:cut],
            "pixel_values": blank["pixel_values"],
            "grid_thw": blank["grid_thw"],
            "cross_attention_mask": mask,
            "media_nums_per_sample": blank["media_nums_per_sample"],
        }
    frames_per_media = torch.cumsum(grid_thw[:, 0], 0)  # (M,) frames of media 0..m
    media_kept = int((frames_per_media <= frames_kept).sum())
    if int(frames_per_media[media_kept - 1]) != frames_kept:
        raise QueryError(f"internal: truncation at token {cut} would split a media item")
    rows_kept = int(grid_thw[:media_kept].prod(-1).sum())
    return {
        "input_ids": input_ids,
        "labels": features["labels"][:cut],
        "pixel_values": features["pixel_values"][:rows_kept],
        "grid_thw": grid_thw[:media_kept],
        "cross_attention_mask": features["cross_attention_mask"][:cut, :frames_kept],
        "media_nums_per_sample": media_kept,
    }


class SFTDataset(Dataset):
    """Supervised fine-tuning samples read lazily from a JSON list or JSONL file (both record formats).

    ``skip_bad_records``: a malformed record, unreadable media, or a sample that cannot fit ``max_length`` is logged,
    counted in ``skipped`` (index -> reason) and replaced by the next good record, instead of raising. Media are read
    under the processor's ``limits`` (remote fetch timeouts and byte cap, pixel and video limits); any failure of a
    record, whatever its type, is a MossVLError naming the record.

    ``cache_samples``: keep each sample's features in memory after it is first built, so that later epochs skip
    parsing and media decoding (memory: every sample's pixels; with dataloader workers, each worker holds its own).
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        processor,
        max_length: int = 4096,
        data_dir: str | os.PathLike | None = None,
        skip_bad_records: bool = False,
        cache_samples: bool = False,
    ):
        self.data_path = Path(data_path)
        problem = local_file_error(str(self.data_path), "data")
        if problem is not None:
            raise QueryError(problem)
        self.spans = index_records(self.data_path)
        if len(self.spans) == 0:
            raise QueryError(f"data file {self.data_path} holds no records")
        self.base_dir = Path(data_dir) if data_dir else self.data_path.parent
        self.processor = processor
        self.max_length = max_length
        self.skip_bad_records = skip_bad_records
        self.tokens = LayoutTokens.from_tokenizer(processor.tokenizer)
        self.skipped: dict[int, str] = {}
        self._blank: Features | None = None
        self._cache: dict[int, Features] | None = {} if cache_samples else None

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index: int) -> Features:
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            try:
                return self.load(position)
            except MossVLError as exc:
                if not self.skip_bad_records:
                    raise
                if position not in self.skipped:
                    logger.warning("skipping %s record %d: %s", self.data_path.name, position, exc)
                self.skipped[position] = str(exc)
        raise QueryError(f"data file {self.data_path}: every record was skipped as bad")

    def conversation(self, index: int) -> Conversation:
        """The normalised conversation of record ``index`` (no media decoding)."""
        return conversation_from_record(
            read_record(self.data_path, self.spans[index], index), index, self.base_dir
        )

    def load(self, index: int) -> Features:
        """Features of record ``index``, truncated to ``max_length``; raises MossVLError naming the record."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        try:
            conversation = self.conversation(index)
            features = self.encode(conversation)
        except MossVLError as exc:
            if str(exc).startswith(f"record {index}:"):
                raise
            raise type(exc)(f"record {index}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a hostile record fails alone (and is skipped if asked)
            raise PreparationError(f"record {index}: {type(exc).__name__}: {exc}") from exc
        cut = truncation_point(features["input_ids"], features["labels"], self.max_length, self.tokens)
        if cut is None:
            raise QueryError(
                f"record {index}: no supervised token fits in max_length {self.max_length} "
                f"(sample has {len(features['input_ids'])} tokens)"
            )
        if cut < len(features["input_ids"]):
            features = truncate_features(features, cut, self.tokens.image_pad, self.blank())
        if self._cache is not None:
            self._cache[index] = features
        return features

    def encode(self, conversation: Conversation) -> Features:
        """Run the processor on one conversation and unbatch its outputs."""
        outputs = self.processor(
            text=[self.processor.render(conversation.messages, add_generation_prompt=False)],
            images=conversation.images or None,
            videos=conversation.videos or None,
            return_tensors="pt",
            return_labels=True,
            assistant_spans=[self.processor.assistant_spans(conversation.messages)],
        )
        return {
            "input_ids": outputs["input_ids"][0],
            "labels": outputs["labels"][0],
            "pixel_values": outputs["pixel_values"],
            "grid_thw": outputs["grid_thw"],
            "cross_attention_mask": outputs["cross_attention_mask"][0, 0],
            "media_nums_per_sample": int(outputs["media_nums_per_sample"][0]),
        }

    def blank(self) -> Features:
        """The processor's blank-image media of a text-only sample, used when truncation drops every media item."""
        if self._blank is None:
            self._blank = self.encode(Conversation(messages=[{"role": "assistant", "content": []}]))
        return self._blank


@dataclass
class SFTCollator:
    """Right-pads a list of samples into one batch in the layout the model's forward takes.

    ``vision_chunked_length`` (media items per vision-tower call) rides along in the batch when set.
    """

    pad_token_id: int
    vision_chunked_length: int | None = None

    def __call__(self, features: list[Features]) -> dict[str, torch.Tensor]:
        batch_size = len(features)
        length = max(len(f["input_ids"]) for f in features)
        frames = max(f["cross_attention_mask"].shape[-1] for f in features)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
        # Padding rows and frames a sample lacks stay masked (True).
        cross_attention_mask = torch.ones(batch_size, 1, length, frames, dtype=torch.bool)
        for b, f in enumerate(features):
            n, f_frames = f["cross_attention_mask"].shape
            input_ids[b, :n] = f["input_ids"]
            labels[b, :n] = f["labels"]
            attention_mask[b, :n] = 1
            cross_attention_mask[b, 0, :n, :f_frames] = f["cross_attention_mask"]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": torch.cat([f["pixel_values"] for f in features]),
            "grid_thw": torch.cat([f["grid_thw"] for f in features]),
            "cross_attention_mask": cross_attention_mask,
            "media_nums_per_sample": torch.tensor(
                [f["media_nums_per_sample"] for f in features], dtype=torch.long
            ),
        }
        if self.vision_chunked_length:
            batch["vision_chunked_length"] = self.vision_chunked_length
        return batch
