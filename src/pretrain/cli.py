"""``pretrain``: run, compile and inspect pre-training recipes.

The top of the house: the one library module that imports the pipelines (lazily, for run/compile).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from pretrain import storage
from pretrain.config import Recipe, RecipeError, bundled_recipes, load_recipe, preflight
from pretrain.data.readers.base import InputError

EXAMPLES = """examples:
  pretrain run                                 the quickstart, whole DAG, on this machine
  pretrain run tiny train.max_steps=50         a bundled recipe with an override
  pretrain run my.yaml run_root=s3://bucket/runs/exp1
  pretrain compile quickstart -o pipeline.yaml upload pipeline.yaml in the KFP UI
  pretrain compile gpu-125m --image registry.example/pretrain:1.0 -o gpu.yaml
  pretrain submit quickstart run_root=s3://pretrain/runs/qs --host http://localhost:8080
  pretrain job gpu-1b | kubectl apply -f -    the training job alone (PyTorchJob/TrainJob), without KFP
  pretrain evaluate runs/qs/model --run-root runs/qs    any HF model folder on a run's held-out data and tasks
  pretrain evaluate ./my-model --tasks hellaswag --online  lm-eval harness tasks by name (hub access)
  pretrain compare runs/a runs/b s3://bucket/runs/c    runs side by side: table and overlaid loss curves
"""


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None,
                   help=f"recipe YAML path, s3:// URL or bundled name ({', '.join(bundled_recipes())}); "
                        "default: quickstart")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. train.max_steps=100 sources.0.partitions=4")


def _split_recipe(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``pretrain run key=value`` means the quickstart with an override, not a recipe named key=value."""
    if args.recipe and "=" in args.recipe and not os.path.exists(args.recipe):
        return None, [args.recipe, *args.overrides]
    return args.recipe, list(args.overrides)


def pipeline_root(recipe: Recipe) -> str:
    """KFP's local runner keeps its own small outputs on local disk, beside the run root when it is local."""
    if storage.is_remote(recipe.root):
        return os.path.join(tempfile.gettempdir(), "pretrain-kfp", recipe.name)
    return os.path.join(recipe.root, "kfp")


def run_pipeline(recipe: Recipe) -> dict:
    """Validate, write the resolved recipe to the run root, run the DAG with kfp.local, summarize."""
    from pretrain.pipelines.pretrain_dag import run_local
    from pretrain.train.step import write_recipe

    preflight(recipe)
    write_recipe(recipe)
    storage.write_text(recipe.url("recipe.json"), recipe.to_json())
    run_local(recipe.to_json(), recipe.pipeline.parallelism, pipeline_root(recipe))
    return summary(recipe)


def summary(recipe: Recipe) -> dict:
    from pretrain.evaluate.step import pipeline_stats
    from pretrain.manifest import Manifest

    train = Manifest.load(recipe.url("train"))
    evaluation = Manifest.load(recipe.url("evaluate"))
    return {
        **pipeline_stats(recipe),
        "training steps": train.stats.get("steps"),
        "final train loss": train.stats.get("final_train_loss"),
        "val loss at step 0": train.stats.get("initial_val_loss"),
        "final val loss": train.stats.get("final_val_loss"),
        **(_image_results(evaluation.stats) if recipe.modality != "text" else {
            "held-out loss": evaluation.stats.get("loss"),
            "perplexity": evaluation.stats.get("perplexity"),
            "bits per byte": evaluation.stats.get("bits_per_byte")}),
        "model": recipe.url("model"),
        "report": evaluation.extra.get("report_html"),
    }


def _image_results(stats: dict) -> dict:
    """An image run's closing figures: retrieval (image-text) and the linear probe, each beside what chance and
    an untrained model of the same shape score."""
    shown = {}
    if "retrieval_recall_at_1" in stats:
        shown["recall@1 (image<->text)"] = stats["retrieval_recall_at_1"]
        shown["  untrained / chance"] = (f"{stats.get('untrained_retrieval_recall_at_1', 0):.4f} / "
                                         f"{stats.get('retrieval_recall_at_1_chance', 0):.4f}")
        shown["recall@5 (image<->text)"] = stats.get("retrieval_recall_at_5")
    if "probe_accuracy" in stats:
        shown["linear probe accuracy"] = stats["probe_accuracy"]
        shown["  untrained / chance "] = (f"{stats.get('untrained_probe_accuracy', 0):.4f} / "
                                          f"{stats.get('probe_chance', 0):.4f}")
    return shown


