"""Encode documents to token ids fast: tiktoken where it gives the very ids ``tokenizers`` gives, else ``tokenizers``.

A byte-level BPE trained by ``tokenizers`` is, read the other way, a tiktoken encoding: its vocabulary
mapped back through GPT-2's byte-to-unicode table gives the byte strings, a merge's rank is its token id,
and the pre-tokenizer's split expression is the same one. tiktoken encodes such a tokenizer 3-4x faster
on one core (``bench/tokenizer.py``). ``auto`` uses it only when the tokenizer's JSON says it is that kind
of tokenizer (BPE, no normalizer, a byte-level pre-tokenizer with a known split expression, all 256 bytes
present, every token merging back to itself) and both give the same ids on the probe texts; anything
else (Unigram, SentencePiece, a normalizer) is encoded with ``tokenizers``. tiktoken merges by token rank
rather than by merge rule, so in principle a rare piece could split differently beyond the probe; its ids
would still decode to the same text (the bench finds no difference on 2M tokens).

Both paths treat text that looks like a special token (a literal ``<|endoftext|>`` in a document) as plain
text, add no BOS/EOS (the step appends EOS itself) and run on one thread: the step fans out processes.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

KINDS = ("tiktoken", "hf")
# GPT-2's split expression: what tokenizers' ByteLevel(use_regex=True) pre-tokenizer applies.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Always probed (besides the caller's sample): the cases where regex engines and merge rules part ways.
PROBE_TEXTS = (
    "Hello, world! It's a test: we'll see   what's  there.\n\n\tTabs\tand\r\nCRLF  \n   ",
    "I'M SHOUTING, YOU'RE NOT. Don't won't can't y'all 'tis ''quoted''",
    "def f(x):\n    return {'a': [1, 2, 3.14159], \"b\": x ** 2}  # comment\n\n\n        \n",
    "Numbers 1234567890 12,345.67 ¾ ² ٣٤٥ 一二三 0x7fff_ffff 1e-10",
    "Unicode: naïve café déjà vu Ångström Ωμέγα русский текст עברית العربية हिन्दी ไทย",
    "中文文本，包含标点。日本語のテキスト、カタカナ。한국어 텍스트입니다.",
    "Emoji 🎉🚀 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣ zwj\u200dnbsp\u00a0ideo\u3000line\u2028para\u2029end",
    "Combining e\u0301 a\u0308 o\u0302, control \x00\x01\x7f, BOM \ufeff, replacement \ufffd, private \ue000",
    "<|endoftext|> <|pad|> <|mask|> </s> <s> [CLS] literal special tokens are plain text",
    "    leading spaces\n" + " " * 40 + "x" + "\n" * 5 + "a" * 300 + " " + "ab" * 200 + "\t \t \n",
)


class EncoderError(ValueError):
    """The requested encoder cannot encode this tokenizer exactly."""


def single_threaded() -> None:
    """Keep ``tokenizers`` on this process's one thread (call in a worker before it first encodes)."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte as a printable character (what byte-level vocabularies are written in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _split_pattern(pre: dict[str, Any] | None) -> str:
    """The split expression tiktoken must apply, or EncoderError when the pre-tokenizer is not byte-level BPE's."""
    if pre is None:
        raise EncoderError("no pre-tokenizer")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        if steps[0].get("add_prefix_space"):
            raise EncoderError("ByteLevel add_prefix_space=True")
        return GPT2_PATTERN
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space")
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
            and "Regex" in steps[0].get("pattern", {})):
        return steps[0]["pattern"]["Regex"]  # Llama 3, Qwen 2 and the like: their own expression
    raise EncoderError(f"pre-tokenizer {[s.get('type') for s in steps]} is not a byte-level split tiktoken mirrors")


