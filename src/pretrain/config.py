"""The recipe: one typed, validated config tree for a whole run.

Loaded from YAML, overridden with dotted ``a.b=value`` pairs, resolved (defaults filled, relative
paths made absolute) and then passed around as one JSON document. Unknown keys, wrong types and
out-of-range values fail with one message that names the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pretrain import storage

BUILTIN_PREFIX = "builtin:"
BUILTIN_SOURCES = ("stdlib", "pydoc")

PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the offending key or URL."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SOURCE_FORMATS = ("warc", "wet", "wikipedia", "code", "jsonl", "parquet", "hf")


class SourceConfig(_Strict):
    """One raw input. ``uri`` is a local path, an ``s3://`` URL or ``builtin:stdlib|pydoc``.

    Files may be compressed (gzip, bz2, zstd, xz; told by the suffix). Large files are split into
    partitions of about ``partition_bytes`` at record boundaries where the format allows it.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    format: Literal["warc", "wet", "wikipedia", "code", "jsonl", "parquet", "hf"]
    uri: str
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    exclude: list[str] = Field(default_factory=list)
    partitions: Annotated[int, Field(ge=1, le=4096)] = 1  # code: buckets of each repository's files
    partition_bytes: Annotated[int, Field(ge=1 << 16)] = 128 << 20  # split larger files into ranges
    max_documents: PositiveInt | None = None
    max_document_bytes: PositiveInt = 1_000_000  # larger documents are skipped and counted (too_large)
    license: str = ""  # SPDX id; code: detected from the repository's LICENSE file when empty
    builtin_pages: PositiveInt = 120  # pydoc pages packed into the builtin WARC
    # warc: HTML -> text
    extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"
    main_content: bool = True  # keep the main text only (no menus, footers, sidebars, cookie banners, ads)
    main_content_rules: Literal["selectors", "resiliparse"] = "selectors"  # resiliparse: its own heuristics (~2x)
    boilerplate_selectors: list[str] | None = None  # CSS selectors of boilerplate; None: the built-in list
    # code: a git repository's ref (branch, tag or commit) whose tracked files are read
    ref: str = "HEAD"
    # jsonl / parquet / hf: which fields hold the text, the id, and what else to keep in `meta`
    text_field: str = "text"
    id_field: str | None = None
    url_field: str | None = None
    date_field: str | None = None
    meta_fields: list[str] = Field(default_factory=list)
    split: str = "train"  # hf: the split of a DatasetDict saved with save_to_disk

    @model_validator(mode="after")
    def _builtin_known(self) -> SourceConfig:
        if self.uri.startswith(BUILTIN_PREFIX) and self.uri[len(BUILTIN_PREFIX):] not in BUILTIN_SOURCES:
            raise ValueError(f"unknown builtin source {self.uri!r}; known: "
                             + ", ".join(BUILTIN_PREFIX + s for s in BUILTIN_SOURCES))
        return self


class FilterConfig(_Strict):
    """Quality rules; a document is dropped by the first rule it fails, and kept aside with that reason."""

    min_chars: Annotated[int, Field(ge=0)] = 200
    max_chars: PositiveInt = 500_000
    min_words: Annotated[int, Field(ge=0)] = 20
    min_alnum_fraction: Fraction = 0.4
    max_mean_line_length: PositiveInt = 200
    max_duplicate_line_fraction: Fraction = 0.5

    @model_validator(mode="after")
    def _range(self) -> FilterConfig:
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


class DedupConfig(_Strict):
    exact: bool = True


class TokenizerConfig(_Strict):
    """Train a byte-level BPE (``path`` unset) or load one (local folder or s3:// URL)."""

    path: str | None = None
    vocab_size: Annotated[int, Field(ge=300, le=1 << 20)] = 8192
    min_frequency: PositiveInt = 2
    train_chars: PositiveInt = 50_000_000


class SplitConfig(_Strict):
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05


class ModelConfig(_Strict):
    """A Llama-style decoder built from a ``transformers`` config."""

    architecture: Literal["llama"] = "llama"
    hidden_size: PositiveInt = 256
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    num_kv_heads: PositiveInt | None = None
    intermediate_size: PositiveInt = 688
    seq_len: Annotated[int, Field(ge=8, le=1 << 20)] = 256
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


class TrainConfig(_Strict):
    objective: Literal["causal_lm"] = "causal_lm"
    max_steps: PositiveInt = 200
    micro_batch_size: PositiveInt = 8
    grad_accum_steps: PositiveInt = 1
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 3e-3
    min_lr_ratio: Fraction = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 20
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    launcher: Literal["local"] = "local"
    nnodes: PositiveInt = 1
    nproc_per_node: PositiveInt = 2
    threads_per_process: PositiveInt | None = None
    log_interval: PositiveInt = 10
    eval_interval: PositiveInt = 50
    eval_batches: PositiveInt = 8
    checkpoint_interval: PositiveInt = 100
    keep_checkpoints: PositiveInt = 2


class EvaluateConfig(_Strict):
    max_batches: PositiveInt = 32
    batch_size: PositiveInt = 8
    prompts: list[str] = Field(default_factory=lambda: ["def ", "import ", "The "])
    max_new_tokens: PositiveInt = 40