def _print_summary(result: dict, elapsed: float, recipe: Recipe | None = None) -> None:
    print(f"\n== pretrain: finished in {elapsed:.0f} s ==")
    width = max(map(len, result))
    for key, value in result.items():
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.4f}" if isinstance(value, float) else value
        print(f"  {key:<{width}}  {shown}")
    if recipe is not None:
        _print_ledger(recipe)


def _print_ledger(recipe: Recipe, file=None) -> None:
    from pretrain.data import ledger
    from pretrain.evaluate.step import data_ledger

    found = data_ledger(recipe)
    if found:
        print("  documents:", file=file)
        for line in ledger.lines(found):
            print(f"    {line}", file=file)


def cmd_run(args: argparse.Namespace) -> int:
    recipe = load_recipe(*_split_recipe(args))
    print(f"pretrain: running recipe {recipe.name!r}, run root {recipe.root}", flush=True)
    start = time.time()
    _print_summary(run_pipeline(recipe), time.time() - start, recipe)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from pretrain.pipelines.pretrain_dag import compile_pipeline, with_image

    recipe = with_image(load_recipe(*_split_recipe(args)), args.image)
    if not storage.is_remote(recipe.root):
        print(f"pretrain: note: run_root {recipe.root} is a local path; on a cluster the steps share no disk "
              "(and get no storage Secret), so pass run_root=s3://bucket/runs/NAME", file=sys.stderr)
    compile_pipeline(recipe, args.output)
    print(f"wrote {args.output} (recipe {recipe.name!r} as the default of parameter 'recipe'; "
          f"image {recipe.cluster.step_image()})")
    return 0


def submit(recipe: Recipe, host: str | None, experiment: str, namespace: str | None = None,
           service_account: str | None = None, check: bool | None = None, image: str | None = None) -> str:
    """Compile and start a run on a KFP endpoint (in-cluster defaults when ``host`` is None); return its id.

    The run root must be on S3: steps run in pods that share no disk. ``namespace``: the Kubeflow profile
    namespace of a multi-user KFP (default: none, single-user KFP); the recipe's ``cluster.namespace`` is where
    its training jobs and storage Secret live. ``service_account`` (default ``cluster.service_account``) runs
    the run's pods. ``check``: first verify on the cluster (kubeconfig or in-cluster config) that the namespace
    and the storage Secret exist, so nothing is created when they do not; None: when a config is available.
    """
    import kfp

    from pretrain.pipelines.pretrain_dag import compile_pipeline, with_image

    recipe = with_image(recipe, image)
    if not storage.is_remote(recipe.root):
        raise RecipeError(f"run_root: {recipe.root} is a local path; a cluster run needs run_root=s3://...")
    if check is not False:
        api_client = _cluster_client(required=bool(check))
        if api_client is not None:
            from pretrain.launch.cluster import check_cluster

            check_cluster(recipe, api_client)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pipeline.yaml")
        compile_pipeline(recipe, path)
        client = kfp.Client(host=host, namespace=namespace)
        run = client.create_run_from_pipeline_package(
            path, arguments={"recipe": recipe.to_json()}, run_name=f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=experiment, namespace=namespace, enable_caching=False,
            service_account=service_account or recipe.cluster.service_account)
    return run.run_id


def _cluster_client(required: bool):
    """A Kubernetes API client from the in-cluster config or a kubeconfig; None when neither is there (and
    the check was not asked for explicitly)."""
    from pretrain.launch.cluster import kube_api_client

    if not required and not (os.environ.get("KUBERNETES_SERVICE_HOST") or _kubeconfig_present()):
        return None
    return kube_api_client()


def _kubeconfig_present() -> bool:
    paths = os.environ.get("KUBECONFIG") or os.path.join(os.path.expanduser("~"), ".kube", "config")
    return any(p and os.path.exists(p) for p in paths.split(os.pathsep))


