"""Launchers: run a resolved training job locally (``local``: torchrun) or on a cluster (``pytorchjob``:
Training Operator PyTorchJob; ``trainjob``: Kubeflow Trainer v2 TrainJob). ``render`` builds the cluster
manifests (pure); ``cluster`` creates or attaches to them, waits and deletes, with ``api`` (client, errors)
and ``logs`` (node 0's log, disrupted pods)."""
