"""Save and load Hugging Face tokenizer folders (local path or s3:// URL), and find their special tokens.

A saved folder is what ``transformers.AutoTokenizer.from_pretrained`` loads; its ``tokenizer.json`` is the
one file this project reads back (``tokenizers.Tokenizer``), and its hash ties token shards to it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain import storage
from pretrain.data.tokenizer.train import EOS, MASK, PAD

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from pretrain.config import Recipe

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILES = ("special_tokens_map.json", "tokenizer_config.json")  # later files win
# End-of-document tokens of common model families, tried when the folder's config names none.
EOS_LIKE = (EOS, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]")


class TokenizerError(ValueError):
    """A tokenizer cannot be loaded or used; the message names its URL."""


def _json_url(url: str) -> str:
    """``url`` is a tokenizer folder or its ``tokenizer.json`` itself."""
    return url if url.endswith(".json") else storage.join(url, TOKENIZER_FILE)


def _folder(url: str) -> str:
    if not url.endswith(".json"):
        return url
    return url.rsplit("/", 1)[0] if storage.is_remote(url) else str(Path(url).parent)


def tokenizer_bytes(url: str) -> bytes:
    try:
        return storage.read_bytes(_json_url(url))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        raise TokenizerError(f"{url}: no {TOKENIZER_FILE} there (a Hugging Face fast tokenizer folder is "
                             f"expected)") from err


def load_tokenizer(url: str) -> Tokenizer:
    from tokenizers import Tokenizer

    data = tokenizer_bytes(url)
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as err:  # tokenizers raises a bare Exception on a malformed file
        raise TokenizerError(f"{_json_url(url)}: not a valid tokenizers file ({err})") from err


def tokenizer_hash(url: str) -> str:
    return hashlib.sha256(tokenizer_bytes(url)).hexdigest()[:16]


def tokenizer_config(url: str) -> dict[str, Any]:
    """The folder's ``special_tokens_map.json`` and ``tokenizer_config.json`` merged; {} when absent."""
    merged: dict[str, Any] = {}
    for name in CONFIG_FILES:
        try:
            found = storage.read_json(storage.join(_folder(url), name))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, json.JSONDecodeError):
            continue
        if isinstance(found, dict):
            merged.update(found)
    return merged


def save_tokenizer(tok: Tokenizer, url: str, model_max_length: int) -> None:
    """Write a folder ``AutoTokenizer.from_pretrained`` loads: EOS doubles as BOS, with PAD and MASK.

    ``tokenizer.json`` goes last, each file atomically: a folder holding it is complete.
    """
    from transformers import PreTrainedTokenizerFast

    vocab = tok.get_vocab()
    missing = [t for t in (EOS, PAD, MASK) if t not in vocab]
    if missing:
        raise TokenizerError(f"{url}: the tokenizer to save lacks the special tokens {missing}")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                 mask_token=MASK, model_max_length=model_max_length)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        config = Path(tmp, "tokenizer_config.json")
        settings = json.loads(config.read_text())
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 4 and 5 both resolve this name
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        for path in sorted(files, key=lambda p: p.name == TOKENIZER_FILE):
            storage.write_bytes(storage.join(url, path.relative_to(tmp).as_posix()), path.read_bytes())


def tokenizer_source(recipe: Recipe) -> str | None:
    """Where the run's tokenizer comes from: the initial model's folder, ``tokenizer.path``, or None (train)."""
    init_from, path = recipe.model.init_from, recipe.tokenizer.path
    if init_from and path and path.rstrip("/") != init_from.rstrip("/"):
        raise TokenizerError(f"tokenizer.path ({path}) differs from model.init_from ({init_from}): continued "
                             "pre-training uses the model's own tokenizer")
    return init_from or path or None


def _token_text(value: Any) -> str | None:
    """A config's token entry: a string or a serialized AddedToken ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def special_ids(tok: Tokenizer, url: str | None = None) -> dict[str, int | None]:
    """``eos`` (required), ``pad`` and ``mask`` ids: the folder's own config first, then our tokens.

    A loaded tokenizer's end of document is its config's ``eos_token`` (e.g. ``</s>``), else a common
    end-of-text token it holds; without one, documents could not be separated, so that is an error.
    """
    config = tokenizer_config(url) if url else {}

    def lookup(key: str, fallbacks: tuple[str, ...]) -> int | None:
        for text in (_token_text(config.get(key)), *fallbacks):
            if text is not None and (found := tok.token_to_id(text)) is not None:
                return found
        return None

    eos = lookup("eos_token", EOS_LIKE)
    if eos is None:
        named = _token_text(config.get("eos_token"))
        raise TokenizerError(f"{url or 'tokenizer'}: no end-of-text token (config eos_token={named!r}; none of "
                             f"{list(EOS_LIKE)} in the vocabulary): documents could not be separated")
    return {"eos": eos, "pad": lookup("pad_token", (PAD,)), "mask": lookup("mask_token", (MASK,))}
