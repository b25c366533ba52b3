"""Inference: the continuous-batching engine and its front ends (Python API, sessions, official offline methods)."""

from .model_methods import attach_official_methods

attach_official_methods()
