"""The pre-training DAG: plan -> ingest/filter (fan-out) -> dedup (staged fan-out) -> tokenize (fan-out) -> train
-> export -> evaluate, inside an exit handler whose clean-up step deletes a failed run's cluster training job.

The whole resolved recipe travels as one string parameter; bulk data stays under the run root and
only small manifests move between steps. KFP's own caching is off: it keys on parameters, not on
the data behind a URL; the steps reuse finished work themselves by fingerprint.

Compiled for a cluster, each step gets its Kubernetes settings from the recipe's ``cluster`` section
at compile time: image, node pool (node selector, tolerations), resources, a memory-backed /dev/shm,
a timeout and retries with backoff for the data steps, the storage Secret (required) when the run root
is on S3. The train step runs on the GPU pool with ``train.resources`` when ``train.launcher`` is local
(torchrun in its pod); with pytorchjob/trainjob it is a small CPU pod that drives the cluster job. KFP's
local runner ignores every Kubernetes setting, so ``run_local`` builds the DAG without them.
"""

from kfp import dsl, kubernetes
from pretrain.components import steps

from pretrain.config import ClusterConfig, NodePool, Recipe, RecipeError, Resources, check_image

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The pod that only drives a PyTorchJob/TrainJob (create or attach, wait, stream logs), and the clean-up step.
DRIVER = {"cpu": "500m", "memory": "1Gi"}
CLEANUP_TIMEOUT_S = 15 * 60
# Today's retries of each step when the DAG runs locally (KFP's local runner honours set_retry).
LOCAL_RETRIES = {"ingest": 2, "filter-documents": 2, "dedup-sketch": 2, "dedup-buckets": 2, "dedup-cluster": 1,
                 "dedup-remove": 2, "tokenize-prepare": 1, "tokenize-encode": 2, "train": 1}


def _cpu(cores: float) -> str:
    return f"{round(cores * 1000)}m"


def _memory(gb: float) -> str:
    return f"{round(gb * 1024)}Mi"


def _retry(task: dsl.PipelineTask, retries: int) -> None:
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2, backoff_max_duration="3600s")


