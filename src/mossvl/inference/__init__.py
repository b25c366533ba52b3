"""Inference: one engine behind the Python API, the official offline methods and the CLI."""
