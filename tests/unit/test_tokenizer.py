"""The tokenizer package: a fair training sample across sources, BPE/Unigram training, HF folders (local and
S3), special tokens of loaded tokenizers, and the tiktoken encoder's ids matching ``tokenizers`` exactly."""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from pydoc_data.topics import topics
from types import SimpleNamespace

import numpy as np
import pytest

from pretrain import storage
from pretrain.config import TokenizerConfig
from pretrain.data.documents import ShardWriter
from pretrain.data.tokenizer import (
    EOS,
    MASK,
    PAD,
    Encoder,
    EncoderError,
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    tokenizer_hash,
    tokenizer_source,
    train_tokenizer,
    training_sample,
)
from pretrain.manifest import Manifest

REAL = [topics[k] for k in sorted(topics)]  # the language reference: real English prose with code
UNICODE = [
    "Größenordnung naïve façade — “quotes” ‘single’ … Ελληνικά Кириллица",
    "中文：自然语言处理是人工智能的一个分支。日本語：東京は日本の首都です。한국어: 안녕하세요, 세계!",
    "emoji 🎉🎉🎉 👩🏽‍💻 family 👨‍👩‍👧 flags 🇩🇪🇧🇷 and ✨sparkles✨ done 🚀",
    "whitespace runs:     five\t\t\ttabs\n\n\n\nnewlines \r\n crlf \u00a0nbsp\u3000ideographic  \n    \n",
    "مرحبا بالعالم — שלום עולם — नमस्ते दुनिया — สวัสดีชาวโลก",
    "x = {'k': [1, 2, 3]}\n\tif x['k'][0] >= 1_000_000: print(f\"{x!r:>10}\")  # ok\n" + " " * 33 + "end",
    "<|endoftext|> written inside a document stays text, as do <|pad|> and <|mask|>",
]


def documents(tmp_path, sources: dict[str, list[list[str]]]) -> Manifest:
    """A documents manifest: per source, one Parquet shard per list of texts."""
    shards = []
    for source, parts in sources.items():
        for n, texts in enumerate(parts):
            writer = ShardWriter(str(tmp_path / "docs" / f"{source}-{n}.parquet"))
            writer.write_rows([{"id": f"{source}-{n}-{i}", "text": t, "source": source} for i, t in enumerate(texts)])
            shard = writer.close()
            shard.meta = {"source": source}
            shards.append(shard)
    return Manifest(kind="documents", root=str(tmp_path / "docs"), fingerprint="f", shards=shards)


def chars_by_source(batches) -> Counter:
    got: Counter = Counter()
    for batch in batches:
        assert batch and all(isinstance(t, str) for t in batch)
        for text in batch:
            got[text.split(":", 1)[0]] += len(text)
    return got


def texts(source: str, n: int, width: int = 100) -> list[str]:
    return [f"{source}:{i:05d}:".ljust(width, "x") for i in range(n)]


@pytest.fixture(scope="module")
def bpe():
    cfg = TokenizerConfig(vocab_size=1200, min_frequency=2)
    return train_tokenizer([REAL[i:i + 50] for i in range(0, len(REAL), 50)], cfg)


@pytest.fixture(scope="module")
def unigram():
    cfg = TokenizerConfig(kind="unigram", vocab_size=400)
    return train_tokenizer([REAL[:60]], cfg)


# ------------------------------------------------------------------------------------------ training sample


def test_even_sample_gives_each_source_its_share_and_the_small_ones_leftover_to_the_big(tmp_path):
    manifest = documents(tmp_path, {"big": [texts("big", 300), texts("big", 300)], "small": [texts("small", 20)]})
    got = chars_by_source(training_sample(manifest, 10_000, None, seed=1))
    assert got["small"] == 2_000  # all it has: less than its half
    assert 8_000 <= got["big"] < 8_100  # its half plus the small one's leftover, whole documents
    both = chars_by_source(training_sample(manifest, 3_000, None, seed=1))
    assert 1_500 <= both["small"] < 1_600 and 1_500 <= both["big"] < 1_600


