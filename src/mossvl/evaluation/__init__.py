"""Evaluation of a model on a question set: accuracy per task type and temporal grounding error."""
