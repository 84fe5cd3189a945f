"""The pipeline's components. Each body: imports, one call into ``pretrain``, writing its outputs.

Lightweight Python components: KFP ships each function's source to the step's container (or to a
local subprocess) where ``pretrain`` is installed, so the imports live inside the bodies. The
functions here are plain; ``components(image)`` makes them KFP components on a given image, so the
image comes from the recipe (``cluster.image``) or ``pretrain compile --image`` at compile time.
"""

from types import SimpleNamespace

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def plan(recipe: str, manifest: Output[Artifact], summary: Output[Markdown], metrics: Output[Metrics]) -> list:
    """Create the run root's bucket when missing, then resolve the sources into input partitions (built-in
    corpora are built here)."""
    from pretrain.components.outputs import write_outputs

    from pretrain.config import from_json
    from pretrain.data.plan import plan as run
    from pretrain.storage import ensure_bucket

    parsed = from_json(recipe)
    ensure_bucket(parsed.root, secret=parsed.cluster.s3_secret)
    result = run(parsed)
    write_outputs(result, manifest, summary, metrics)
    return result.extra["partitions"]


def ingest(recipe: str, partition: dict, manifest: Output[Dataset], summary: Output[Markdown],
           metrics: Output[Metrics]):
    """Read one partition of a raw source into a Parquet documents shard."""
    from pretrain.components.outputs import write_outputs

    from pretrain.config import from_json
    from pretrain.data.ingest import ingest as run

    write_outputs(run(from_json(recipe), partition), manifest, summary, metrics)


def filter_documents(recipe: str, documents: Input[Dataset], manifest: Output[Dataset],
                     summary: Output[Markdown], metrics: Output[Metrics]):
    """Apply the quality rules; dropped documents are kept aside with their reason."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.data.filters import filter_shard

    write_outputs(filter_shard(from_json(recipe), read_manifest(documents)), manifest, summary, metrics)


def dedup_plan(recipe: str, filtered: Input[list[Dataset]]) -> list:
    """Order the filtered partitions for dedup and save the plan; the partition indices to fan out over.
    Where every filter partition has finished: their counts go to the Pushgateway (observe.pushgateway)."""
    from pretrain.components.outputs import read_manifest

    from pretrain.config import from_json
    from pretrain.data.dedup.plan import make_plan
    from pretrain.observe.pushgateway import push_step

    parsed = from_json(recipe)
    manifests = [read_manifest(a) for a in filtered]
    push_step(parsed.observe.pushgateway, parsed.name, "filter", [m.stats for m in manifests])
    return make_plan(parsed, manifests).partitions


def dedup_sketch(recipe: str, partition: int) -> str:
    """One partition: exact keys by prefix shard, MinHash signatures and LSH band keys."""
    import json

    from pretrain.data.dedup.stages import sketch_one

    return json.dumps(sketch_one(recipe, int(partition)))


def dedup_bucket_plan(recipe: str, sketched: list, groups: int) -> list:
    """After every sketch: the bucket units (exact prefix shards, LSH bands) dealt into task groups."""
    from pretrain.config import from_json
    from pretrain.data.dedup.plan import load_plan
    from pretrain.data.dedup.stages import bucket_groups

    return bucket_groups(load_plan(from_json(recipe)), int(groups))


def dedup_buckets(recipe: str, units: list) -> str:
    """Some bucket units: duplicate exact keys of a prefix shard, candidate pairs of a band."""
    import json

    from pretrain.data.dedup.stages import buckets_some

    return json.dumps(buckets_some(recipe, list(units)))


def dedup_cluster(recipe: str, bucketed: list) -> list:
    """Verified pairs -> connected components -> the removals of each partition; the partitions to fan out over."""
    from pretrain.config import from_json
    from pretrain.data.dedup.clusters import cluster
    from pretrain.data.dedup.plan import load_plan

    plan = load_plan(from_json(recipe))
    cluster(plan)
    return plan.partitions


def dedup_remove(recipe: str, partition: int) -> str:
    """One partition's deduplicated shard (one representative per cluster kept)."""
    import json

    from pretrain.data.dedup.stages import remove_one

    return json.dumps(remove_one(recipe, int(partition))["stats"])


