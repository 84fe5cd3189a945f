"""Launchers: run a resolved training job locally (torchrun) or, later, as a PyTorchJob / TrainJob."""
