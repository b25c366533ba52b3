#!/usr/bin/env bash
# Fine-tuning recipes for MOSS-VL. Pick one with MODE (single | lora | torchrun | deepspeed2 | deepspeed3 | fsdp):
#   MODEL=/path/to/MOSS-VL MODE=lora bash examples/finetune/run_sft.sh
# DATA may be a JSON list or a JSONL file in either record format; MEDIA_DIR is where its relative paths point
# (default here: the repository's test media, so the sample data run as they are).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="${MODEL:?set MODEL to a MOSS-VL checkpoint folder}"
DATA="${DATA:-$HERE/data_prompt_response.json}"
MEDIA_DIR="${MEDIA_DIR:-$HERE/../../tests/fixtures/golden/media}"
OUTPUT="${OUTPUT:-output/sft-$(date +%Y%m%d-%H%M%S)}"
NGPUS="${NGPUS:-8}"
MODE="${MODE:-single}"

COMMON=(
  --model_name_or_path "$MODEL"
  --data_path "$DATA"
  --data_dir "$MEDIA_DIR"
  --output_dir "$OUTPUT"
  --max_length 4096
  --bf16 True
  --per_device_train_batch_size 1
  --gradient_accumulation_steps 8
  --num_train_epochs 1
  --learning_rate 1e-5
  --lr_scheduler_type cosine
  --warmup_steps 0.03
  --weight_decay 0.0
  --optim adamw_torch
  --activation_checkpointing True
  --logging_steps 10
  --save_steps 500
  --save_total_limit 2
  --dataloader_num_workers 4
  --report_to none
)

case "$MODE" in
  single)      # one GPU, full fine-tuning of the language model (vision frozen)
    python -m mossvl.training.finetune "${COMMON[@]}" ;;
  lora)        # one GPU, LoRA on the attention projections of every decoder layer, merged at the end
    python -m mossvl.training.finetune "${COMMON[@]}" --lora_enable True --lora_r 64 --lora_alpha 128 \
      --lora_scope both --learning_rate 2e-4 ;;
  torchrun)    # data parallel over NGPUS GPUs
    torchrun --nproc_per_node "$NGPUS" -m mossvl.training.finetune "${COMMON[@]}" ;;
  deepspeed2)  # ZeRO-2: optimizer states and gradients sharded
    torchrun --nproc_per_node "$NGPUS" -m mossvl.training.finetune "${COMMON[@]}" \
      --deepspeed "$HERE/ds_zero2.json" ;;
  deepspeed3)  # ZeRO-3: parameters sharded too; the final save gathers 16-bit weights
    torchrun --nproc_per_node "$NGPUS" -m mossvl.training.finetune "${COMMON[@]}" \
      --deepspeed "$HERE/ds_zero3.json" ;;
  fsdp)        # FSDP2 through accelerate (set num_processes in the yaml)
    accelerate launch --config_file "$HERE/accelerate_fsdp.yaml" -m mossvl.training.finetune "${COMMON[@]}" ;;
  *) echo "unknown MODE=$MODE (single | lora | torchrun | deepspeed2 | deepspeed3 | fsdp)" >&2; exit 2 ;;
esac
