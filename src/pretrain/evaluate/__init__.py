"""Evaluation: held-out loss, perplexity, bits per byte, samples, and the report data."""
