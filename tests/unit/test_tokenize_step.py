"""The tokenize step on documents the tests make: fan-out per partition, split, mixture, fingerprint, bad input."""

from __future__ import annotations

import json
import os
import pydoc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain import storage
from pretrain.config import RecipeError, load_recipe
from pretrain.data import tokenize as step
from pretrain.data.documents import ShardWriter
from pretrain.manifest import Manifest, Shard
from pretrain.report import manifest_markdown
from pretrain.tokens import open_shard

MODULES = ["json", "csv", "textwrap", "string", "shlex", "difflib", "heapq", "bisect", "fractions", "statistics",
           "calendar", "pprint", "argparse", "logging", "pathlib", "zipfile"]


def real_texts(n: int, offset: int = 0) -> list[str]:
    """Paragraphs of the installed Python's documentation: real text of varied length."""
    out: list[str] = []
    for name in MODULES:
        lines = pydoc.render_doc(__import__(name), renderer=pydoc.plaintext).splitlines()
        out += ["\n".join(lines[i:i + 12]) for i in range(0, len(lines), 12)]
    out = [t for t in out if len(t) > 120]
    assert len(out) >= offset + n
    return out[offset: offset + n]


def documents(root, layout: dict[str, list[list[str]]]) -> Manifest:
    """A deduplicated documents manifest: per source, one shard per list of texts."""
    shards = []
    for source, parts in layout.items():
        for i, texts in enumerate(parts):
            url = os.path.join(root, "dedup", f"{source}-{i}.parquet")
            with ShardWriter(url) as writer:
                writer.write_rows([{"id": f"{source}-{i}-{j}", "text": t, "source": source, "source_id": str(j),
                                    "url": "", "date": "", "license": "", "meta": "{}"} for j, t in enumerate(texts)])
                shard = writer.close()
            shard.meta = {"source": source}
            shards.append(shard)
    count = sum(len(p) for v in layout.values() for p in v)
    return Manifest(kind="documents", root=str(root), fingerprint=f"docs-{count}", shards=shards)


def recipe_at(root, *overrides: str):
    return load_recipe("tiny", [f"run_root={root / 'run'}", "sources.0.name=web", "sources.1.name=code",
                                "tokenizer.vocab_size=400", "split.val_fraction=0.2", "model.seq_len=16",
                                *overrides])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    texts = real_texts(400)
    return root, documents(root, {"web": [texts[:150], texts[150:300]], "code": [texts[300:400]]})


def test_one_shard_per_partition_and_split_with_checksums_and_a_per_source_split(corpus, tmp_path):
    _, docs = corpus
    recipe = recipe_at(tmp_path)
    tokens = step.tokenize(recipe, docs, workers=1)
    assert len(tokens.shards) == 2 * len(docs.shards)
    for shard in tokens.shards:
        header = json.loads(storage.read_text(shard.url + ".json"))
        assert shard.checksum == header["checksum"] and header["checksum"].startswith("xxh3_64:")
        assert header["source"] == shard.meta["source"] and header["split"] == shard.meta["split"]
        mapped = open_shard(shard.url, verify=True)
        assert mapped.tokens.size == shard.rows and mapped.tokens.dtype == np.uint16
        ends = np.load(shard.url + ".idx.npy")
        assert len(ends) == shard.meta["documents"] and (ends == 0).sum() == 0
        if len(ends):
            assert (np.asarray(mapped.tokens)[ends - 1] == tokens.extra["eos_id"]).all()  # EOS after every document
    by_source = tokens.stats["by_source"]
    assert set(by_source) == {"web", "code"} and all(v["val_documents"] > 0 for v in by_source.values())
    total_docs = sum(v["train_documents"] + v["val_documents"] for v in by_source.values())
    assert total_docs == 400 and 0.1 < tokens.stats["val_documents"] / total_docs < 0.3
    mixture = tokens.extra["mixture"]  # no weights: every source at its natural share, one epoch
    assert {m["epochs"] for m in mixture.values()} == {1.0}
    assert sum(m["planned_tokens"] for m in mixture.values()) == tokens.stats["train_tokens"]
    assert tokens.extra["encoder"] in ("tiktoken", "hf")