class _Placement:
    """The Kubernetes settings of each task, from the compile-time recipe; None: none at all (kfp.local)."""

    def __init__(self, recipe: Recipe | None):
        self.recipe = recipe

    def _pool(self, task: dsl.PipelineTask, pool: NodePool) -> None:
        for key, value in sorted(pool.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in pool.tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)

    def _resources(self, task: dsl.PipelineTask, res: Resources) -> None:
        cpu, memory = _cpu(res.cpu), _memory(res.memory_gb)
        task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
        if res.gpus:
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(res.gpus)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=_memory(res.shm_gb))

    def _common(self, task: dsl.PipelineTask) -> None:
        cluster = self.recipe.cluster
        if self.recipe.run_root and self.recipe.run_root.startswith(("s3://", "s3a://")):
            # Required: a pod must not start without its storage credentials.
            kubernetes.use_secret_as_env(task, secret_name=cluster.s3_secret,
                                         secret_key_to_env={k: k for k in S3_ENV}, optional=False)

    def data(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """A data (or export/evaluate) step: CPU pool, step resources, timeout, retries with backoff."""
        task.set_caching_options(False)
        if self.recipe is None:
            _retry(task, LOCAL_RETRIES.get(task.name, 0))
            return task
        cluster = self.recipe.cluster
        self._common(task)
        self._pool(task, cluster.cpu_pool)
        self._resources(task, cluster.step_resources)
        if cluster.step_timeout_minutes:
            kubernetes.set_timeout(task, cluster.step_timeout_minutes * 60)
        _retry(task, cluster.step_retries)
        return task

    def train(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """torchrun in this pod on the GPU pool (launcher local), or a small CPU pod driving the cluster job
        (a retry attaches to the running job). No timeout: training takes as long as it takes."""
        task.set_caching_options(False)
        if self.recipe is None:
            _retry(task, LOCAL_RETRIES["train"])
            return task
        train, cluster = self.recipe.train, self.recipe.cluster
        self._common(task)
        if train.launcher == "local":
            self._pool(task, cluster.gpu_pool if train.resources.gpus else cluster.cpu_pool)
            self._resources(task, train.resources)
            _retry(task, 1)  # resumes from the last committed checkpoint
        else:
            self._pool(task, cluster.cpu_pool)
            task.set_cpu_request(DRIVER["cpu"]).set_cpu_limit(DRIVER["cpu"])
            task.set_memory_request(DRIVER["memory"]).set_memory_limit(DRIVER["memory"])
            _retry(task, max(1, cluster.step_retries))
        return task

    def cleanup(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        task.set_caching_options(False)
        if self.recipe is None:  # the local runner warns about display names; keep `pretrain run` quiet
            return task
        task.set_display_name("clean-up")
        cluster = self.recipe.cluster
        self._pool(task, cluster.cpu_pool)
        task.set_cpu_request(DRIVER["cpu"]).set_cpu_limit(DRIVER["cpu"])
        task.set_memory_request(DRIVER["memory"]).set_memory_limit(DRIVER["memory"])
        kubernetes.set_timeout(task, CLEANUP_TIMEOUT_S)
        _retry(task, cluster.step_retries)
        return task


def images(recipe: Recipe | None) -> tuple[str, str]:
    """The image of the steps and of the train step (the training image when torchrun runs in its pod)."""
    cluster = recipe.cluster if recipe is not None else ClusterConfig()
    step = cluster.step_image()
    if recipe is not None and recipe.train.launcher == "local":
        return step, cluster.training_image(recipe.train.resources.gpus)
    return step, step


def build_pipeline(parallelism: int = 4, default_recipe: str | None = None, target: Recipe | None = None):
    """The pipeline function; ``parallelism`` bounds the fan-outs (a compile-time value). ``target``: the
    recipe whose ``cluster`` section (and launcher, resources, run root) sets each step's Kubernetes settings;
    None builds the DAG with none (KFP's local runner)."""
    place = _Placement(target)
    c = steps.components(*images(target))

    @dsl.pipeline(name="pretrain", description="From raw data to a base language model, one recipe in.")
    def pretrain(recipe: str = default_recipe or "{}"):
        # On a cluster, {{$.pipeline_job_uuid}} is the KFP run's id; kfp.local resolves it to its own run id.
        cleanup = place.cleanup(c.cleanup(recipe=recipe, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
        with dsl.ExitHandler(cleanup, name="pretrain-run"):
            planned = place.data(c.plan(recipe=recipe).set_display_name("plan"))
            with dsl.ParallelFor(planned.outputs["Output"], parallelism=parallelism, name="partitions") as part:
                ingested = place.data(c.ingest(recipe=recipe, partition=part))
                filtered = place.data(c.filter_documents(recipe=recipe, documents=ingested.outputs["manifest"]))
            # Dedup across the whole run, staged: sketch per partition -> buckets per prefix shard / band
            # (dealt into `parallelism` groups) -> cluster once -> remove per partition -> the manifest.
            dplan = place.data(c.dedup_plan(recipe=recipe, filtered=dsl.Collected(filtered.outputs["manifest"])))
            with dsl.ParallelFor(dplan.output, parallelism=parallelism, name="dedup-partitions") as n:
                sketched = place.data(c.dedup_sketch(recipe=recipe, partition=n))
            bplan = place.data(c.dedup_bucket_plan(recipe=recipe, sketched=dsl.Collected(sketched.output),
                                                   groups=parallelism))
            with dsl.ParallelFor(bplan.output, parallelism=parallelism, name="dedup-buckets") as units:
                bucketed = place.data(c.dedup_buckets(recipe=recipe, units=units))
            clustered = place.data(c.dedup_cluster(recipe=recipe, bucketed=dsl.Collected(bucketed.output)))
            with dsl.ParallelFor(clustered.output, parallelism=parallelism, name="dedup-remove") as n:
                removed = place.data(c.dedup_remove(recipe=recipe, partition=n))
            deduped = place.data(c.dedup(recipe=recipe, removed=dsl.Collected(removed.output)))
            # Tokenize: one tokenizer, then token shards per documents partition, then the mixture and manifest.
            tplan = place.data(c.tokenize_prepare(recipe=recipe, documents=deduped.outputs["manifest"]))
            with dsl.ParallelFor(tplan.output, parallelism=parallelism, name="tokenize-partitions") as n:
                encoded = place.data(c.tokenize_encode(recipe=recipe, partition=n))
            tokens = place.data(c.tokenize(recipe=recipe, encoded=dsl.Collected(encoded.output)))
            trained = place.train(c.train(recipe=recipe, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                          tokens=tokens.outputs["manifest"]))
            exported = place.data(c.export(recipe=recipe, checkpoints=trained.outputs["manifest"],
                                           tokens=tokens.outputs["manifest"]).set_display_name("checkpoint"))
            place.data(c.evaluate(recipe=recipe, model=exported.outputs["manifest"],
                                  tokens=tokens.outputs["manifest"], checkpoints=trained.outputs["manifest"]))

    return pretrain


def with_image(recipe: Recipe, image: str | None) -> Recipe:
    """``recipe`` with ``cluster.image`` set to ``image`` (validated: a tag or digest), as
    ``pretrain compile --image`` does; the train step and cluster jobs follow unless ``cluster.train_image``
    or the CUDA default applies."""
    if not image:
        return recipe
    try:
        check_image(image)
    except ValueError as err:
        raise RecipeError(f"--image: {err}") from None
    return recipe.model_copy(update={"cluster": recipe.cluster.model_copy(update={"image": image})})


def compile_pipeline(recipe: Recipe, path: str, image: str | None = None) -> None:
    """Write the pipeline YAML for ``recipe`` (the default of its parameter, and its Kubernetes settings)."""
    from kfp import compiler

    recipe = with_image(recipe, image)
    pipeline = build_pipeline(recipe.pipeline.parallelism, recipe.to_json(), target=recipe)
    compiler.Compiler().compile(pipeline, package_path=path)


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
