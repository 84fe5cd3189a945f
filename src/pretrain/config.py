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
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pretrain import storage

BUILTIN_PREFIX = "builtin:"
BUILTIN_SOURCES = ("stdlib", "pydoc", "shapes")

PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the offending key or URL."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SOURCE_FORMATS = ("warc", "wet", "wikipedia", "code", "jsonl", "parquet", "hf", "images", "webdataset")
IMAGE_FORMATS = ("images", "webdataset")  # always image samples; jsonl/parquet/hf when image_field is set


class SourceConfig(_Strict):
    """One raw input. ``uri`` is a local path, an ``s3://`` URL or ``builtin:stdlib|pydoc``.

    Files may be compressed (gzip, bz2, zstd, xz; told by the suffix). Large files are split into
    partitions of about ``partition_bytes`` at record boundaries where the format allows it.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    format: Literal["warc", "wet", "wikipedia", "code", "jsonl", "parquet", "hf", "images", "webdataset"]
    uri: str
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    exclude: list[str] = Field(default_factory=list)
    partitions: Annotated[int, Field(ge=1, le=4096)] = 1  # code: buckets of each repository's files
    partition_bytes: Annotated[int, Field(ge=1 << 16)] = 128 << 20  # split larger files into ranges
    max_documents: PositiveInt | None = None
    max_document_bytes: PositiveInt = 1_000_000  # larger documents are skipped and counted (too_large)
    license: str = ""  # SPDX id; code: detected from the repository's LICENSE file when empty
    builtin_pages: PositiveInt = 120  # pydoc pages packed into the builtin WARC
    builtin_images: PositiveInt = 2048  # shapes: rendered images (with captions and labels) generated
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
    # jsonl / parquet / hf: a field holding an image (bytes, or a path relative to the file's folder, or a URL);
    # set, the source yields image samples and ``text_field`` holds the caption (may be missing: no caption)
    image_field: str | None = None
    # a class label for the linear probe: jsonl/parquet/hf: this field; images: the sub-folder name when
    # "folder"; webdataset: the ``.cls`` member when "cls". None: no label
    label_field: str | None = None
    # filter: the rule profile; auto = by format (warc/wet -> web, code -> code, others -> prose)
    filter_profile: Literal["auto", "web", "prose", "code"] = "auto"

    @model_validator(mode="after")
    def _builtin_known(self) -> SourceConfig:
        if self.uri.startswith(BUILTIN_PREFIX) and self.uri[len(BUILTIN_PREFIX):] not in BUILTIN_SOURCES:
            raise ValueError(f"unknown builtin source {self.uri!r}; known: "
                             + ", ".join(BUILTIN_PREFIX + s for s in BUILTIN_SOURCES))
        return self

    @property
    def has_images(self) -> bool:
        """This source yields image samples (image + optional caption), not text documents."""
        return self.format in IMAGE_FORMATS or self.uri == BUILTIN_PREFIX + "shapes" or self.image_field is not None

    @property
    def profile(self) -> str:
        """The filter profile this source's documents go through (auto: by format)."""
        if self.has_images:
            return "caption"
        if self.filter_profile != "auto":
            return self.filter_profile
        return PROFILE_BY_FORMAT.get(self.format, "prose")


NonNegative = Annotated[int, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0.0)]
NGram = Annotated[int, Field(ge=1, le=20)]
FILTER_PROFILES = ("web", "prose", "code")
PROFILE_BY_FORMAT = {"warc": "web", "wet": "web", "code": "code"}  # every other format: prose


class RuleSettings(_Strict):
    """A rule family's settings; ``None`` turns one check off, ``enabled: false`` the whole family."""

    enabled: bool = True


class VariantSettings(RuleSettings):
    """``default`` judges prose lines and code lines apart, so technical pages survive; ``published`` is the paper."""

    variant: Literal["default", "published"] = "default"


class GopherQualitySettings(VariantSettings):
    """Gopher quality rules (Rae et al. 2021, table A1) at their published thresholds."""

    min_doc_words: NonNegative | None = 50
    max_doc_words: NonNegative | None = 100_000
    min_avg_word_length: Ratio | None = 3.0
    max_avg_word_length: Ratio | None = 10.0
    max_symbol_word_ratio: Ratio | None = 0.1
    max_bullet_lines_ratio: Fraction | None = 0.9
    max_ellipsis_lines_ratio: Fraction | None = 0.3
    min_alpha_words_ratio: Fraction | None = 0.8
    min_stop_words: NonNegative | None = 2
    stop_words: list[str] = Field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])
    stop_words_languages: list[str] = Field(default_factory=lambda: ["en"])  # the languages stop_words belong to


class GopherRepetitionSettings(VariantSettings):
    """Gopher repetition rules (Rae et al. 2021, table A1): duplicate lines, paragraphs and n-grams.

    ``default`` does not judge duplicates on a page with a real vocabulary whose distinct lines still hold
    a fair share of it (reference pages repeat signatures and inherited members; spam repeats everything).
    """

    max_dup_line_frac: Fraction | None = 0.3
    max_dup_para_frac: Fraction | None = 0.3
    max_dup_line_char_frac: Fraction | None = 0.2
    max_dup_para_char_frac: Fraction | None = 0.2
    max_top_ngram_char_frac: dict[NGram, Fraction] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_frac: dict[NGram, Fraction] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    exempt_min_distinct_words: NonNegative = 50  # default variant only
    exempt_min_unique_fraction: Fraction = 0.1  # default variant only