def dedup(recipe: str, removed: list, manifest: Output[Dataset], summary: Output[Markdown], metrics: Output[Metrics]):
    """The deduplicated documents manifest: stats per source and kind, the ledger, the cluster report."""
    from pretrain.components.outputs import write_outputs

    from pretrain.config import from_json
    from pretrain.data.dedup.plan import load_plan
    from pretrain.data.dedup.stages import finish
    from pretrain.observe.pushgateway import push_step

    parsed = from_json(recipe)
    result = finish(load_plan(parsed))
    push_step(parsed.observe.pushgateway, parsed.name, "dedup", [result.stats])
    write_outputs(result, manifest, summary, metrics)


def tokenize_prepare(recipe: str, documents: Input[Dataset]) -> list:
    """Train or load the tokenizer, choose the encoder, save the plan; the partition indices to encode."""
    from pretrain.components.outputs import read_manifest

    from pretrain.config import from_json
    from pretrain.data.tokenize import prepare

    return list(range(len(prepare(from_json(recipe), read_manifest(documents)).partitions)))


def tokenize_encode(recipe: str, partition: int) -> str:
    """One documents partition -> its train and validation token shards."""
    import json

    from pretrain.data.tokenize import encode_one

    return json.dumps(encode_one(recipe, int(partition)))


def tokenize(recipe: str, encoded: list, manifest: Output[Dataset], summary: Output[Markdown],
             metrics: Output[Metrics]):
    """After every partition: counts per source, the mixture and the validation check; the tokens manifest."""
    from pretrain.components.outputs import write_outputs

    from pretrain.config import from_json
    from pretrain.data.tokenize import finish, load_plan
    from pretrain.observe.pushgateway import push_step

    parsed = from_json(recipe)
    result = finish(parsed, load_plan(parsed))
    push_step(parsed.observe.pushgateway, parsed.name, "tokenize", [result.stats])
    write_outputs(result, manifest, summary, metrics)


def train(recipe: str, run_id: str, tokens: Input[Dataset], manifest: Output[Artifact], summary: Output[Markdown],
          metrics: Output[Metrics]):
    """Launch the training job (torchrun in this pod, or a PyTorchJob/TrainJob named after ``run_id``, which a
    retry attaches to) and describe its committed checkpoints."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.train.step import train_step

    write_outputs(train_step(from_json(recipe), read_manifest(tokens), run_id=run_id), manifest, summary, metrics)


def cleanup(recipe: str, run_id: str, status: dsl.PipelineTaskFinalStatus):
    """The exit handler: a run that did not succeed deletes its cluster training job (a no-op otherwise); every
    run's data-step metrics leave the Pushgateway (observe.pushgateway)."""
    from pretrain.config import from_json
    from pretrain.observe.pushgateway import delete_run
    from pretrain.train.step import cleanup_step

    parsed = from_json(recipe)
    delete_run(parsed.observe.pushgateway, parsed.name)
    print(cleanup_step(parsed, run_id, status.state))


def export(recipe: str, checkpoints: Input[Artifact], tokens: Input[Dataset], manifest: Output[Model],
           summary: Output[Markdown], metrics: Output[Metrics]):
    """Export the latest checkpoint as a Hugging Face model folder."""
    from pretrain.components.outputs import read_manifest, write_outputs

    from pretrain.config import from_json
    from pretrain.model.export import export_model

    write_outputs(export_model(from_json(recipe), read_manifest(checkpoints), read_manifest(tokens)),
                  manifest, summary, metrics)


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


STEPS = (plan, ingest, filter_documents, dedup_plan, dedup_sketch, dedup_bucket_plan, dedup_buckets, dedup_cluster,
         dedup_remove, dedup, tokenize_prepare, tokenize_encode, tokenize, train, export, evaluate, cleanup)


def components(image: str, train_image: str | None = None) -> SimpleNamespace:
    """Every step as a lightweight KFP component on ``image`` (the train step on ``train_image``), with no
    pip install at run time: ``pretrain`` is in the image."""
    return SimpleNamespace(**{
        f.__name__: dsl.component(f, base_image=(train_image or image) if f is train else image,
                                  install_kfp_package=False)
        for f in STEPS})