def tiktoken_spec(spec: dict[str, Any]) -> tuple[str, dict[bytes, int]]:
    """(split expression, mergeable ranks) of a tokenizer JSON that tiktoken can encode; EncoderError else."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise EncoderError(f"model {model.get('type')!r} is not BPE")
    if spec.get("normalizer") is not None:
        raise EncoderError(f"normalizer {spec['normalizer'].get('type')!r}")
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise EncoderError("BPE with dropout or subword prefix/suffix")
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    added = spec.get("added_tokens") or []
    if any(not a.get("special") for a in added):
        raise EncoderError("non-special added tokens (split out of the text before the model)")
    added_ids = {a["id"] for a in added}
    ranks: dict[bytes, int] = {}
    for text, token_id in model["vocab"].items():
        if token_id in added_ids:
            continue
        try:
            ranks[bytes(_UNICODE_TO_BYTE[c] for c in text)] = token_id
        except KeyError:
            raise EncoderError(f"token {text!r} is not written in the byte-level alphabet") from None
    if len(set(ranks.values())) != len(ranks):
        raise EncoderError("two tokens share an id")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise EncoderError("not every byte is a token")
    return pattern, ranks


def _self_encoding(tok: Tokenizer, spec: dict[str, Any]) -> None:
    """tiktoken takes a whole piece that is a token as that token; ``tokenizers`` does only if its merges
    get there (or with ``ignore_merges``). Check every token merges back to itself."""
    if spec["model"].get("ignore_merges"):
        return
    added = {a["id"] for a in spec.get("added_tokens") or []}
    for text, token_id in spec["model"]["vocab"].items():
        if token_id not in added:
            pieces = tok.model.tokenize(text)
            if len(pieces) != 1 or pieces[0].id != token_id:
                raise EncoderError(f"token {text!r} does not merge back to itself")


class Encoder:
    """Texts -> token ids (uint32 arrays, nothing added), with the tiktoken or the ``tokenizers`` engine.

    Pickles as its tokenizer JSON and kind: a worker process rebuilds it in about 0.1 s, without probing.
    """

    def __init__(self, tok_json: str, kind: str, reason: str = "") -> None:
        if kind not in KINDS:
            raise EncoderError(f"encoder kind {kind!r}: expected one of {KINDS}")
        self.tok_json, self.kind, self.reason = tok_json, kind, reason
        self.tokenizer: Tokenizer | None = None
        self._tiktoken = None
        if kind == "tiktoken":
            import tiktoken

            spec = json.loads(tok_json)
            pattern, ranks = tiktoken_spec(spec)
            self.vocab_size = max([*ranks.values(), *(a["id"] for a in spec.get("added_tokens") or [])]) + 1
            try:
                self._tiktoken = tiktoken.Encoding("pretrain", pat_str=pattern, mergeable_ranks=ranks,
                                                   special_tokens={})
            except Exception as err:  # tiktoken's regex engine rejects the split expression
                raise EncoderError(f"tiktoken cannot build this encoding: {err}") from err
        else:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_str(tok_json)
            self.tokenizer.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text
            self.vocab_size = max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def create(cls, tok: Tokenizer, mode: str = "auto", probe: list[str] | None = None) -> Encoder:
        """The encoder for ``mode`` (auto | tiktoken | hf); ``probe``: sample texts both engines must agree on."""
        tok_json = tok.to_str()
        if mode == "hf":
            return cls(tok_json, "hf", "asked for")
        if mode not in ("auto", "tiktoken"):
            raise EncoderError(f"encoder mode {mode!r}: expected auto, tiktoken or hf")
        try:
            spec = json.loads(tok_json)
            tiktoken_spec(spec)
            _self_encoding(tok, spec)
            encoder = cls(tok_json, "tiktoken", "same ids as tokenizers on the probe")
            reference = cls(tok_json, "hf")
            texts = [*PROBE_TEXTS, *(probe or [])]
            for index, (ours, theirs) in enumerate(zip(encoder.encode_batch(texts), reference.encode_batch(texts),
                                                       strict=True)):
                if not np.array_equal(ours, theirs):
                    raise EncoderError(f"tiktoken and tokenizers disagree on probe text {index}: "
                                       f"{texts[index][:60]!r}")
        except EncoderError as err:
            if mode == "tiktoken":
                raise EncoderError(f"encoder 'tiktoken' cannot encode this tokenizer exactly: {err}") from err
            return cls(tok_json, "hf", f"tiktoken unfit: {err}")
        return encoder

    @classmethod
    def from_json(cls, tok_json: str, mode: str = "auto", kind: str | None = None,
                  probe: list[str] | None = None) -> Encoder:
        """Rebuild in a worker: ``kind`` is the parent's decision (no probing again); the process goes
        single-threaded since the step runs one worker per core."""
        single_threaded()
        if kind is not None:
            return cls(tok_json, kind)
        from tokenizers import Tokenizer

        return cls.create(Tokenizer.from_str(tok_json), mode, probe)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Encoder, (self.tok_json, self.kind, self.reason))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids per text, np.uint32, no special tokens added."""
        if self._tiktoken is not None:
            encode = self._tiktoken.encode_ordinary
            return [np.array(encode(text), dtype=np.uint32) for text in texts]
        assert self.tokenizer is not None
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # fast: no offsets
        encodings = encode(texts, add_special_tokens=False)
        return [np.array(e.ids, dtype=np.uint32) for e in encodings]
