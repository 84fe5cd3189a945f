"""The pipeline DAG(s): components composed, fanned out, given their Kubernetes settings, compiled."""