class C4Settings(VariantSettings):
    """C4 rules (Raffel et al. 2020). ``default``: no curly-bracket rule (code snippets are content) but pages
    that are almost all code lines are dropped (max_code_fraction); sentences are counted in prose paragraphs
    (hard-wrapped lines joined), a code block or table counts as one, and 3 are enough (published: 5); only
    boilerplate lines (javascript, cookie/policy notices) are removed.
    ``published`` removes every line without terminal punctuation and drops pages with a curly bracket."""

    min_sentences: NonNegative = 3  # published: 5 (set by the variant unless the recipe gives it)
    min_words_per_line: NonNegative = 3
    max_word_length: PositiveInt = 1000
    remove_citations: bool = True
    lorem_ipsum: bool = True
    javascript: bool = True
    curly_bracket: bool = True  # published variant only
    policy: bool = True
    remove_lines: bool = True
    max_code_fraction: Fraction | None = 0.9  # default variant only

    @model_validator(mode="before")
    @classmethod
    def _variant_sentences(cls, data: Any) -> Any:
        """C4's published page minimum is 5 sentences; the default variant, which also counts code blocks and
        tables, needs 3 (5 dropped half of the real reference pages of 50-150 words)."""
        if isinstance(data, dict) and data.get("variant") == "published" and "min_sentences" not in data:
            return {**data, "min_sentences": 5}
        return data


class FineWebSettings(VariantSettings):
    """FineWeb's extra rules (Penedo et al. 2024); ``default`` judges prose lines only for the line ratios."""

    min_line_punct_ratio: Fraction | None = 0.12
    line_punct_exclude_zero: bool = False
    max_short_line_ratio: Fraction | None = 0.67
    short_line_length: NonNegative = 30
    max_char_dup_ratio: Fraction | None = 0.01
    max_list_ratio: Ratio | None = 0.3
    exempt_min_distinct_words: NonNegative = 50  # default variant: as gopher_repetition's
    exempt_min_unique_fraction: Fraction = 0.1


class LanguageSettings(RuleSettings):
    """Language identification: language and score go to ``meta``; an empty keep-list keeps every language."""

    languages: list[str] = Field(default_factory=list)


class GibberishSettings(RuleSettings):
    max_score: Fraction = 0.5


class ToxicSettings(RuleSettings):
    """Word lists with a threshold, per language, and an optional classifier.

    ``wordlist`` ("builtin": better-profanity's English list, or a local path / s3:// URL) applies to the
    ``languages`` it covers; ``wordlists`` adds a list per language (``{de: s3://lists/de.txt}``). ``classifier``
    is an importable ``module:function`` mapping a text to a toxicity score in [0, 1]; a document scoring above
    ``max_classifier_score`` is dropped (``classifier_languages``: the languages it judges, empty = all).
    """

    wordlist: str = "builtin"
    max_fraction: Fraction = 0.01
    languages: list[str] = Field(default_factory=lambda: ["en"])
    wordlists: dict[str, str] = Field(default_factory=dict)
    classifier: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = None
    max_classifier_score: Fraction = 0.5
    classifier_languages: list[str] = Field(default_factory=list)


class UrlSettings(RuleSettings):
    """Block-lists and opt-out lists: a domain or any of its parents listed drops the page."""

    blocked_domains: list[str] = Field(default_factory=list)
    blocked_domains_file: str | None = None  # one domain a line: a local path or an s3:// URL


