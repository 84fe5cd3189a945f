"""The pipeline's components. Each body: imports, one call into ``pretrain``, writing its outputs.

Lightweight Python components: KFP ships each function's source to the step's container (or to a
local subprocess) where ``pretrain`` is installed, so the imports live inside the bodies.
"""


import os

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

IMAGE = os.environ.get("PRETRAIN_IMAGE", "ghcr.io/pretrain-dev/pretrain:0.1.0")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan(recipe: str, manifest: Output[Artifact], summary: Output[Markdown], metrics: Output[Metrics]) -> list:
    """Resolve the sources into input partitions (built-in corpora are built here)."""
    from pretrain.components.outputs import write_outputs

    from pretrain.config import from_json
    from pretrain.data.plan import plan as run

    result = run(from_json(recipe))
    write_outputs(result, manifest, summary, metrics)
    return result.extra["partitions"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(recipe: str, partition: dict, manifest: Output[Dataset], summary: Output[Markdown],
           metrics: Output[Metrics]):
    """Read one partition of a raw source into a Parquet documents shard."""
    from pretrain.components.outputs import write_outputs

    from pretrain.config import from_json
    from pretrain.data.ingest import ingest as run

    write_outputs(run(from_json(recipe), partition), manifest, summary, metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def filter_documents(recipe: str, documents: Input[Dataset], manifest: Output[Dataset],
                     summary: Output[Markdown], metrics: Output[Metrics]):
    """Apply the quality rules; dropped documents are kept aside with their reason."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.data.filters import filter_shard

    write_outputs(filter_shard(from_json(recipe), read_manifest(documents)), manifest, summary, metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def dedup(recipe: str, filtered: Input[list[Dataset]], manifest: Output[Dataset], summary: Output[Markdown],
          metrics: Output[Metrics]):
    """Remove exact duplicates across all kept shards."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.data.dedup import dedup as run

    write_outputs(run(from_json(recipe), [read_manifest(a) for a in filtered]), manifest, summary, metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tokenize(recipe: str, documents: Input[Dataset], manifest: Output[Dataset], summary: Output[Markdown],
             metrics: Output[Metrics]):
    """Train or load the tokenizer; write train/validation token shards."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.data.tokenize import tokenize as run

    write_outputs(run(from_json(recipe), read_manifest(documents)), manifest, summary, metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(recipe: str, tokens: Input[Dataset], manifest: Output[Artifact], summary: Output[Markdown],
          metrics: Output[Metrics]):
    """Launch the training job (torchrun locally) and describe its committed checkpoints."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.train.step import train_step

    write_outputs(train_step(from_json(recipe), read_manifest(tokens)), manifest, summary, metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(recipe: str, checkpoints: Input[Artifact], tokens: Input[Dataset], manifest: Output[Model],
           summary: Output[Markdown], metrics: Output[Metrics]):
    """Export the latest checkpoint as a Hugging Face model folder."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.model.export import export_model

    write_outputs(export_model(from_json(recipe), read_manifest(checkpoints), read_manifest(tokens)),
                  manifest, summary, metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(recipe: str, model: Input[Model], tokens: Input[Dataset], checkpoints: Input[Artifact],
             manifest: Output[Artifact], summary: Output[Markdown], metrics: Output[Metrics], report: Output[HTML]):
    """Held-out loss, perplexity, bits per byte and samples; the report for the KFP UI."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.evaluate.step import evaluate as run
    from pretrain.storage import read_text

    result = run(from_json(recipe), read_manifest(model), read_manifest(tokens), read_manifest(checkpoints))
    write_outputs(result, manifest, summary, metrics)
    with open(summary.path, "w") as f:
        f.write(read_text(result.extra["report_md"]))
    with open(report.path, "w") as f:
        f.write(read_text(result.extra["report_html"]))
