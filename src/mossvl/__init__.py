"""Open, fast, weight-compatible Python implementation of MOSS-VL."""
