"""The pre-training DAG: plan -> ingest/filter (fan-out) -> dedup (staged fan-out) -> tokenize (fan-out) -> train
-> export -> evaluate.

The whole resolved recipe travels as one string parameter; bulk data stays under the run root and
only small manifests move between steps. KFP's own caching is off: it keys on parameters, not on
the data behind a URL; the steps reuse finished work themselves by fingerprint.
"""


from kfp import dsl, kubernetes
from pretrain.components import steps

S3_SECRET = "pretrain-s3"
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _configure(task: dsl.PipelineTask, retries: int = 0) -> dsl.PipelineTask:
    task.set_caching_options(False)
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_ENV},
                                 optional=True)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2)
    return task


def build_pipeline(parallelism: int = 4, default_recipe: "str | None" = None):
    """The pipeline function; ``parallelism`` bounds the ingest/filter fan-out (a compile-time value)."""

    @dsl.pipeline(name="pretrain", description="From raw data to a base language model, one recipe in.")
    def pretrain(recipe: str = default_recipe or "{}"):
        planned = _configure(steps.plan(recipe=recipe).set_display_name("plan"))
        with dsl.ParallelFor(planned.outputs["Output"], parallelism=parallelism, name="partitions") as part:
            ingested = _configure(steps.ingest(recipe=recipe, partition=part), retries=2)
            filtered = _configure(steps.filter_documents(recipe=recipe, documents=ingested.outputs["manifest"]),
                                  retries=2)
        # Dedup across the whole run, staged: sketch per partition -> buckets per prefix shard / band
        # (dealt into `parallelism` groups) -> cluster once -> remove per partition -> the manifest.
        dplan = _configure(steps.dedup_plan(recipe=recipe, filtered=dsl.Collected(filtered.outputs["manifest"])))
        with dsl.ParallelFor(dplan.output, parallelism=parallelism, name="dedup-partitions") as n:
            sketched = _configure(steps.dedup_sketch(recipe=recipe, partition=n), retries=2)
        bplan = _configure(steps.dedup_bucket_plan(recipe=recipe, sketched=dsl.Collected(sketched.output),
                                                   groups=parallelism))
        with dsl.ParallelFor(bplan.output, parallelism=parallelism, name="dedup-buckets") as units:
            bucketed = _configure(steps.dedup_buckets(recipe=recipe, units=units), retries=2)
        clustered = _configure(steps.dedup_cluster(recipe=recipe, bucketed=dsl.Collected(bucketed.output)),
                               retries=1)
        with dsl.ParallelFor(clustered.output, parallelism=parallelism, name="dedup-remove") as n:
            removed = _configure(steps.dedup_remove(recipe=recipe, partition=n), retries=2)
        deduped = _configure(steps.dedup(recipe=recipe, removed=dsl.Collected(removed.output)))
        # Tokenize: one tokenizer, then token shards per documents partition, then the mixture and the manifest.
        tplan = _configure(steps.tokenize_prepare(recipe=recipe, documents=deduped.outputs["manifest"]), retries=1)
        with dsl.ParallelFor(tplan.output, parallelism=parallelism, name="tokenize-partitions") as n:
            encoded = _configure(steps.tokenize_encode(recipe=recipe, partition=n), retries=2)
        tokens = _configure(steps.tokenize(recipe=recipe, encoded=dsl.Collected(encoded.output)))
        trained = _configure(steps.train(recipe=recipe, tokens=tokens.outputs["manifest"]), retries=1)
        exported = _configure(steps.export(recipe=recipe, checkpoints=trained.outputs["manifest"],
                                           tokens=tokens.outputs["manifest"]).set_display_name("checkpoint"))
        _configure(steps.evaluate(recipe=recipe, model=exported.outputs["manifest"],
                                  tokens=tokens.outputs["manifest"], checkpoints=trained.outputs["manifest"]))

    return pretrain


def compile_pipeline(recipe_json: str, parallelism: int, path: str) -> None:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(parallelism, recipe_json), package_path=path)


def _keep_parameters_intact() -> None:
    """kfp.local (2.17) replaces 'python3' with its interpreter's path in *every* argument of a task's
    command, the executor input JSON included, so a parameter holding a path such as
    /usr/lib/python3.11 arrives corrupted. Apply the replacement only before ``--executor_input``.
    """
    from kfp.local import subprocess_task_handler as handler

    original = handler.replace_python_executable
    if getattr(original, "_pretrain_patched", False):
        return

    def replace_in_command_only(full_command: list, new_executable: str) -> list:
        if "--executor_input" not in full_command:
            return original(full_command, new_executable)
        cut = full_command.index("--executor_input")
        return original(full_command[:cut], new_executable) + list(full_command[cut:])

    replace_in_command_only._pretrain_patched = True
    handler.replace_python_executable = replace_in_command_only


def run_local(recipe_json: str, parallelism: int, pipeline_root: str) -> None:
    """Run the DAG on this machine with KFP's SubprocessRunner in the current environment."""
    import builtins
    import warnings

    from kfp import local

    # Locally every step runs in this environment, where pretrain is installed: the image is not used.
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*", category=RuntimeWarning)
    _keep_parameters_intact()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    original_print = builtins.print  # kfp.local indents print() while it runs and may leave it so
    try:
        build_pipeline(parallelism)(recipe=recipe_json)
    finally:
        builtins.print = original_print
