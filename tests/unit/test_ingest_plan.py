"""The ingest step around any reader: partitions keyed by file and range, re-runs, the ledger, the pool."""

from __future__ import annotations

import os

import pytest

from pretrain import config, steps
from pretrain.config import load_recipe
from pretrain.data import ingest as ingest_module
from pretrain.data.ingest import LedgerError, ingest, shard_url
from pretrain.data.plan import plan
from pretrain.data.readers.base import Partition
from pretrain.data.samples import web
from pretrain.manifest import Manifest
from pretrain.report import manifest_markdown


def crawl_recipe(tmp_path, files: int = 3, **overrides):
    crawl = tmp_path / "crawl"
    for i in range(files):
        web.write_warc(crawl / f"part-{i}.warc.gz", 25, start=100 * i)
    extra = [f"{k}={v}" for k, v in overrides.items()]
    return load_recipe("examples/warc", [f"sources.0.uri={crawl}", f"run_root={tmp_path / 'run'}", *extra]), crawl


def test_a_rerun_redoes_only_partitions_without_a_marker_and_writes_the_same_shards(tmp_path):
    recipe, _ = crawl_recipe(tmp_path)
    parts = plan(recipe).extra["partitions"]
    first = [ingest(recipe, p) for p in parts]
    urls = [shard_url(recipe, Partition.from_dict(p)) for p in parts]
    mtimes = [os.stat(u).st_mtime_ns for u in urls]
    os.unlink(urls[1].replace(".parquet", ".manifest.json"))  # as if the worker died before committing
    again = [ingest(recipe, p) for p in parts]
    assert [os.stat(u).st_mtime_ns for u in urls][::2] == mtimes[::2]  # untouched
    assert os.stat(urls[1]).st_mtime_ns != mtimes[1]  # redone
    assert [m.shards[0].checksum for m in again] == [m.shards[0].checksum for m in first]  # and the same


def test_adding_a_file_adds_partitions_and_leaves_the_others(tmp_path):
    recipe, crawl = crawl_recipe(tmp_path)
    before = plan(recipe).extra["partitions"]
    web.write_warc(crawl / "part-0a.warc.gz", 5, start=900)  # sorts between existing files
    after = plan(recipe).extra["partitions"]
    keys = lambda ps: {Partition.from_dict(p).key for p in ps}  # noqa: E731
    assert keys(before) < keys(after) and len(after) == len(before) + 1
    assert {Partition.from_dict(p).shard_name for p in before} <= {Partition.from_dict(p).shard_name for p in after}


def test_a_code_upgrade_never_reuses_older_outputs(tmp_path, monkeypatch):
    recipe, _ = crawl_recipe(tmp_path, files=1)
    part = plan(recipe).extra["partitions"][0]
    first = ingest(recipe, part)
    assert ingest(recipe, part).fingerprint == first.fingerprint  # reused as is
    assert config.code_version().startswith("0.")
    monkeypatch.setattr(config, "_CODE_VERSION", "9.9.9")
    assert ingest(recipe, part).fingerprint != first.fingerprint


def test_a_reader_that_loses_a_document_fails_the_step_and_publishes_nothing(tmp_path, monkeypatch):
    recipe, _ = crawl_recipe(tmp_path, files=1)
    part = plan(recipe).extra["partitions"][0]

    class Lossy:
        @staticmethod
        def read(src, part, stats):
            stats.record(2)
            yield from ()

    monkeypatch.setattr(ingest_module, "reader", lambda fmt: Lossy)
    with pytest.raises(LedgerError, match="2 records read but 0 written"):
        ingest(recipe, part)

    class Broken:
        @staticmethod
        def read(src, part, stats):
            from pretrain.data.readers import warc

            for n, row in enumerate(warc.read(src, part, stats)):
                if n == 3:
                    raise OSError("the disk went away")
                yield row

    monkeypatch.setattr(ingest_module, "reader", lambda fmt: Broken)
    with pytest.raises(OSError, match="disk went away"):
        ingest(recipe, part)
    url = shard_url(recipe, Partition.from_dict(part))
    assert not os.path.exists(url) and not os.path.exists(url.replace(".parquet", ".manifest.json"))
    assert not [n for n in os.listdir(os.path.dirname(url)) if n.endswith(".tmp")]


def test_pretrain_data_runs_partitions_in_a_process_pool_with_the_same_result(tmp_path):
    recipe, _ = crawl_recipe(tmp_path)
    pooled = steps.data(recipe, workers=2)
    serial_recipe = recipe.model_copy(update={"run_root": str(tmp_path / "serial")})
    serial = steps.data(serial_recipe, workers=1)
    assert pooled.stats == serial.stats and pooled.extra["tokenizer_hash"] == serial.extra["tokenizer_hash"]
    dedup = Manifest.load(recipe.url("dedup"))
    ledger = dedup.extra["ledger"]
    assert ledger["total"]["balanced"] and ledger["sources"]["crawl"]["read"] == 3 * (25 + 9)
    assert ledger["sources"]["crawl"]["skipped"] == {"non_html": 15, "http_status": 3}
    text = manifest_markdown(dedup)
    assert "| crawl | 102 | 84 |" in text and "text/css 3" in text
    ingest_md = manifest_markdown(Manifest.load(str(next((tmp_path / "run" / "documents" / "crawl").glob(
        "*.manifest.json")))))
    assert "read 34 = written 28 + skipped 6" in ingest_md
