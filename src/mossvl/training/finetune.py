"""Supervised fine-tuning with transformers' Trainer: full weights with module freezing, or LoRA adapters via PEFT.

Run ``python -m mossvl.training.finetune --model_name_or_path M --data_path D --output_dir O [HF flags]`` (or one
``.json``/``.yaml`` file holding the same keys); ``torchrun``, ``accelerate launch`` and ``--deepspeed`` work as
with any Trainer script. The output folder loads with ``MossVLForConditionalGeneration.from_pretrained``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import torch
import transformers
from accelerate import PartialState
from accelerate.utils import DistributedType
from transformers import HfArgumentParser, Trainer
from transformers.trainer_utils import get_last_checkpoint

from ..constants import SILENCE
from ..errors import ConfigError
from .arguments import DataArguments, ModelArguments, TrainingArguments
from .data import SFTCollator, SFTDataset
from .loss import check_loss_weights, decision_weighted_loss

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


def parse_args(
    argv: list[str] | None = None, prog: str | None = None
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Flags (every HF TrainingArguments flag included), or a single .json / .yaml file with the same keys."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), prog=prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def load_dtype(model_args: ModelArguments, training_args: TrainingArguments) -> torch.dtype:
    if model_args.dtype != "auto":
        return getattr(torch, model_args.dtype)
    if training_args.bf16:
        return torch.bfloat16
    return torch.float16 if training_args.fp16 else torch.float32


def load_model(model_args: ModelArguments, dtype: torch.dtype):
    from ..model import MossVLForConditionalGeneration

    kwargs = {"dtype": dtype}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    # Only forwarded when set, so a checkpoint's own default backend stays in charge otherwise.
    if model_args.cross_attention_implementation:
        kwargs["cross_attention_implementation"] = model_args.cross_attention_implementation
    return MossVLForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **kwargs)


def freeze_modules(model, model_args: ModelArguments) -> None:
    """Set requires_grad per part: vision tower + separator token, language model, lm_head."""
    model.requires_grad_(False)
    model.model.visual.requires_grad_(model_args.tune_vision)
    model.model.separator_token.requires_grad_(model_args.tune_vision)
    model.model.language_model.requires_grad_(model_args.tune_language)
    model.lm_head.requires_grad_(model_args.tune_lm_head)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("nothing to train: tune_vision, tune_language and tune_lm_head are all False")


def lora_target_regex(model, target_modules: str, scope: str, vision: bool = False) -> str:
    """PEFT ``target_modules`` regex: the named Linears of the decoder layers in ``scope``, and of the ViT if asked.

    ``scope`` picks decoder layers by kind: ``self`` (self-attention layers), ``cross`` (cross-attention layers)
    or ``both``; a layer's MLP belongs to its layer's scope. The vision tower is untouched unless ``vision``.
    """
    names = [name.strip() for name in target_modules.split(",") if name.strip()]
    if not names:
        raise ConfigError("lora_target_modules is empty; name at least one module, e.g. q_proj,v_proj")
    text_config = model.config.text_config
    cross = set(text_config.cross_attention_layers)
    layers = {
        "self": [i for i in range(text_config.num_hidden_layers) if i not in cross],
        "cross": sorted(cross),
        "both": list(range(text_config.num_hidden_layers)),
    }[scope]
    leaf = "(?:" + "|".join(re.escape(name) for name in names) + ")"
    indices = "(?:" + "|".join(str(i) for i in layers) + ")"
    patterns = [rf"model\.language_model\.layers\.{indices}\.(?:[\w.]+\.)?{leaf}"]
    if vision:
        patterns.append(rf"model\.visual\.(?:[\w.]+\.)?{leaf}")
    regex = "|".join(patterns)
    if not any(re.fullmatch(regex, name) for name, _ in model.named_modules()):
        raise ConfigError(
            f"lora_target_modules {names} match no module in the {scope} decoder layers"
            + (" or the vision tower" if vision else "")
        )
    return regex


def apply_lora(model, training_args: TrainingArguments):
    """Wrap ``model`` with LoRA adapters; every base weight is frozen, only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        lora_dropout=training_args.lora_dropout,
        target_modules=lora_target_regex(
            model, training_args.lora_target_modules, training_args.lora_scope, training_args.lora_vision
        ),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merge_lora(
    base_model_path: str, adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, dtype
) -> None:
    """Fold the adapters of ``adapter_dir`` into the base weights and save a plain checkpoint to ``output_dir``.

    Reloads the base checkpoint on the CPU instead of merging the trained (possibly sharded) model in place, so it
    works the same after DDP, FSDP and ZeRO-3.
    """
    from peft import PeftModel
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    from ..model import MossVLForConditionalGeneration

    if is_deepspeed_zero3_enabled():
        # Training is over: load the base as a whole CPU model on this one rank, not partitioned across ranks.
        unset_hf_deepspeed_config()
    base = MossVLForConditionalGeneration.from_pretrained(base_model_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    set_use_cache(merged.config, True)
    merged.save_pretrained(output_dir)


def set_use_cache(config, value: bool) -> None:
    # The decoder reads its own text config; without this a KV cache would be built (and, under activation
    # checkpointing, filled twice) in every training forward.
    config.use_cache = value
    config.get_text_config().use_cache = value


def allow_fsdp_on_cpu(training_args: TrainingArguments) -> None:
    """Let an FSDP launch (an accelerate FSDP config, or ``--fsdp``) shard the model over CPU processes too.

    accelerate turns FSDP on only for accelerator process groups and silently trains with DDP over CPU (gloo) ones,
    although FSDP2 itself runs there. Labelling the CPU group a GPU one before the Trainer builds its Accelerator takes
    accelerate's FSDP path, and the device stays the CPU. This is what lets multi-process FSDP runs (saving and
    resuming included) be tested without GPUs; on GPUs it does nothing.
    """
    fsdp = training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    _ = training_args.device  # creates the process group and accelerate's shared state
    if fsdp and PartialState().distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def prepare_training_args(training_args: TrainingArguments) -> None:
    # Vision states feed every checkpointed cross-attention layer, which reentrant checkpointing cannot handle.
    kwargs = dict(training_args.activation_checkpointing_kwargs or {})
    kwargs["use_reentrant"] = False
    training_args.activation_checkpointing_kwargs = training_args.gradient_checkpointing_kwargs = kwargs
    if training_args.remove_unused_columns:
        raise ConfigError("remove_unused_columns must be False: the collator needs every dataset key")
    if not training_args.label_names:
        training_args.label_names = ["labels"]


def train(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> Path:
    """Fine-tune and save; returns the output folder, which holds a loadable checkpoint and the processor."""
    from ..processing.processor import MossVLProcessor

    prepare_training_args(training_args)
    weight, reply_weight = training_args.decision_loss_weight, training_args.reply_start_loss_weight
    # Checked before anything loads, so that a bad weight fails at once.
    check_loss_weights(weight, reply_weight)
    transformers.set_seed(training_args.seed)
    processor = MossVLProcessor.from_pretrained(model_args.model_name_or_path)
    processor.tokenizer.padding_side = "right"
    loss_func = None
    if (weight, reply_weight) != (1, 1):
        silence_id = processor.tokenizer.convert_tokens_to_ids(SILENCE)
        loss_func = decision_weighted_loss(weight, reply_weight, silence_id)
    dataset = SFTDataset(
        data_args.data_path,
        processor,
        max_length=data_args.max_length,
        data_dir=data_args.data_dir,
        skip_bad_records=data_args.skip_bad_records,
        cache_samples=data_args.cache_samples,
    )
    dtype = load_dtype(model_args, training_args)
    model = load_model(model_args, dtype)
    set_use_cache(model.config, False)
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
    else:
        freeze_modules(model, model_args)
    if training_args.activation_checkpointing:
        model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    allow_fsdp_on_cpu(training_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=SFTCollator(processor.tokenizer.pad_token_id, training_args.vision_chunked_length),
        processing_class=processor,
        compute_loss_func=loss_func,
    )
    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir):
        resume = get_last_checkpoint(training_args.output_dir)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    if dataset.skipped:
        logger.warning("skipped %d bad records of %s", len(dataset.skipped), data_args.data_path)

    output_dir = Path(training_args.output_dir)
    if not training_args.lora_enable:
        set_use_cache(trainer.model.config, True)
        trainer.save_model(str(output_dir))
        return output_dir
    trainer.save_model(str(output_dir / ADAPTER_DIR))
    if training_args.merge_lora:
        if trainer.is_world_process_zero():
            merge_lora(model_args.model_name_or_path, output_dir / ADAPTER_DIR, output_dir, dtype)
            processor.save_pretrained(str(output_dir))
        trainer.accelerator.wait_for_everyone()
    return output_dir


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv, prog)
    train(model_args, data_args, training_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
