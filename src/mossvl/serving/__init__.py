"""Serving: the OpenAI-compatible HTTP API over the engine."""
