"""Writing a step's KFP outputs: the manifest artifact, its Metrics and a Markdown summary."""

from __future__ import annotations


def read_manifest(artifact):
    from pretrain.manifest import Manifest

    with open(artifact.path) as f:
        return Manifest.from_json(f.read())


def write_outputs(result, manifest, summary, metrics) -> None:
    from pretrain.report import flat_metrics, manifest_markdown

    with open(manifest.path, "w") as f:
        f.write(result.to_json())
    manifest.metadata.update({"kind": result.kind, "root": result.root, "fingerprint": result.fingerprint,
                              "shards": len(result.shards)})
    with open(summary.path, "w") as f:
        f.write(manifest_markdown(result))
    for key, value in flat_metrics(result).items():
        metrics.log_metric(key, value)
