"""Command-line arguments of fine-tuning: model, data and training dataclasses parsed by HfArgumentParser.

Names and defaults follow the official `finetune/` script (spec: reference-features §3); every standard
`transformers.TrainingArguments` flag passes through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers

from ..constants import VISION_CHUNKED_LENGTH

LORA_SCOPES = ("self", "cross", "both")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Checkpoint folder (or hub id) of the model to fine-tune."}
    )
    cross_attention_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Cross-attention backend of the model; left to the checkpoint's default when unset."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Self-attention backend (e.g. sdpa, flash_attention_2); model default if unset."},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weight dtype at load time. auto: bfloat16 with --bf16, float16 with --fp16, else float32.",
            "choices": DTYPES,
        },
    )
    tune_vision: bool = field(
        default=False, metadata={"help": "Train the vision tower and the per-frame separator token."}
    )
    tune_language: bool = field(
        default=True, metadata={"help": "Train the language model (decoder + embeddings)."}
    )
    tune_lm_head: bool = field(default=True, metadata={"help": "Train the output projection (lm_head)."})


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "Training data: a JSON list or a JSONL file of records."})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder that relative media paths resolve against (default: the data file's)."},
    )
    max_length: int = field(
        default=4096,
        metadata={
            "help": "Longest token sequence; longer samples drop trailing turns or text (never media halves)."
        },
    )
    skip_bad_records: bool = field(
        default=False,
        metadata={
            "help": "Skip (and count) malformed records and samples that cannot fit max_length, instead of raising."
        },
    )
    cache_samples: bool = field(
        default=False,
        metadata={
            "help": "Keep every processed sample in memory after its first use, so later epochs skip media "
            "decoding (needs memory for all samples' pixels; best with --dataloader_num_workers 0)."
        },
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    vision_chunked_length: int = field(
        default=VISION_CHUNKED_LENGTH, metadata={"help": "Media items per vision-tower call (a memory knob)."}
    )
    lora_enable: bool = field(
        default=False, metadata={"help": "Train LoRA adapters instead of the full weights."}
    )
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj",
        metadata={
            "help": "Comma-separated module names that get adapters (e.g. add gate_proj,up_proj,down_proj)."
        },
    )
    lora_scope: str = field(
        default="both",
        metadata={"help": "Decoder layers that get adapters: self, cross or both.", "choices": LORA_SCOPES},
    )
    lora_vision: bool = field(
        default=False,
        metadata={
            "help": "Also put adapters on vision-tower modules named in lora_target_modules (e.g. qkv,proj)."
        },
    )
    merge_lora: bool = field(
        default=True,
        metadata={
            "help": "After LoRA training, merge the adapters and save a plain checkpoint in output_dir."
        },
    )
    decision_loss_weight: float = field(
        default=1.0,
        metadata={
            "help": "Loss weight of the first supervised token after each unsupervised stretch: in realtime "
            "samples, the choice after every frame between <|silence|> and a reply (1: plain cross-entropy)."
        },
    )
    reply_start_loss_weight: float = field(
        default=1.0,
        metadata={
            "help": "Extra loss weight (times decision_loss_weight) of the choices that open a reply rather than "
            "<|silence|>: in realtime samples they are rare next to the silent frames (1: no extra weight)."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator consumes the dataset's own keys."}
    )
