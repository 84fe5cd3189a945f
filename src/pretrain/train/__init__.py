"""Training: the loop, its callbacks, DCP checkpoints; ``python -m pretrain.train`` is the entry point."""
