"""Bridges to other systems: Ray Data batch inference (``integrations.ray``, needs the ``ray`` extra) and the
SGLang plugin that registers MOSS-VL with transformers' Auto classes (``integrations.sglang``).

Nothing here is imported by ``import mossvl``; each bridge imports its third-party package only when used.
"""