def cmd_submit(args: argparse.Namespace) -> int:
    recipe = load_recipe(*_split_recipe(args))
    if args.namespace and args.namespace != recipe.cluster.namespace:
        print(f"pretrain: note: the run's pods run in namespace {args.namespace} and need the Secret "
              f"{recipe.cluster.s3_secret} there; training jobs go to cluster.namespace {recipe.cluster.namespace}",
              file=sys.stderr)
    run_id = submit(recipe, args.host, args.experiment, args.namespace, service_account=args.service_account,
                    check=args.check_cluster, image=args.image)
    print(f"submitted recipe {recipe.name!r} as KFP run {run_id}")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    """Print the training job of RECIPE (its ``train.launcher``) as YAML for ``kubectl apply -f -``."""
    import yaml

    from pretrain.launch.render import render_job
    from pretrain.manifest import MANIFEST_NAME
    from pretrain.train.step import write_recipe

    recipe = load_recipe(*_split_recipe(args))
    if recipe.train.launcher == "local":
        raise RecipeError("train.launcher is local (torchrun on this machine): pass train.launcher=pytorchjob or "
                          "train.launcher=trainjob for a cluster training job")
    manifest = render_job(recipe, args.run_id)
    if args.write_recipe:  # the pods read the resolved recipe from the run root, as under the pipeline
        write_recipe(recipe)
        if not storage.exists(recipe.url("tokens", MANIFEST_NAME)):
            print(f"pretrain: note: no token data under {recipe.url('tokens')} yet: run the data steps first "
                  f"(pretrain data {args.recipe or 'RECIPE'} ...) or the job's training will stop at start-up",
                  file=sys.stderr)
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    from pretrain import steps

    recipe = load_recipe(*_split_recipe(args))
    preflight(recipe)
    result = getattr(steps, args.step)(recipe)
    _print_ledger(recipe, file=sys.stderr)
    print(result.to_json())
    return 0


def cmd_megatron(args: argparse.Namespace) -> int:
    """The run's token shards of one split as one Megatron-LM indexed dataset (PREFIX.bin + PREFIX.idx)."""
    from pretrain import steps
    from pretrain.tokens import split_urls
    from pretrain.tokens.megatron import export_megatron

    recipe = load_recipe(*_split_recipe(args))
    preflight(recipe)
    tokens = steps.data(recipe)
    urls = split_urls(tokens.shards, args.split)
    print(json.dumps(export_megatron(urls, args.output)))
    return 0