def test_weights_are_honoured_and_checked(tmp_path):
    manifest = documents(tmp_path, {"big": [texts("big", 300)], "small": [texts("small", 20)]})
    got = chars_by_source(training_sample(manifest, 4_000, {"big": 3.0, "small": 1.0}, seed=0))
    assert 3_000 <= got["big"] < 3_100 and 1_000 <= got["small"] < 1_100
    only_big = chars_by_source(training_sample(manifest, 4_000, {"big": 1.0}, seed=0))
    assert set(only_big) == {"big"}
    with pytest.raises(ValueError, match=r"unknown sources.*'web'"):
        list(training_sample(manifest, 1_000, {"web": 1.0}, seed=0))


def test_shard_order_is_seeded_and_covers_the_source(tmp_path):
    manifest = documents(tmp_path, {"a": [texts(f"a{n}", 50) for n in range(6)]})
    first = {s: chars_by_source(training_sample(manifest, 100, None, seed=s)) for s in range(8)}
    assert first[3] == chars_by_source(training_sample(manifest, 100, None, seed=3))  # reproducible
    assert len({next(iter(c)) for c in first.values()}) > 1  # not always the manifest's first shard


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_trained_tokenizers_carry_the_special_tokens_and_never_unk(kind, bpe, unigram):
    tok = bpe if kind == "bpe" else unigram
    assert [tok.token_to_id(t) for t in (EOS, PAD, MASK)] == [0, 1, 2]
    for text in UNICODE:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert json.loads(tok.to_str())["model"]["type"] == ("BPE" if kind == "bpe" else "Unigram")


# ------------------------------------------------------------------------------------------ folders and S3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_saved_folder_loads_with_auto_tokenizer_and_encodes_the_same(where, bpe, tmp_path, request):
    from transformers import AutoTokenizer

    base = str(tmp_path) if where == "local" else request.getfixturevalue("s3")
    url = storage.join(base, "tokenizer")
    save_tokenizer(bpe, url, model_max_length=512)
    hf = AutoTokenizer.from_pretrained(storage.local_copy(url))
    assert (hf.eos_token_id, hf.pad_token_id, hf.mask_token_id, hf.model_max_length) == (0, 1, 2, 512)
    loaded = load_tokenizer(url)
    for text in [REAL[5][:2000], *UNICODE[:-1]]:
        ids = bpe.encode(text, add_special_tokens=False).ids
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.encode(text, add_special_tokens=False).ids == ids
    assert special_ids(loaded, url) == {"eos": 0, "pad": 1, "mask": 2}
    digest = tokenizer_hash(url)
    assert len(digest) == 16 and digest == tokenizer_hash(storage.join(url, "tokenizer.json"))


