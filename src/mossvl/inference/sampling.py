"""Next-token selection with per-row settings: validated generation settings, greedy or sampled choice per row.

HF ``generate()`` applies one set of logits processors to the whole batch; the engine needs one set per row so
that every query of a batch keeps its own temperature, top-k, top-p, repetition penalty and seed. Each row gets
its own list of transformers' logits processors; rows that are plain greedy are decided together by one argmax.

``sequence_bias`` is HF's: an additive bias on a token (or on the last token of a sequence, when the tokens before
it were just generated), given as ``{(ids...): bias}`` or as ``generation_config.json`` writes it,
``[[[ids...], bias], ...]``. A realtime checkpoint can use it to set how readily it breaks its silence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..constants import GENERATE_DEFAULTS
from ..errors import QueryError

# Generate kwargs of HF users that do not change greedy/sampled decoding here (accepted and ignored).
_IGNORED_KEYS = {"use_cache", "return_dict_in_generate", "output_scores", "output_logits", "pad_token_id"}
# Generate kwargs that would change the result but only have their default value here.
_ONLY_DEFAULT = {"num_beams": 1, "num_return_sequences": 1}
# Ranges of the numeric settings (see GenerationSettings.check).
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 100.0
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0
_MAX_INT32 = 2**31 - 1
_MIN_SEED, _MAX_SEED = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
# generation_config.json fields the engine reads; the rest configure HF generate() only.
_FROM_GENERATION_CONFIG = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "sequence_bias",
)
# A bias this large already decides every choice; the cap keeps float32 logits finite.
MAX_SEQUENCE_BIAS = 1e4


@dataclass(frozen=True)
class GenerationSettings:
    """How one request is decoded. ``temperature <= 0`` or ``do_sample=False`` means greedy decoding.

    ``stop`` strings cut the text (the cut text is never streamed); ``stop_token_ids`` end the answer like EOS;
    ``skip_special_tokens`` False keeps control tokens in the text (raw realtime output).
    """

    max_new_tokens: int = GENERATE_DEFAULTS["max_new_tokens"]
    do_sample: bool = GENERATE_DEFAULTS["do_sample"]
    temperature: float = GENERATE_DEFAULTS["temperature"]
    top_k: int = GENERATE_DEFAULTS["top_k"]
    top_p: float = GENERATE_DEFAULTS["top_p"]
    repetition_penalty: float = GENERATE_DEFAULTS["repetition_penalty"]
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    skip_special_tokens: bool = True
    seed: int | None = None
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] = ()

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature <= 0

    @classmethod
    def from_generation_config(cls, generation_config) -> GenerationSettings:
        """Defaults of a checkpoint: the official generate defaults overridden by what its generation_config.json
        sets explicitly (HF's own defaults, e.g. ``max_length`` 20, are not taken)."""
        if generation_config is None:
            return cls()
        explicit = generation_config.to_diff_dict()
        return cls.from_kwargs({key: explicit[key] for key in _FROM_GENERATION_CONFIG if key in explicit})

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping | None = None, base: GenerationSettings | None = None
    ) -> GenerationSettings:
        """Build settings from a generate-kwargs dict on top of ``base``; unknown keys or bad values raise QueryError."""
        base = base or cls()
        kwargs = dict(kwargs or {})
        if "stop_strings" in kwargs:
            kwargs.setdefault("stop", kwargs.pop("stop_strings"))
        for key, default in _ONLY_DEFAULT.items():
            if key in kwargs and kwargs.pop(key) not in (None, default):
                raise QueryError(
                    f"generate kwarg {key} is not supported (only {key}={default}): the engine decodes one greedy "
                    "or sampled sequence per query; send the query several times with different seeds instead"
                )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known - _IGNORED_KEYS)
        if unknown:
            raise QueryError(
                f"unknown generate kwarg(s) {unknown}; supported: {sorted(known)} (and vision_chunked_length)"
            )
        values = {key: kwargs[key] for key in known if key in kwargs and kwargs[key] is not None}
        if isinstance(values.get("stop"), str):
            values["stop"] = (values["stop"],)
        for key, expected in (
            ("stop", "a string or a list of strings"),
            ("stop_token_ids", "a list of token ids"),
        ):
            if key in values:
                if not isinstance(values[key], list | tuple):
                    raise QueryError(
                        f"generate kwarg {key}={values[key]!r:.100} is invalid: expected {expected}"
                    )
                values[key] = tuple(values[key])
        if "sequence_bias" in values:
            values["sequence_bias"] = _sequence_bias_pairs(values["sequence_bias"])
        settings = replace(base, **values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise QueryError naming the first invalid setting and its allowed range.

        The ranges keep every row's arithmetic finite: a temperature or penalty outside them overflows float32
        logits into NaN, and the ints bound what a torch generator or tensor accepts.
        """
        checks = [
            ("max_new_tokens", _is_int(self.max_new_tokens, 0, _MAX_INT32), f"an int in [0, {_MAX_INT32}]"),
            ("do_sample", isinstance(self.do_sample, bool), "a bool"),
            (
                "temperature",
                _is_number(self.temperature)
                and (self.temperature <= 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE),
                f"a finite number: <= 0 means greedy, else in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]",
            ),
            ("top_k", _is_int(self.top_k, 0, _MAX_INT32), f"an int in [0, {_MAX_INT32}] (0 disables it)"),
            ("top_p", _is_number(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1]"),
            (
                "repetition_penalty",
                _is_number(self.repetition_penalty)
                and MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY,
                f"a number in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}] (1 disables it)",
            ),
            (
                "stop",
                all(isinstance(s, str) and s for s in self.stop),
                "a non-empty string or a list of them",
            ),
            (
                "stop_token_ids",
                all(_is_int(t, 0, _MAX_INT32) for t in self.stop_token_ids),
                f"a list of token ids in [0, {_MAX_INT32}]",
            ),
            (
                "seed",
                self.seed is None or _is_int(self.seed, _MIN_SEED, _MAX_SEED),
                f"None or an int in [{_MIN_SEED}, {_MAX_SEED}]",
            ),
            ("skip_special_tokens", isinstance(self.skip_special_tokens, bool), "a bool"),
            (
                "sequence_bias",
                all(
                    ids
                    and all(_is_int(t, 0, _MAX_INT32) for t in ids)
                    and _is_number(bias)
                    and abs(bias) <= MAX_SEQUENCE_BIAS
                    for ids, bias in self.sequence_bias
                ),
                f"{{(token ids...): bias}} or [[[token ids...], bias], ...] with non-empty ids and |bias| <= "
                f"{MAX_SEQUENCE_BIAS:g}",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise QueryError(
                    f"generate kwarg {name}={getattr(self, name)!r:.100} is invalid: expected {expected}"
                )


def _sequence_bias_pairs(value: object) -> tuple:
    """``((ids...), bias)`` pairs of HF's two ``sequence_bias`` forms; anything else raises QueryError."""
    pairs = value.items() if isinstance(value, Mapping) else value
    try:
        return tuple((tuple(ids), bias) for ids, bias in pairs)
    except (TypeError, ValueError):
        raise QueryError(
            f"generate kwarg sequence_bias={value!r:.100} is invalid: expected {{(token ids...): bias}} or "
            "[[[token ids...], bias], ...]"
        ) from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class RowSampler:
    """Chooses the next token of one batch row from its logits, with that row's processors and random generator."""

    def __init__(self, settings: GenerationSettings, device: torch.device | str = "cpu"):
        self.settings = settings
        self.processors = LogitsProcessorList()
        if settings.sequence_bias:
            self.processors.append(
                SequenceBiasLogitsProcessor(
                    [[list(ids), float(bias)] for ids, bias in settings.sequence_bias]
                )
            )
        if settings.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty)))
        if not settings.greedy:
            if settings.temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(float(settings.temperature)))
            if settings.top_k > 0:
                self.processors.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(float(settings.top_p)))
        self.generator = None
        if settings.seed is not None and not settings.greedy:
            self.generator = torch.Generator(device=device).manual_seed(settings.seed)

    @property
    def needs_history(self) -> bool:
        """True when the row's processors read its token history (repetition penalty, sequence bias)."""
        return self.settings.repetition_penalty != 1.0 or bool(self.settings.sequence_bias)

    @property
    def plain_greedy(self) -> bool:
        """True when the choice is a bare argmax of the raw logits (no processor changes it)."""
        return self.settings.greedy and not self.processors

    def __call__(self, history: torch.Tensor, logits: torch.Tensor) -> int:
        """``history`` (1, T) prompt + generated ids, ``logits`` (1, V) float32 -> chosen token id."""
        scores = self.processors(history, logits)
        if self.settings.greedy:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def select_next_tokens(
    samplers: Sequence[RowSampler], histories: Sequence[torch.Tensor | None], logits: torch.Tensor
) -> list[int]:
    """Next token per row. ``logits`` (B, V) float32; ``histories[i]`` is only read by rows that need it."""
    choices = logits.argmax(dim=-1).tolist()
    for row, sampler in enumerate(samplers):
        if not sampler.plain_greedy:
            choices[row] = sampler(histories[row], logits[row : row + 1])
    return choices