def test_a_pool_of_workers_writes_the_same_shards_and_reruns_reuse_everything(corpus, tmp_path):
    _, docs = corpus
    one = step.tokenize(recipe_at(tmp_path / "a"), docs, workers=1)
    two = step.tokenize(recipe_at(tmp_path / "b"), docs, workers=2)
    assert [s.checksum for s in one.shards] == [s.checksum for s in two.shards]
    stamp = os.stat(one.shards[0].url + ".bin").st_mtime_ns
    assert step.tokenize(recipe_at(tmp_path / "a"), docs).to_json() == one.to_json()
    assert os.stat(one.shards[0].url + ".bin").st_mtime_ns == stamp


def test_mixture_weights_plan_epochs_and_change_the_fingerprint(corpus, tmp_path):
    _, docs = corpus
    natural = step.tokenize(recipe_at(tmp_path / "n"), docs)
    mixed = step.tokenize(recipe_at(tmp_path / "m", "mixture.weights={web: 1, code: 1}"), docs)
    assert mixed.fingerprint != natural.fingerprint
    m = mixed.extra["mixture"]
    assert m["web"]["weight"] == m["code"]["weight"] == 0.5
    assert m["code"]["epochs"] > 1 > m["web"]["epochs"]  # the small source is up-sampled, the big one down-sampled
    for v in m.values():
        assert abs(v["planned_tokens"] - v["epochs"] * v["available_tokens"]) <= 1
    assert "| code | 0.500 |" in manifest_markdown(mixed)
    longer = step.tokenize(recipe_at(tmp_path / "n", "model.seq_len=32"), docs)
    assert longer.fingerprint != natural.fingerprint  # seq_len shapes the saved tokenizer


def test_bad_input_is_a_clear_error(corpus, tmp_path):
    root, docs = corpus
    with pytest.raises(RecipeError, match=r"split\.val_fraction"):
        step.tokenize(recipe_at(tmp_path / "v", "split.val_fraction=0.0001"), docs)
    with pytest.raises(RecipeError, match="unknown source"):
        recipe_at(tmp_path, "mixture.weights={web: 1, nosuch: 1}")
    wrong = os.path.join(root, "wrong.parquet")
    pq.write_table(pa.table({"id": ["a"], "body": ["no text column"]}), wrong)
    bad = Manifest(kind="documents", root=str(root), fingerprint="wrong", shards=[
        *docs.shards, Shard(url=wrong, rows=1, bytes=10, meta={"source": "web"})])
    with pytest.raises(Exception, match=r"wrong\.parquet"):
        step.tokenize(recipe_at(tmp_path / "w"), bad, workers=1)
    assert not storage.exists(str(tmp_path / "w" / "run" / "tokens" / "_MANIFEST.json"))


def test_a_given_tokenizer_folder_or_model_folder_is_used(corpus, tmp_path, s3):
    _, docs = corpus
    trained = step.tokenize(recipe_at(tmp_path / "t"), docs)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = storage.join(trained.extra["tokenizer"], name)
        if storage.exists(src):
            (model_dir / name).write_bytes(storage.read_bytes(src))
    (model_dir / "model.safetensors").write_bytes(b"weights that must not be copied")
    for uri in (str(model_dir), f"{s3}/models/m"):
        if uri.startswith("s3://"):
            storage.upload_dir(str(model_dir), uri)
        run = recipe_at(tmp_path / f"i{len(uri)}", f"model.init_from={uri}")
        tokens = step.tokenize(run, docs)
        assert tokens.extra["tokenizer_hash"] == trained.extra["tokenizer_hash"]
        assert not storage.exists(storage.join(tokens.extra["tokenizer"], "model.safetensors"))
    with pytest.raises(RecipeError, match=r"tokenizer\.path"):
        recipe_at(tmp_path, f"model.init_from={model_dir}", f"tokenizer.path={tmp_path}/other")