def test_loaded_folder_with_its_own_eos_token(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(REAL[:20], trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                           show_progress=False))
    folder = str(tmp_path / "llama-like")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    loaded = load_tokenizer(folder)
    assert special_ids(loaded, folder) == {"eos": 2, "pad": None, "mask": None}
    encoder = Encoder.create(loaded, "auto")
    assert encoder.kind == "hf" and "pre-tokenizer" in encoder.reason  # Metaspace: not byte-level
    assert encoder.encode_batch(["Hello world"])[0].tolist() == loaded.encode("Hello world",
                                                                              add_special_tokens=False).ids
    no_eos = Tokenizer(models.BPE(unk_token="<unk>"))
    no_eos.add_special_tokens(["<unk>"])
    with pytest.raises(TokenizerError, match="no end-of-text token"):
        special_ids(no_eos, folder + "-missing")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_missing_or_corrupt_tokenizer_names_the_url(where, tmp_path, request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("s3")
    missing = storage.join(base, "nothing-here")
    with pytest.raises(TokenizerError, match=r"nothing-here.*no tokenizer.json"):
        load_tokenizer(missing)
    with pytest.raises(TokenizerError, match="nothing-here"):
        tokenizer_hash(missing)
    corrupt = storage.join(base, "corrupt")
    storage.write_text(storage.join(corrupt, "tokenizer.json"), '{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(TokenizerError, match=r"corrupt.*not a valid tokenizers file"):
        load_tokenizer(corrupt)


def test_tokenizer_source_prefers_the_initial_model():
    def recipe(init_from=None, path=None):
        return SimpleNamespace(model=SimpleNamespace(init_from=init_from), tokenizer=SimpleNamespace(path=path))

    assert tokenizer_source(recipe()) is None
    assert tokenizer_source(recipe(path="s3://b/tok")) == "s3://b/tok"
    assert tokenizer_source(recipe(init_from="s3://b/model")) == "s3://b/model"
    assert tokenizer_source(recipe(init_from="s3://b/model", path="s3://b/model/")) == "s3://b/model"
    with pytest.raises(TokenizerError, match=r"differs from model.init_from"):
        tokenizer_source(recipe(init_from="s3://b/model", path="s3://b/other"))


# ------------------------------------------------------------------------------------------------ encoders


def test_tiktoken_gives_the_ids_tokenizers_gives(bpe):
    encoder = Encoder.create(bpe, "auto", probe=REAL[:5])
    assert encoder.kind == "tiktoken", encoder.reason
    assert encoder.vocab_size == bpe.get_vocab_size()
    hf = Encoder.create(bpe, "hf")
    held_out = [*REAL[-120:], *UNICODE, "".join(UNICODE) * 3, " " * 500, "", "a" * 5000]
    ours, theirs = encoder.encode_batch(held_out), hf.encode_batch(held_out)
    for text, a, b in zip(held_out, ours, theirs, strict=True):
        assert a.dtype == np.uint32 and a.tolist() == b.tolist(), text[:80]
        assert a.tolist() == bpe.encode(text, add_special_tokens=False).ids or EOS in text
    literal = encoder.encode_batch([UNICODE[-1]])[0]
    assert 0 not in literal.tolist()  # a literal "<|endoftext|>" is text, not EOS
    assert sum(a.size for a in ours) > 50_000  # a real amount of text was compared


def test_encoder_pickles_and_rebuilds_in_a_worker(bpe, monkeypatch):
    monkeypatch.setenv("RAYON_NUM_THREADS", "")  # restored after the test, as is the next one
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    encoder = Encoder.create(bpe, "auto")
    copy = pickle.loads(pickle.dumps(encoder))
    assert copy.kind == "tiktoken"
    rebuilt = Encoder.from_json(bpe.to_str(), "auto", "tiktoken")
    sample = REAL[10:20]
    want = [a.tolist() for a in encoder.encode_batch(sample)]
    assert [a.tolist() for a in copy.encode_batch(sample)] == want
    assert [a.tolist() for a in rebuilt.encode_batch(sample)] == want
    # the worker went single-threaded
    assert os.environ["RAYON_NUM_THREADS"] == "1" and os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_auto_falls_back_to_hf_for_unigram_and_tiktoken_mode_refuses(unigram):
    encoder = Encoder.create(unigram, "auto")
    assert encoder.kind == "hf" and "Unigram" in encoder.reason
    assert encoder.encode_batch(UNICODE)[2].tolist() == unigram.encode(UNICODE[2], add_special_tokens=False).ids
    with pytest.raises(EncoderError, match=r"tiktoken.*Unigram"):
        Encoder.create(unigram, "tiktoken")


def test_auto_falls_back_when_the_engines_disagree(bpe):
    """tiktoken drops text its split expression does not match, ``tokenizers`` keeps it: the probe sees it.
    A normalizer (it changes the text first) is refused from the JSON alone."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers

    gaps = Tokenizer.from_str(bpe.to_str())
    gaps.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r" ?\p{L}+| ?\p{N}+"), "isolated"),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    encoder = Encoder.create(gaps, "auto")
    assert encoder.kind == "hf" and "disagree on probe text" in encoder.reason
    lowered = Tokenizer.from_str(bpe.to_str())
    lowered.normalizer = normalizers.Lowercase()
    encoder = Encoder.create(lowered, "auto")
    assert encoder.kind == "hf" and "normalizer" in encoder.reason
    with pytest.raises(EncoderError, match=r"tiktoken.*normalizer"):
        Encoder.create(lowered, "tiktoken")
