"""Formats and the data steps on small data the tests make themselves: ingest, filter, dedup, tokenize."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow.parquet as pq
import pytest

from pretrain import storage
from pretrain.config import load_recipe
from pretrain.data import documents
from pretrain.data.dedup import dedup
from pretrain.data.filters import filter_shard
from pretrain.data.ingest import ingest
from pretrain.data.plan import plan
from pretrain.data.samples import web as samples_web
from pretrain.data.tokenize import tokenize
from pretrain.manifest import Manifest

CODE = "".join(f"def f{i}(x):\n    '''Add {i} to x.'''\n    return x + {i}\n\n" for i in range(20))


def make_warc(path, pages: dict[str, bytes]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, body in pages.items():
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          http_headers=headers))


def page(words: int, title: str) -> bytes:
    body = "".join(f"<p>{title} says word{i} and text</p>" for i in range(words))
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>".encode()


@pytest.fixture
def sources(tmp_path):
    code = tmp_path / "repo"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "a.py").write_text(CODE)
    (code / "pkg" / "b.py").write_text(CODE)  # an exact duplicate of a.py
    (code / "pkg" / "c.py").write_text(CODE.replace("Add", "Plus"))
    (code / "pkg" / "short.py").write_text("x = 1\n")
    (code / "pkg" / "latin1.py").write_bytes("# caf\xe9\n".encode("latin-1") * 50)  # invalid UTF-8
    (code / "pkg" / "huge.py").write_text("y = 2\n" * 100_000)
    (code / "pkg" / "notes.txt").write_text("excluded by the include glob")
    web = tmp_path / "web"
    web.mkdir()
    real = {url: body.encode() for url, body, _ in samples_web.labelled_pages(5)}  # real text in a site template
    make_warc(web / "crawl.warc.gz", {**real, "https://example.org/spam": page(80, "Page 5")})
    return code, web


def recipe_for(tmp_path, code, web, root=None):
    return load_recipe("tiny", [
        f"run_root={root or tmp_path / 'run'}",
        f"sources.0.uri={code}", "sources.0.include=['*.py']", "sources.0.exclude=[]",
        "sources.0.max_document_bytes=100000", "sources.0.partitions=2",
        f"sources.1.uri={web}", "sources.1.partitions=1",
        "filter.min_chars=100", "filter.min_words=10", "tokenizer.vocab_size=300", "split.val_fraction=0.3",
        "model.seq_len=16",
    ])


def test_ingest_counts_every_skip_and_writes_the_documents_schema(tmp_path, sources):
    recipe = recipe_for(tmp_path, *sources)
    parts = plan(recipe).extra["partitions"]
    assert [(p["source"], p["unit"], p["start"]) for p in parts] == [
        ("stdlib-code", "bucket", 0), ("stdlib-code", "bucket", 1), ("pydoc-web", "file", 0)]
    code = [ingest(recipe, p) for p in parts[:2]]
    assert sum(m.stats["skipped"].get("too_large", 0) for m in code) == 1
    assert sum(m.stats["repaired"].get("invalid_utf8", 0) for m in code) == 1  # latin1.py: kept, bytes replaced
    assert sum(m.stats["documents"] for m in code) == 5  # a, b, c, short, latin1
    assert sum(m.stats["records"] for m in code) == 6    # notes.txt is not included
    table = pq.read_table(code[0].shards[0].url)
    assert table.schema.names == documents.SCHEMA.names
    meta = json.loads(table.column("meta")[0].as_py())
    assert meta["language"] == "python"
    web = ingest(recipe, parts[2])
    rows = pq.read_table(web.shards[0].url).to_pylist()
    assert len(rows) == 6 and rows[-1]["url"] == "https://example.org/spam"
    assert "<p>" not in rows[-1]["text"] and "word1 and text" in rows[-1]["text"]


def test_documents_load_with_hf_datasets(tmp_path, sources):
    import datasets

    recipe = recipe_for(tmp_path, *sources)
    m = ingest(recipe, plan(recipe).extra["partitions"][2])
    ds = datasets.load_dataset("parquet", data_files=[m.shards[0].url], split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 6 and set(documents.SCHEMA.names) == set(ds.column_names)


def test_corrupt_warc_is_counted_not_fatal(tmp_path, sources):
    code, web = sources
    good = (web / "crawl.warc.gz").read_bytes()
    (web / "crawl.warc.gz").write_bytes(good[: len(good) // 2])  # truncated mid-record
    (web / "zz-garbage.warc.gz").write_bytes(gzip.compress(b"this is not a WARC file at all\r\n" * 10))
    recipe = recipe_for(tmp_path, code, web)
    crawl, garbage = (ingest(recipe, p) for p in plan(recipe).extra["partitions"][2:])  # one partition per file
    assert 0 < crawl.stats["documents"] < 6
    assert crawl.stats["skipped"] == {"truncated": 1}  # the cut record, counted with its offset
    assert crawl.extra["errors"][0]["offset"] > 0 and crawl.extra["errors"][0]["url"].endswith("crawl.warc.gz")
    assert garbage.stats["documents"] == 0 and garbage.stats["files_skipped"] == {"not_a_warc_record": 1}


def test_filter_keeps_dropped_documents_with_their_reason(tmp_path, sources):
    recipe = recipe_for(tmp_path, *sources)
    parts = plan(recipe).extra["partitions"]
    results = [filter_shard(recipe, ingest(recipe, p)) for p in parts]
    dropped = [r for m in results for r in pq.read_table(m.extra["dropped"][0]["url"]).to_pylist()]
    assert {json.loads(r["meta"]).get("path", r["url"]): r["reason"] for r in dropped} == {
        "pkg/short.py": "min_chars", "pkg/latin1.py": "code.max_dup_line_frac",
        # the spam page repeats "Page 5 says" on every line: Gopher's top 2-gram rule (published threshold)
        "https://example.org/spam": "gopher_repetition.max_top_ngram_char_frac.2"}
    values = {r["reason"]: float(r["value"]) for r in dropped}
    assert values["min_chars"] == 6 and values["code.max_dup_line_frac"] == 0.98
    assert 0.2 < values["gopher_repetition.max_top_ngram_char_frac.2"] < 0.22
    kept = sum(m.stats["kept"] for m in results)
    assert kept + len(dropped) == sum(m.stats["documents_in"] for m in results)
    assert [m.extra["profile"] for m in results] == ["code", "code", "web"]


def test_filter_rules_name_the_reason():
    from pretrain.config import FilterConfig
    from pretrain.data.filters.base import Doc
    from pretrain.data.filters.step import chain_for

    chain = chain_for(FilterConfig(min_chars=10, min_words=3), "code")
    texts = ["short", "def f(x):\n    return x + 1\n\ndef g(y):\n    return y * 2\n",
             "@@@@ #### $$$$ %%%% ^^^^ &&&& a b c", "same\n" * 10 + "other\n"]
    assert [chain.judge(Doc(t)).reason for t in texts] == [
        "min_chars", None, "code.min_alnum_fraction", "code.max_dup_line_frac"]


def test_dedup_and_tokenize(tmp_path, sources):
    recipe = recipe_for(tmp_path, *sources)
    parts = plan(recipe).extra["partitions"]
    filtered = [filter_shard(recipe, ingest(recipe, p)) for p in parts]
    deduped = dedup(recipe, filtered)
    # b.py == a.py (exact: the first in run order is kept); c.py is a near copy of them (every "Add" -> "Plus")
    assert deduped.stats["exact_duplicates"] == 1 and deduped.stats["fuzzy_duplicates"] == 1
    assert deduped.stats["documents_out"] == deduped.stats["documents_in"] - 2 == deduped.stats["documents_in"] - \
        deduped.stats["duplicates"]
    tokens = tokenize(recipe, deduped)
    assert tokens.stats["train_documents"] + tokens.stats["val_documents"] == deduped.stats["documents_out"]
    assert tokens.stats["val_tokens"] > 0 and tokens.stats["train_tokens"] > 0
    assert storage.exists(storage.join(tokens.extra["tokenizer"], "tokenizer.json"))
    # Re-running a finished step reuses it: same manifest, nothing rewritten.
    again = tokenize(recipe, deduped)
    assert again.to_json() == tokens.to_json()
    assert Manifest.load(recipe.url("tokens")).fingerprint == tokens.fingerprint


def test_data_steps_on_s3(tmp_path, sources, s3):
    recipe = recipe_for(tmp_path, *sources, root=f"{s3}/runs/unit")
    parts = plan(recipe).extra["partitions"]
    deduped = dedup(recipe, [filter_shard(recipe, ingest(recipe, p)) for p in parts])
    tokens = tokenize(recipe, deduped)
    assert tokens.shards[0].url.startswith(s3)
    assert storage.exists(recipe.url("tokens", "_MANIFEST.json"))


def test_more_partitions_than_files_gives_empty_shards_that_flow_through(tmp_path, sources):
    code, web = sources
    recipe = recipe_for(tmp_path, code, web)
    recipe = recipe.model_copy(update={"sources": [recipe.sources[0].model_copy(update={"partitions": 12}),
                                                   recipe.sources[1]]})
    parts = plan(recipe).extra["partitions"]
    ingested = [ingest(recipe, p) for p in parts]
    assert sum(m.stats["documents"] == 0 for m in ingested) >= 6  # 6 code files over 12 partitions
    deduped = dedup(recipe, [filter_shard(recipe, m) for m in ingested])
    tokens = tokenize(recipe, deduped)
    assert tokens.stats["train_documents"] + tokens.stats["val_documents"] == deduped.stats["documents_out"]


def test_tokenize_with_a_given_tokenizer(tmp_path, sources):
    recipe = recipe_for(tmp_path, *sources)
    parts = plan(recipe).extra["partitions"]
    deduped = dedup(recipe, [filter_shard(recipe, ingest(recipe, p)) for p in parts])
    trained = tokenize(recipe, deduped)
    other = recipe_for(tmp_path, *sources, root=str(tmp_path / "run2"))
    other = other.model_copy(update={"tokenizer": other.tokenizer.model_copy(
        update={"path": trained.extra["tokenizer"], "vocab_size": 5000})})
    parts = plan(other).extra["partitions"]
    loaded = tokenize(other, dedup(other, [filter_shard(other, ingest(other, p)) for p in parts]))
    assert loaded.extra["tokenizer_hash"] == trained.extra["tokenizer_hash"]
    assert loaded.extra["vocab_size"] == trained.extra["vocab_size"] == 300  # the file's, not the config's
    assert loaded.stats["train_tokens"] == trained.stats["train_tokens"]
