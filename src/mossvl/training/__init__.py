"""Supervised fine-tuning (full and LoRA) on the official data formats."""