class PipelineConfig(_Strict):
    parallelism: PositiveInt = 4


class Recipe(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
    run_root: str | None = None
    seed: Annotated[int, Field(ge=0)] = 0
    sources: Annotated[list[SourceConfig], Field(min_length=1)]
    filter: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _unique_sources(self) -> Recipe:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"source names must be unique, got {names}")
        return self

    @property
    def root(self) -> str:
        assert self.run_root, "resolve() the recipe first"
        return self.run_root

    def url(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def _error_key(loc: tuple[Any, ...]) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int) and parts:
            parts[-1] = f"{parts[-1]}[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts) or "<recipe>"


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-after")))
        key = _error_key(loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        shown = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {e.get('input')!r:.60})"
        lines.append(f"{key}: {msg}{shown}")
    return f"invalid recipe {origin}: " + "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
        raise RecipeError(f"override key {key!r} is not a dotted key")
    return key.split("."), yaml.safe_load(value) if value != "" else ""


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for depth, part in enumerate(path[:-1]):
        key = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override {'.'.join(path)}: no list item {key}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"override {'.'.join(path)}: {key} is not a section")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"override {'.'.join(path)}: no list item {last}")
        node[int(last)] = value
    else:
        node[last] = value


def builtin_recipe_path(name: str) -> Path | None:
    candidate = resources.files("pretrain.recipes") / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def load_recipe(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe (a YAML path, an s3:// URL, or a bundled name), apply overrides, resolve, validate."""
    source = source or "quickstart"
    if not storage.is_remote(source) and not Path(source).exists() and builtin_recipe_path(source):
        source = str(builtin_recipe_path(source))
    try:
        text = storage.read_text(source)
    except FileNotFoundError as err:
        raise RecipeError(f"recipe {source!r} not found (a YAML path, an s3:// URL, or one of: "
                          f"{', '.join(bundled_recipes())})") from err
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {source}: not valid YAML: {err}") from err
    if not isinstance(tree, dict):
        raise RecipeError(f"recipe {source}: the top level must be a mapping")
    for item in overrides:
        apply_override(tree, *parse_override(item))
    return resolve(validate(tree, source))


def validate(tree: dict[str, Any], origin: str = "") -> Recipe:
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(_format_errors(err, origin)) from None


def resolve(recipe: Recipe) -> Recipe:
    """Fill the run root and make local paths absolute, so every step sees the same locations."""
    data = recipe.model_dump(mode="json")
    root = data["run_root"] or os.path.join("runs", data["name"])
    data["run_root"] = root if storage.is_remote(root) else os.path.abspath(root)
    for src in data["sources"]:
        uri = src["uri"]
        if not uri.startswith(BUILTIN_PREFIX) and not storage.is_remote(uri):
            src["uri"] = os.path.abspath(os.path.expanduser(uri))
    if data["tokenizer"]["path"] and not storage.is_remote(data["tokenizer"]["path"]):
        data["tokenizer"]["path"] = os.path.abspath(data["tokenizer"]["path"])
    return Recipe.model_validate(data)


def from_json(text: str) -> Recipe:
    return Recipe.model_validate_json(text)


def bundled_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("pretrain.recipes").iterdir() if p.name.endswith(".yaml"))


def preflight(recipe: Recipe) -> None:
    """Checks that need the outside world: sources exist, S3 endpoints answer. Fails before any step."""
    storage.check_reachable(recipe.root)
    for i, src in enumerate(recipe.sources):
        if src.uri.startswith(BUILTIN_PREFIX):
            continue
        try:
            storage.check_reachable(src.uri)
            found = storage.exists(src.uri)
        except storage.StorageError as err:
            raise RecipeError(f"sources[{i}].uri: {err}") from None
        if not found:
            raise RecipeError(f"sources[{i}].uri: {src.uri} does not exist")
    if recipe.tokenizer.path:
        storage.check_reachable(recipe.tokenizer.path)
        if not storage.exists(storage.join(recipe.tokenizer.path, "tokenizer.json")):
            raise RecipeError(f"tokenizer.path: no tokenizer.json under {recipe.tokenizer.path}")


def code_version() -> str:
    """The package version, plus the git commit (and a dirty mark) in a development checkout.

    Part of every fingerprint, so outputs written by older code are never silently reused.
    """
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("pretrain")
        except PackageNotFoundError:
            found = "0+unknown"
        _CODE_VERSION = found + _git_describe()
    return _CODE_VERSION


_CODE_VERSION: str | None = None


def _git_describe() -> str:
    """``+g<commit>[.dirty]`` when this package runs from a git checkout of its source, else empty."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        if not top or not (Path(top) / "src" / "pretrain" / "config.py").exists():
            return ""
        commit = subprocess.run(["git", "-C", top, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", top, "diff", "HEAD", "--", "src", "components", "pipelines"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    if not dirty:
        return f"+g{commit}"
    digest = hashlib.sha256(dirty.encode()).hexdigest()[:8]
    return f"+g{commit}.dirty{digest}"


def fingerprint(*parts: Any) -> str:
    """A stable short hash of config sections and upstream fingerprints: the identity of a step's output.

    The code version is always part of it (see ``code_version``).
    """
    blob = json.dumps([code_version(), *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
