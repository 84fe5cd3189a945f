"""Thin KFP components, one per step: imports, one call into ``pretrain``, and writing the outputs."""
