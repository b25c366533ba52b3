"""MOSS-VL model: config, vision encoder, XRoPE, cross-attention masks, text decoder and the top-level model."""
