"""Datasets and tokenizers that the project builds itself (synthetic demo data)."""