def _model_target(target: str | None) -> bool:
    """``pretrain evaluate X``: X is a model folder (evaluate it) rather than a recipe (run the steps)? A folder,
    a remote URL that is not a YAML/JSON file, or a missing path with a folder part (``./model``), which then
    fails naming itself; a bare missing name stays a recipe name, whose error lists the bundled ones."""
    if not target or ("=" in target and not os.path.exists(target)):
        return False
    if target.lower().endswith((".yaml", ".yml", ".json")):
        return False
    if storage.is_remote(target) or os.path.isdir(target):
        return True
    return not os.path.exists(target) and os.sep in target


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``pretrain evaluate MODEL_URL``: any HF causal or masked LM folder, outside the pipeline; ``pretrain
    evaluate [RECIPE]``: every step in-process, as before."""
    from pretrain.evaluate.harness import ModelError
    from pretrain.evaluate.standalone import EvaluateOptions, evaluate_model, summary_lines
    from pretrain.evaluate.tasks import TaskFileError

    model_flags = [f for f, v in (("--tasks", args.tasks), ("--task-dir", args.task_dir),
                                  ("--run-root", args.run_root), ("--out", args.out), ("--limit", args.limit),
                                  ("--max-batches", args.max_batches), ("--batch-size", args.batch_size),
                                  ("--device", args.device), ("--online", args.online or None))
                   if v is not None]
    if not _model_target(args.recipe):
        if model_flags:
            raise RecipeError(f"{', '.join(model_flags)}: options of `pretrain evaluate MODEL_URL`; "
                              f"{args.recipe or 'no model folder'} is a recipe (its steps run in-process)")
        return cmd_step(args)
    if args.overrides:
        raise RecipeError(f"{' '.join(args.overrides)}: overrides apply to a recipe, not to a model folder")
    options = EvaluateOptions(
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None,
        task_dir=args.task_dir, run_root=args.run_root, batch_size=args.batch_size or 8, limit=args.limit,
        max_batches=args.max_batches, device=args.device or "cpu", online=args.online)
    try:
        report = evaluate_model(args.recipe, args.out, options)
    except (ModelError, TaskFileError, ValueError) as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(report)))
    print(f"wrote {storage.join(report['out'], 'report.html')} (and report.json, report.md)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pretrain.evaluate.compare import CompareError, compare, default_out, format_table

    out = args.out or default_out()
    try:
        result = compare(args.run_roots, out)
    except CompareError as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 2
    print(format_table(result["runs"]))
    print(f"wrote {storage.join(out, 'compare.html')} and compare.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="From raw data to a base language model: one recipe runs the whole pre-training DAG "
                    "(plan, ingest, filter, dedup, tokenize, train, checkpoint, evaluate) through Kubeflow "
                    "Pipelines, locally or on a cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole DAG on this machine (KFP local runner, torchrun on CPU)",
                         description="Resolve and validate RECIPE, then run the whole pipeline with kfp.local "
                                     "(SubprocessRunner, this Python environment). Finished steps are reused; "
                                     "an interrupted run continues where it stopped when re-run.")
    _recipe_args(run)
    run.set_defaults(func=cmd_run)
    comp = sub.add_parser("compile", help="write the KFP v2 pipeline YAML for the KFP UI",
                          description="Compile the pipeline to KFP v2 YAML with RECIPE (resolved) as the default "
                                      "value of its one parameter, 'recipe'. Upload it in the KFP UI.")
    _recipe_args(comp)
    comp.add_argument("-o", "--output", default="pipeline.yaml", help="output path (default: pipeline.yaml)")
    comp.add_argument("--image", default=None, help="the steps' image, with a tag or digest (sets cluster.image; "
                      "default: the recipe's, else the published image of this version)")
    comp.set_defaults(func=cmd_compile)
    sub_ = sub.add_parser("submit", help="compile and start a run on a Kubeflow Pipelines endpoint",
                          description="Compile RECIPE and start it as a run on a KFP endpoint. The run root must "
                                      "be s3://; pods get S3 settings from the Secret cluster.s3_secret "
                                      "(pretrain-s3). With a kubeconfig or in-cluster config, the namespace and "
                                      "Secret are checked first, before anything is created.")
    _recipe_args(sub_)
    sub_.add_argument("--host", default=os.environ.get("KFP_HOST"), help="KFP API URL (default: $KFP_HOST, "
                      "or the in-cluster default)")
    sub_.add_argument("--experiment", default="pretrain", help="KFP experiment name (default: pretrain)")
    sub_.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user KFP)")
    sub_.add_argument("--service-account", default=None,
                      help="service account of the run's pods (default: cluster.service_account, else KFP's)")
    sub_.add_argument("--image", default=None, help="the steps' image, with a tag or digest (sets cluster.image)")
    sub_.add_argument("--check-cluster", action=argparse.BooleanOptionalAction, default=None,
                      help="check the namespace and storage Secret on the cluster first (default: when a "
                           "kubeconfig or in-cluster config is available)")
    sub_.set_defaults(func=cmd_submit)
    job = sub.add_parser("job", help="print the training job (PyTorchJob or TrainJob) as YAML for kubectl",
                         description="Render RECIPE's training job for its train.launcher (pytorchjob: Training "
                                     "Operator PyTorchJob; trainjob: Kubeflow Trainer TrainJob) and print it as YAML: "
                                     "`pretrain job RECIPE | kubectl apply -f -`. The resolved recipe is written to "
                                     "the run root first, where the job's pods read it; the token data must be there "
                                     "(pretrain data RECIPE). Credentials come from the Secret cluster.s3_secret.")
    _recipe_args(job)
    job.add_argument("--run-id", default="manual", help="names the job deterministically (default: manual); a "
                     "second apply with the same id updates the same job instead of starting another")
    job.add_argument("--no-write-recipe", dest="write_recipe", action="store_false",
                     help="only print the manifest (the run root must already hold this recipe.yaml)")
    job.set_defaults(func=cmd_job)
    for name, help_text in (("data", "plan, ingest, filter, dedup and tokenize, in-process (no KFP)"),
                            ("train", "the data steps and training, in-process (no KFP)"),
                            ("export", "up to the Hugging Face export, in-process (no KFP)")):
        p = sub.add_parser(name, help=help_text, description=f"Run {help_text}; finished steps are reused.")
        _recipe_args(p)
        p.set_defaults(func=cmd_step, step=name)
    ev = sub.add_parser(
        "evaluate", aliases=["eval"], help="evaluate any HF model folder (MODEL_URL), or run every step of a recipe "
        "in-process ending with the report",
        description="pretrain evaluate MODEL_URL: evaluate a Hugging Face causal or masked LM folder (local or "
                    "s3://) outside the pipeline: lm-eval harness tasks (--tasks) or a local task folder "
                    "(--task-dir); with --run-root, a pretrain run's held-out metrics per source (when the model "
                    "has the run's tokenizer) and its task set. Writes report.json, report.md and report.html to "
                    "--out. pretrain evaluate [RECIPE]: every step in-process (no KFP), ending with the report; "
                    "finished steps are reused.")
    ev.add_argument("recipe", nargs="?", default=None, metavar="MODEL_URL|RECIPE",
                    help="a Hugging Face model folder (a directory or s3:// folder), or a recipe (YAML path, s3:// "
                         f"URL or bundled name: {', '.join(bundled_recipes())}; default: quickstart)")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (recipe mode only)")
    ev.add_argument("--tasks", default=None, help="comma-separated tasks: names in the task folder, else lm-eval "
                    "harness tasks (default: every task of the task folder / the run's task set)")
    ev.add_argument("--task-dir", default=None, help="a local task folder (tasks.json; default with --run-root: "
                    "the run's task set, built from its validation documents when missing)")
    ev.add_argument("--run-root", default=None, help="a pretrain run root (local or s3://): held-out metrics per "
                    "source on its validation shards, its task set, its data facts in the report")
    ev.add_argument("--out", default=None, help="output folder (default: ./evaluate-<model folder name>)")
    ev.add_argument("--batch-size", type=int, default=None, help="batch size of held-out and task scoring (default 8)")
    ev.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    ev.add_argument("--max-batches", type=int, default=None,
                    help="held-out batches per source (default: the run's evaluate.max_batches)")
    ev.add_argument("--device", default=None, help="torch device (default: cpu)")
    ev.add_argument("--online", action="store_true", help="let lm-eval download hub task datasets (default: "
                    "offline, only datasets already in the local cache)")
    ev.set_defaults(func=cmd_evaluate, step="evaluate")
    cmp_ = sub.add_parser("compare", help="several runs side by side: table and overlaid loss curves",
                          description="Compare run roots (local or s3://): a table (recipe, parameters, tokens "
                                      "trained, steps, final validation loss, held-out loss/perplexity/bits per "
                                      "byte, task accuracies, wall time) printed and written with overlaid "
                                      "training and validation loss curves (vs tokens trained) as compare.html "
                                      "and compare.json in --out.")
    cmp_.add_argument("run_roots", nargs="+", metavar="RUN_ROOT", help="run roots (local paths or s3:// URLs)")
    cmp_.add_argument("--out", default=None, help="output folder (default: ./compare)")
    cmp_.set_defaults(func=cmd_compare)
    mega = sub.add_parser("megatron", help="export the token shards as a Megatron-LM indexed dataset",
                          description="Run the data steps (finished ones are reused) and write one split's token "
                                      "shards as Megatron-LM's indexed dataset: OUTPUT.bin and OUTPUT.idx, one "
                                      "sequence per document (for Megatron-LM / NeMo data_path).")
    _recipe_args(mega)
    mega.add_argument("--split", choices=["train", "val"], default="train")
    mega.add_argument("-o", "--output", required=True, help="output prefix (local path or s3:// URL)")
    mega.set_defaults(func=cmd_megatron)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RecipeError, storage.StorageError, InputError) as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npretrain: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    except Exception as err:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        if not isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            raise
        print(f"pretrain: error: S3 credentials: {err}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
              "AWS_ENDPOINT_URL for MinIO or another S3 server) in the environment", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