class PiiSettings(RuleSettings):
    """Redact personal data and secrets to placeholders; ``kinds: null`` = every kind pii.py knows."""

    kinds: list[str] | None = None

    @model_validator(mode="after")
    def _known_kinds(self) -> PiiSettings:
        try:
            from pretrain.data.filters.pii import KINDS
        except ImportError:
            return self
        unknown = sorted(set(self.kinds or ()) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown PII kinds {unknown}; known: {sorted(KINDS)}")
        return self


class CodeSettings(RuleSettings):
    """Code rules (after StarCoder/The Stack): line lengths, alphanumeric fraction, generated files, data files."""

    max_line_length: PositiveInt | None = 1000
    max_mean_line_length: Ratio | None = 100.0
    min_alnum_fraction: Fraction | None = 0.25
    max_dup_line_frac: Fraction | None = 0.7
    autogenerated: bool = True
    data_languages: list[str] = Field(default_factory=lambda: ["json", "yaml", "toml", "xml", "csv", "tsv", "ini"])
    data_max_chars: PositiveInt | None = 50_000
    data_min_alnum_fraction: Fraction | None = 0.5


class LicenseSettings(RuleSettings):
    allowed: list[str] = Field(default_factory=list)  # SPDX ids; empty = every licence


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


class TextProfile(_Strict):
    """Rules for natural-language sources; a recipe overrides them rule by rule."""

    _defaults: ClassVar[dict[str, Any]] = {}

    gopher_quality: GopherQualitySettings = Field(default_factory=GopherQualitySettings)
    gopher_repetition: GopherRepetitionSettings = Field(default_factory=GopherRepetitionSettings)
    c4: C4Settings = Field(default_factory=C4Settings)
    fineweb: FineWebSettings = Field(default_factory=FineWebSettings)
    gibberish: GibberishSettings = Field(default_factory=GibberishSettings)
    language: LanguageSettings = Field(default_factory=LanguageSettings)
    toxic: ToxicSettings = Field(default_factory=ToxicSettings)
    urls: UrlSettings = Field(default_factory=UrlSettings)
    pii: PiiSettings = Field(default_factory=PiiSettings)

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """A partial override lands on this profile's defaults, not on the rule's class defaults."""
        return _merge(cls._defaults, data) if isinstance(data, dict) else data


class WebProfile(TextProfile):
    """warc, wet: every rule family."""


class ProseProfile(TextProfile):
    """wikipedia, jsonl, parquet, hf: curated prose, so the web-page rules (C4, FineWeb, URLs) are off."""

    _defaults: ClassVar[dict[str, Any]] = {"c4": {"enabled": False}, "fineweb": {"enabled": False},
                                           "urls": {"enabled": False}}


class CodeProfile(_Strict):
    code: CodeSettings = Field(default_factory=CodeSettings)
    licenses: LicenseSettings = Field(default_factory=LicenseSettings)
    pii: PiiSettings = Field(default_factory=PiiSettings)


class CaptionProfile(_Strict):
    """The text rules an image's caption goes through (a caption is short: the document rules do not apply).

    An empty caption passes (``min_words`` counts only captions that exist); image-text training drops samples
    without one later, when it splits (counted as ``no_caption``)."""

    min_words: NonNegative = 1
    max_words: PositiveInt = 200
    gibberish: GibberishSettings = Field(default_factory=GibberishSettings)
    toxic: ToxicSettings = Field(default_factory=ToxicSettings)
    pii: PiiSettings = Field(default_factory=PiiSettings)


class ImageFilterSettings(RuleSettings):
    """Rules on the image itself, judged on its original (decoded) size: too small, or too elongated."""

    min_size: PositiveInt | None = 32  # the shorter side, pixels
    max_aspect: Annotated[float, Field(ge=1.0)] | None = 4.0  # long side / short side


class ProfilesConfig(_Strict):
    web: WebProfile = Field(default_factory=lambda: WebProfile.model_validate({}))
    prose: ProseProfile = Field(default_factory=lambda: ProseProfile.model_validate({}))
    code: CodeProfile = Field(default_factory=CodeProfile)
    caption: CaptionProfile = Field(default_factory=CaptionProfile)


class FilterConfig(_Strict):
    """Quality rules in named profiles (web, prose, code), picked per source (``filter_profile``).

    A document is dropped by the first rule it fails, and kept aside with that rule and the value that
    tripped it. ``min_chars``, ``max_chars`` and ``min_words`` apply to every profile.
    """

    min_chars: NonNegative = 200
    max_chars: PositiveInt = 500_000
    min_words: NonNegative = 20  # words of spaced scripts; CJK/Thai characters count one each
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    images: ImageFilterSettings = Field(default_factory=ImageFilterSettings)  # image samples only

    @model_validator(mode="after")
    def _range(self) -> FilterConfig:
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


class DedupConfig(_Strict):
    """Exact, then fuzzy (MinHash + LSH) duplicate removal across all shards of all sources.

    Exact: whitespace-normalized xxh3-128 of the text, sharded into ``prefix_shards`` by hash prefix.
    Fuzzy: word ``shingle_size``-grams (CJK/Thai: one character per word), ``num_perm`` MinHash values
    of which the first ``bands * rows`` form the LSH bands; candidate pairs are kept when their
    estimated Jaccard over all ``num_perm`` values is >= ``threshold`` (``verify``).
    Why these defaults (measured on real reference pages, source files and docstrings with planted
    copies): copies with 10% of their words edited have a word-5-gram Jaccard of only ~0.3-0.45
    (5%: ~0.5-0.65), so the usual 5-grams at ~0.8 find none of them; on 3-grams they sit at 0.49-0.6
    (5%: 0.66-0.77, renamed code identifiers: 0.39+, a swapped site template on a short page: 0.46+),
    while distinct pages sharing only a long template stay below 0.25. So: 3-grams, verify at 0.4,
    and 64 bands x 4 rows (the S-curve's midpoint (1/64)^(1/4) = 0.35, P(candidate | J=0.45) = 0.93,
    0.99 at 0.55); 256 values keep the estimate's error at ~0.03. For ~0.8 near-exact dedup use
    shingle_size=5, bands=14, rows=8, threshold=0.8.
    ``band_shards``: each band's bucket task holds that band's keys for the whole run (~20 bytes a document:
    2 GB at 100M documents); split each band by key range into this many tasks (each reads the band's column
    and keeps its range) when that does not fit a worker.
    ``representative``: which copy of a cluster stays: ``longest`` (most characters, ties: earliest) or
    ``earliest`` (first in run order: sources by name, partitions by key, rows in shard order).
    Image samples: exact copies share the hash of their decoded pixels; near copies are found by 64-bit pHash
    split into ``image_distance + 1`` bands (any pair within the distance shares one) and always verified by
    Hamming distance (``verify`` does not apply); ``longest`` keeps the largest original image. pHash sees
    grey levels only: two pictures differing only in colour count as near copies.
    """

    exact: bool = True
    fuzzy: bool = True
    shingle_size: Annotated[int, Field(ge=1, le=32)] = 3
    num_perm: Annotated[int, Field(ge=8, le=1024)] = 256
    bands: Annotated[int, Field(ge=1, le=512)] = 64
    rows: Annotated[int, Field(ge=1, le=64)] = 4
    threshold: Fraction = 0.4
    verify: bool = True
    prefix_shards: Annotated[int, Field(ge=1, le=4096)] = 16
    band_shards: Annotated[int, Field(ge=1, le=4096)] = 1
    representative: Literal["longest", "earliest"] = "longest"
    seed: Annotated[int, Field(ge=0, lt=1 << 32)] = 1
    # image samples: exact = the same decoded pixels (a hash of them, so re-encodings of one picture match);
    # fuzzy = 64-bit perceptual hashes (imagehash's pHash) at most this many bits apart
    image_distance: Annotated[int, Field(ge=0, le=32)] = 4

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupConfig:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows ({self.bands} * {self.rows}) must not exceed num_perm ({self.num_perm})")
        return self


class TokenizerConfig(_Strict):
    """Train a tokenizer (``path`` unset) or load a Hugging Face tokenizer folder (local path or s3:// URL).

    Training reads ``train_chars`` characters drawn across sources: ``even`` gives each source the same share,
    ``mixture`` shares them by the mixture weights. ``kind``: byte-level ``bpe`` (every byte sequence encodes)
    or ``unigram``. ``encoder``: ``auto`` encodes a byte-level BPE with tiktoken when it gives the very tokens
    ``tokenizers`` gives (checked on a sample of the documents), else with ``tokenizers``.
    """

    path: str | None = None
    kind: Literal["bpe", "unigram"] = "bpe"
    vocab_size: Annotated[int, Field(ge=300, le=1 << 20)] = 8192
    min_frequency: PositiveInt = 2
    train_chars: PositiveInt = 50_000_000
    sample: Literal["even", "mixture"] = "even"
    encoder: Literal["auto", "tiktoken", "hf"] = "auto"


class SplitConfig(_Strict):
    """Each document goes wholly to validation with probability ``val_fraction`` (by a hash of its id)."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05


class MixtureConfig(_Strict):
    """Each source's share of the training tokens (normalized; every source listed, 0 leaves one out).
    Empty: every source as it is (its natural share).

    A share above a source's natural one repeats its windows (epochs > 1), below samples a random subset;
    an epoch of the mixture holds as many tokens as the sources hold together.
    """

    weights: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)


class ModelConfig(_Strict):
    """The network, built from a ``transformers`` config: a Llama-style decoder (causal LM) or a BERT /
    ModernBERT encoder (masked LM). ``preset`` names a size (see ``pretrain.model.presets``); keys given
    explicitly override it. With ``init_from`` the shape comes from that model folder instead."""

    preset: Literal["tiny", "20m", "125m", "350m", "1b", "8b"] | None = None
    # auto: llama (causal_lm), modernbert (masked_lm), vit (image_contrastive), clip (image_text_contrastive)
    architecture: Literal["auto", "llama", "bert", "modernbert", "vit", "clip"] = "auto"
    hidden_size: PositiveInt = 256
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    num_kv_heads: PositiveInt | None = None
    intermediate_size: PositiveInt = 688
    rope_theta: Annotated[float, Field(gt=0.0)] = 10_000.0
    seq_len: Annotated[int, Field(ge=8, le=1 << 20)] = 256
    tie_embeddings: bool = True
    # RMSNorm on each head's queries and keys (OLMo-2, Qwen3): bounded attention logits tolerate a higher LR.
    # Built as Qwen3ForCausalLM (llama's shape plus q_norm/k_norm), so the export loads without remote code.
    # None (default): on for causal LMs built from scratch, off for encoders and init_from (bench/quality.py:
    # without it the quickstart shape ends 0.29 nats worse)
    qk_norm: bool | None = None
    # scaled: N(0, 0.02) everywhere, residual output projections / sqrt(2 * num_layers) (GPT-2, OLMo), so the
    # residual stream's variance does not grow with depth; hf: the transformers class's own init. vit and clip always
    # take the transformers init (CLIP's is already scaled by depth)
    init: Literal["hf", "scaled"] = "scaled"
    init_from: str | None = None  # a Hugging Face model folder (local path or s3:// URL): weights and tokenizer
    # vit / clip: the image side (square images of image_size pixels in patches of patch_size); the width, depth and
    # heads above serve both towers of a clip model, whose captions are at most seq_len tokens
    image_size: Annotated[int, Field(ge=8, le=4096)] = 32
    patch_size: Annotated[int, Field(ge=1, le=256)] = 4
    projection_dim: PositiveInt = 128  # the embedding both contrastive objectives compare

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            from pretrain.model.presets import PRESETS

            shape = PRESETS.get(data["preset"])
            if shape is not None:  # an unknown name fails on the field itself
                data = {**shape, **data}
        return data

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.qk_norm and self.architecture in ("bert", "modernbert", "vit", "clip"):
            raise ValueError(f"qk_norm: model.architecture {self.architecture} has no QK-norm variant in "
                             "transformers; set model.qk_norm=false (causal_lm, architecture llama, only)")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        return self


IMAGE_REPOSITORY = "ghcr.io/pretrain-dev/pretrain"  # data steps and CPU training
CUDA_IMAGE_REPOSITORY = "ghcr.io/pretrain-dev/pretrain-cuda"  # GPU training
# An image reference with an explicit tag or digest: "repo/name:tag", "repo/name@sha256:<64 hex>" or both.
_IMAGE_RE = re.compile(r"^(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
                       r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")
DnsLabel = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]


def check_image(image: str) -> str:
    """``image`` names a tag or a digest: ``latest`` by omission would make a run unreproducible."""
    match = _IMAGE_RE.match(image)
    if not match:
        raise ValueError(f"{image!r} is not an image reference (registry/name:tag or registry/name@sha256:...)")
    if not match["tag"] and not match["digest"]:
        raise ValueError(f"image {image!r} has neither a tag nor a digest: name one (e.g. {image}:1.0 or "
                         f"{image}@sha256:...)")
    return image


class Toleration(_Strict):
    """A Kubernetes toleration, e.g. of the ``nvidia.com/gpu`` taint that GPU node pools carry."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class NodePool(_Strict):
    """Where one kind of pod runs: the nodes' labels to select, the taints to tolerate, what one node offers."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpus_per_node: Annotated[int, Field(ge=0)] = 0
    cpus_per_node: Annotated[float, Field(gt=0.0)] | None = None
    memory_gb_per_node: Annotated[float, Field(gt=0.0)] | None = None


def _gpu_pool() -> NodePool:
    return NodePool(node_selector={"nvidia.com/gpu.present": "true"},
                    tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
                    gpus_per_node=8)


class Resources(_Strict):
    """What one pod asks for (requests = limits): CPU cores, memory, GPUs and its memory-backed /dev/shm."""

    cpu: Annotated[float, Field(gt=0.0)] = 2.0
    memory_gb: Annotated[float, Field(gt=0.0)] = 8.0
    gpus: Annotated[int, Field(ge=0)] = 0
    shm_gb: Annotated[float, Field(gt=0.0)] = 2.0


class ElasticConfig(_Strict):
    """PyTorchJob elastic policy: the job runs with ``min_nodes``..``max_nodes`` nodes, restarting up to
    ``max_restarts`` times when nodes come and go."""

    min_nodes: PositiveInt = 1
    max_nodes: PositiveInt = 1
    max_restarts: Annotated[int, Field(ge=0)] = 3


class ClusterConfig(_Strict):
    """Settings for running on Kubernetes (KFP steps, PyTorchJob/TrainJob training). Credentials are never
    here: pods read them from the Secret ``s3_secret`` (keys AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY)."""

    namespace: DnsLabel = "pretrain"
    image: str | None = None  # data steps (and CPU training); default: the published tag of this version
    train_image: str | None = None  # default: the CUDA image when train.resources.gpus > 0, else ``image``
    s3_secret: DnsLabel = "pretrain-s3"
    service_account: str | None = None  # the KFP run's service account (pretrain submit)
    train_service_account: str | None = "pretrain-train"  # training job pods
    priority_class: str | None = "pretrain-training"  # training job pods (manifests/base creates it)
    gpu_pool: NodePool = Field(default_factory=_gpu_pool)
    cpu_pool: NodePool = Field(default_factory=NodePool)
    step_resources: Resources = Field(default_factory=lambda: Resources(cpu=2.0, memory_gb=8.0, shm_gb=1.0))
    step_timeout_minutes: PositiveInt | None = 24 * 60  # each data step; training waits as long as it runs
    step_retries: Annotated[int, Field(ge=0)] = 2  # data steps, with exponential backoff

    @model_validator(mode="before")
    @classmethod
    def _pool_defaults(cls, data: Any) -> Any:
        """``cluster.gpu_pool.node_selector=...`` changes that key only, not the whole default GPU pool."""
        if isinstance(data, dict) and isinstance(data.get("gpu_pool"), dict):
            data = {**data, "gpu_pool": {**_gpu_pool().model_dump(exclude_none=True), **data["gpu_pool"]}}
        return data

    @model_validator(mode="after")
    def _images(self) -> ClusterConfig:
        for key in ("image", "train_image"):
            value = getattr(self, key)
            if value is not None:
                try:
                    check_image(value)
                except ValueError as err:
                    raise ValueError(f"{key}: {err}") from None
        return self

    def step_image(self) -> str:
        from pretrain import __version__

        return self.image or f"{IMAGE_REPOSITORY}:{__version__}"

    def training_image(self, gpus: int) -> str:
        from pretrain import __version__

        if self.train_image:
            return self.train_image
        return f"{CUDA_IMAGE_REPOSITORY}:{__version__}" if gpus else self.step_image()


class StabilityConfig(_Strict):
    """What a bad step does: a non-finite loss or gradient norm, or a loss above ``spike_factor`` x its
    running mean (after ``warmup_steps``), is skipped (no update) or rolled back to the last checkpoint
    (whose next batches are then skipped); counted and logged. More than ``max_anomalies`` stops the run."""

    action: Literal["skip", "rollback", "off"] = "skip"
    spike_factor: Annotated[float, Field(gt=1.0)] | None = 3.0
    max_anomalies: PositiveInt = 20


class AugmentConfig(_Strict):
    """Image augmentations (plain torch, on the batch; drawn from the seed and step, so a resume is exact).

    ``None`` takes the objective's default: image_contrastive uses SimCLR's strong set (crop 0.2-1, flip,
    colour jitter 0.4 at p 0.8, grey at p 0.2, blur at p 0.5; no blur below 64 px, as SimCLR on CIFAR-10);
    image_text_contrastive only crops gently (0.8-1), as captions may name colours and sides that a flip or a
    jitter would make false."""

    crop_scale: tuple[Fraction, Fraction] | None = None  # random resized crop: the area kept, min and max
    flip: bool | None = None  # horizontal flip at p 0.5
    color_jitter: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # strength; 0: off
    grayscale: Fraction | None = None  # probability
    blur: Fraction | None = None  # Gaussian blur probability

    @model_validator(mode="after")
    def _scale(self) -> AugmentConfig:
        if self.crop_scale is not None and not 0.0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"crop_scale: need 0 < min <= max, got {self.crop_scale}")
        return self


TEXT_OBJECTIVES = ("causal_lm", "masked_lm")
IMAGE_OBJECTIVES = ("image_contrastive", "image_text_contrastive")
# The model architectures each objective trains; the first is what ``model.architecture: auto`` picks.
ARCHITECTURES = {"causal_lm": ("llama",), "masked_lm": ("modernbert", "bert"), "image_contrastive": ("vit",),
                 "image_text_contrastive": ("clip",)}


class TrainConfig(_Strict):
    # causal_lm / masked_lm on text; image_contrastive (SimCLR: two augmented views, NT-Xent, on a ViT) and
    # image_text_contrastive (CLIP: symmetric InfoNCE, learnable temperature, on CLIPModel) on image samples
    objective: Literal["causal_lm", "masked_lm", "image_contrastive", "image_text_contrastive"] = "causal_lm"
    mask_probability: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15  # masked_lm: 80% [MASK], 10% random, 10% kept
    temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1  # image_contrastive's NT-Xent (CLIP learns its own)
    gather_negatives: bool = True  # contrastive: every rank's batch serves as negatives (all-gather with gradient)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    max_steps: PositiveInt = 200
    document_masking: bool = False  # attention stays within each document of a packed window
    verify_tokens: bool = True  # each rank checks its share of the token shards' checksums before training
    micro_batch_size: PositiveInt = 8
    grad_accum_steps: PositiveInt = 1
    # optimizer: adamw (no decay on norms, biases, embeddings) or muon (2-D hidden weights; AdamW for the rest)
    # muon by default: AdamW instead ends 0.58 nats worse at the quickstart shape (bench/quality.py); a masked
    # LM defaults to adamw (and cosine), which won there (see Recipe)
    optimizer: Literal["adamw", "muon"] = "muon"
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 3e-3
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    muon_lr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.02
    muon_momentum: Fraction = 0.95
    # schedule: linear warmup, then cosine to min_lr_ratio, or warmup-stable-decay (the last decay_fraction)
    # wsd by default: cosine ends 0.12 nats worse (bench/quality.py), and a stable phase lets a run be extended
    schedule: Literal["cosine", "wsd"] = "wsd"
    warmup_steps: Annotated[int, Field(ge=0)] = 20
    min_lr_ratio: Fraction = 0.1
    decay_fraction: Fraction = 0.2
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0
    # PaLM's z-loss: z_loss x mean(logsumexp(logits)^2) on the training loss keeps the softmax normalizer near 0
    # (stable bf16 logits); the validation loss stays pure cross-entropy
    z_loss: Annotated[float, Field(ge=0.0)] = 1e-4
    # weight decay on embedding tables (and a tied head) too, as nanoGPT does; false: they are never decayed
    decay_embeddings: bool = False
    # AdamW LRs of the input embedding tables (a tied head included) and of an untied output head; None: lr.
    # modded-nanoGPT trains the embedding far above and the head below the hidden weights' LR
    embedding_lr: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    head_lr: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    loss: Literal["chunked", "plain"] = "chunked"  # chunked: B x T x V logits are never materialized at once
    precision: Literal["fp32", "bf16"] = "fp32"
    tf32: bool = True  # GPU: TF32 matmuls for what still runs in fp32
    compile: bool = False  # per-block (regional) torch.compile: one compiled block serves every layer
    compile_cache: str | None = None  # a local folder kept across restarts (default: ~/.cache/pretrain/compile)
    activation_checkpointing: Literal["off", "full", "selective"] = "off"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    init_device: Literal["auto", "meta", "device"] = "auto"  # auto: meta (then sharded) under fsdp
    memory_gb: Annotated[float, Field(gt=0.0)] | None = None  # per device; default: detected
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # local: torchrun on this machine (in the KFP step's pod on a cluster); pytorchjob: a Training Operator
    # PyTorchJob (kubeflow.org/v1); trainjob: a Kubeflow Trainer v2 TrainJob. nnodes x nproc_per_node ranks.
    launcher: Literal["local", "pytorchjob", "trainjob"] = "local"
    resources: Resources = Field(default_factory=Resources)  # per node (pod) of a cluster training job
    elastic: ElasticConfig | None = None  # pytorchjob only
    nnodes: PositiveInt = 1
    nproc_per_node: PositiveInt = 2
    threads_per_process: PositiveInt | None = None
    log_interval: PositiveInt = 10
    eval_interval: PositiveInt = 50
    eval_batches: PositiveInt = 8
    checkpoint_interval: PositiveInt = 100
    checkpoint_minutes: Annotated[float, Field(gt=0.0)] | None = None  # also save when this much time has passed
    keep_checkpoints: PositiveInt = 2  # the last K ...
    keep_every: PositiveInt | None = None  # ... plus every step that is a multiple of this
    async_checkpoint: Literal["auto", "on", "off"] = "auto"  # auto: on with CUDA (the step waits only for a copy)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("activation_checkpointing"), bool):
            data = {**data, "activation_checkpointing": "full" if data["activation_checkpointing"] else "off"}
        if isinstance(data, dict) and isinstance(data.get("async_checkpoint"), bool):  # YAML reads on/off as booleans
            data = {**data, "async_checkpoint": "on" if data["async_checkpoint"] else "off"}
        return data

    @model_validator(mode="after")
    def _decay_fits(self) -> TrainConfig:
        """wsd: the decay phase must fit after warmup, else the LR never reaches the floor it promises."""
        decay = round(self.decay_fraction * self.max_steps)
        # (a run shorter than its warmup never leaves it, under any schedule: a smoke run, allowed)
        if self.schedule == "wsd" and self.warmup_steps < self.max_steps and decay > self.max_steps - self.warmup_steps:
            after = max(0, self.max_steps - self.warmup_steps)
            raise ValueError(f"decay_fraction: schedule wsd decays for decay_fraction {self.decay_fraction} x "
                             f"max_steps {self.max_steps} = {decay} steps, more than the {after} steps after "
                             f"warmup_steps {self.warmup_steps}: lower train.decay_fraction or train.warmup_steps, "
                             "or raise train.max_steps")
        return self


class EvaluateConfig(_Strict):
    max_batches: PositiveInt = 32  # held-out batches per source
    batch_size: PositiveInt = 8
    # task accuracy: next_line / next_sentence are the run's own cloze tasks (built from validation documents,
    # decontaminated against the train split); any other name is an lm-eval harness task (needs its data offline)
    tasks: list[str] = Field(default_factory=lambda: ["next_line", "next_sentence"])
    task_items: PositiveInt = 500  # items per task of the run's own set at most
    prompts: list[str] = Field(default_factory=lambda: ["def ", "import ", "The "])
    max_new_tokens: PositiveInt = 40
    # image objectives: zero-shot retrieval among pools of this many held-out samples with distinct captions
    # (recall@1/5, image->text and text->image), and a linear probe on frozen features (samples with a label)
    retrieval_pool: Annotated[int, Field(ge=2)] = 100
    probe: bool = True


class ImagesConfig(_Strict):
    """How ingest turns an input image into a sample's stored image: decoded with Pillow, checked, resized so its
    shorter side is ``size`` (never enlarged), and re-encoded. Inputs larger than ``max_pixels`` (decompression
    bombs) or ``max_bytes`` are skipped and counted without being decoded."""

    size: Annotated[int, Field(ge=8, le=4096)] = 64
    encoding: Literal["png", "jpeg", "webp"] = "png"
    quality: Annotated[int, Field(ge=1, le=100)] = 90  # jpeg / webp
    max_pixels: PositiveInt = 64_000_000
    max_bytes: PositiveInt = 64 << 20


class PipelineConfig(_Strict):
    parallelism: PositiveInt = 4


class ObserveConfig(_Strict):
    """Live metrics of a run; none of them is ever a reason to stop one.

    ``metrics_port``: rank 0 of training serves Prometheus metrics on ``/metrics`` there (None: off; 9464, not
    Prometheus's own 9090; the PodMonitor scrapes the container port named ``metrics``). ``pushgateway``: data
    steps push their counts to this Pushgateway URL (grouped by run and step, deleted at the end of the run).
    ``tensorboard``: event files under ``train/tensorboard`` (needs the ``tensorboard`` extra). ``progress``: a
    bar at a terminal, plain lines every ``progress_seconds`` elsewhere (auto), or one of them, or none.
    """

    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = 9464
    metrics_address: str = "0.0.0.0"  # every interface, as a pod needs; 127.0.0.1 keeps it on this machine
    pushgateway: Annotated[str, Field(pattern=r"^https?://[^\s/]+")] | None = None
    tensorboard: bool = False
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    progress_seconds: Annotated[float, Field(gt=0.0)] = 30.0


class Recipe(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
    run_root: str | None = None
    seed: Annotated[int, Field(ge=0)] = 0
    sources: Annotated[list[SourceConfig], Field(min_length=1)]
    filter: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    observe: ObserveConfig = Field(default_factory=ObserveConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _unique_sources(self) -> Recipe:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"source names must be unique, got {names}")
        unknown = sorted(set(self.mixture.weights) - set(names))
        if unknown:
            raise ValueError(f"mixture.weights: unknown source(s) {unknown}; sources are {names}")
        unweighted = sorted(set(names) - set(self.mixture.weights)) if self.mixture.weights else []
        if unweighted:
            raise ValueError(f"mixture.weights: no weight for source(s) {unweighted} (0 leaves a source out)")
        if self.mixture.weights and not any(self.mixture.weights.values()):
            raise ValueError("mixture.weights: every weight is 0")
        self._check_options()  # before auto resolves: qk_norm with masked_lm names the objective, not modernbert
        objective = self.train.objective
        if self.model.architecture == "auto":
            self.model.architecture = ARCHITECTURES[objective][0]
        elif self.model.architecture not in ARCHITECTURES[objective] and not self.model.init_from:
            raise ValueError(f"model.architecture {self.model.architecture} cannot train train.objective "
                             f"{objective}: " + ", ".join(f"{o} takes {' or '.join(a)}"
                                                          for o, a in ARCHITECTURES.items()))
        self._check_modality()
        if self.model.qk_norm is None:
            self.model.qk_norm = self.model.architecture == "llama" and not self.model.init_from
        if objective != "causal_lm":
            # Encoders default to AdamW + cosine: at the quickstart shape (0.82M tokens, bench/quality.py
            # --objective masked_lm) Muon + WSD led early but ended 5.70 against AdamW + cosine's 5.59.
            # Vision towers too (Muon was not measured on them), at ViT's usual 1e-3.
            given = self.train.model_fields_set
            if "optimizer" not in given:
                self.train.optimizer = "adamw"
            if "schedule" not in given:
                self.train.schedule = "cosine"
            if objective in IMAGE_OBJECTIVES and "lr" not in given:
                self.train.lr = 1e-3
        self._check_cluster()
        if self.model.init_from and self.tokenizer.path and self.tokenizer.path != self.model.init_from:
            raise ValueError(f"tokenizer.path ({self.tokenizer.path}) differs from model.init_from "
                             f"({self.model.init_from}): continued pre-training uses the model's own tokenizer")
        return self

    @property
    def modality(self) -> str:
        """What the run trains on, from its objective: ``text``, ``image`` (SimCLR) or ``image_text`` (CLIP)."""
        return {"image_contrastive": "image", "image_text_contrastive": "image_text"}.get(self.train.objective, "text")

    def _check_modality(self) -> None:
        """Every source feeds the objective: image samples for the image objectives, text documents for the rest."""
        images = self.modality != "text"
        for i, src in enumerate(self.sources):
            if src.has_images != images:
                kind = "image samples" if src.has_images else "text documents"
                want = ("image samples (format images or webdataset, builtin:shapes, or image_field)" if images
                        else "text documents")
                raise ValueError(f"sources[{i}] ({src.name}) yields {kind}, but train.objective {self.train.objective}"
                                 f" trains on {want}")

    def _check_options(self) -> None:
        """Model and training options that cannot work together (each message names the keys).

        With ``model.init_from`` the shape, QK-norm and tying come from that folder, and ``model.init`` does not
        apply (the weights are loaded), so only the training options are checked against it."""
        model, train = self.model, self.train
        if model.qk_norm and train.objective == "masked_lm" and not model.init_from:
            raise ValueError("model.qk_norm: train.objective masked_lm builds an encoder (bert, modernbert), which "
                             "has no QK-norm variant in transformers; set model.qk_norm=false (causal_lm only)")
        if train.head_lr is not None and model.tie_embeddings and not model.init_from:
            raise ValueError("train.head_lr: the head is tied to the input embedding (model.tie_embeddings true), so "
                             "it trains at train.embedding_lr; untie it (model.tie_embeddings=false) or drop head_lr")

    def _check_cluster(self) -> None:
        train, pool = self.train, self.cluster.gpu_pool
        if train.resources.gpus > pool.gpus_per_node:
            raise ValueError(f"train.resources.gpus: {train.resources.gpus} GPUs per node, but cluster.gpu_pool "
                             f"offers {pool.gpus_per_node} per node (cluster.gpu_pool.gpus_per_node)")
        if train.resources.gpus and train.nproc_per_node != train.resources.gpus:
            raise ValueError(f"train.nproc_per_node ({train.nproc_per_node}) must equal train.resources.gpus "
                             f"({train.resources.gpus}): one process per GPU")
        for key, limit in (("cpu", "cpus_per_node"), ("memory_gb", "memory_gb_per_node")):
            offered = getattr(pool if train.resources.gpus else self.cluster.cpu_pool, limit)
            if offered is not None and getattr(train.resources, key) > offered:
                raise ValueError(f"train.resources.{key}: {getattr(train.resources, key)} per node, but the node "
                                 f"pool offers {offered} ({limit})")
        if train.launcher != "local" and (self.run_root is None or not storage.is_remote(self.run_root)):
            raise ValueError(f"train.launcher {train.launcher} runs training in pods that cannot reach a local "
                             f"run root ({self.run_root or 'runs/' + self.name}): set run_root=s3://bucket/...")
        if train.elastic is not None:
            if train.launcher != "pytorchjob":
                raise ValueError("train.elastic: only train.launcher pytorchjob has an elastic mode")
            if not train.elastic.min_nodes <= train.nnodes <= train.elastic.max_nodes:
                raise ValueError(f"train.elastic: train.nnodes ({train.nnodes}) must lie within min_nodes.."
                                 f"max_nodes ({train.elastic.min_nodes}..{train.elastic.max_nodes})")

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
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        whole_section = e["type"] == "value_error" and isinstance(e.get("input"), dict)
        quiet = e["type"] in ("extra_forbidden", "missing") or whole_section
        shown = "" if quiet else f" (got {e.get('input')!r:.60})"
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
