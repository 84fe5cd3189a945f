"""The issue's quality goals on a labelled corpus, with default settings as a new user would run them."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pretrain.config import load_recipe
from pretrain.data.dedup import dedup
from pretrain.data.filters import filter_shard
from pretrain.data.ingest import ingest
from pretrain.data.plan import plan
from pretrain.data.samples.quality import score, write_quality_corpus
from pretrain.manifest import Manifest


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    labels = write_quality_corpus(root / "input")
    recipe = load_recipe("tiny", [
        f"run_root={root / 'run'}",
        f"sources.0.uri={root / 'input' / 'code'}", "sources.0.name=code", "sources.0.include=['*.py', '*.js']",
        "sources.0.exclude=[]", "sources.0.max_documents=null", "sources.0.license=PSF-2.0",
        f"sources.1.uri={root / 'input' / 'web'}", "sources.1.name=web", "sources.1.license=",
    ])
    filtered = [filter_shard(recipe, ingest(recipe, p)) for p in plan(recipe).extra["partitions"]]
    deduped = dedup(recipe, filtered)
    after_filters = keys([s.url for m in filtered for s in m.shards])
    return labels, keys([s.url for s in deduped.shards]), after_filters, deduped


def keys(shard_urls: list[str]) -> set[str]:
    """The label keys of the documents in the shards: URL for web pages, source_id for code."""
    found = set()
    for url in shard_urls:
        for row in pq.read_table(url, columns=["source", "source_id", "url"]).to_pylist():
            found.add(row["url"] if row["source"] == "web" else row["source_id"])
    return found


def test_default_cleaning_removes_junk_resolves_copies_and_keeps_real_pages(cleaned):
    labels, surviving, after_filters, _ = cleaned
    result = score(labels, surviving, after_filters)
    missed_junk = sorted(k for k in labels["junk"] if k in surviving)
    unresolved = sorted(k for k, c in labels["copies"].items() if k in surviving and c["of"] in surviving)
    lost = sorted(k for k in labels["real"] if k not in after_filters)
    lost = sorted(k for k in labels["real"] if k not in after_filters)
    print("scores:", {k: v for k, v in result.items() if not isinstance(v, list)}, "lost:", lost)
    print("natural near copies merged by dedup (not planted):", result["natural_near_copies"])
    assert result["junk_removed"] >= 0.95, missed_junk
    assert result["copies_resolved"] >= 0.95, unresolved
    assert result["real_kept"] >= 0.95, lost


def test_the_ledger_of_the_labelled_run_adds_up(cleaned):
    *_, deduped = cleaned
    ledger = Manifest.load(deduped.root).extra["ledger"]
    assert ledger["total"]["balanced"] and ledger["total"]["read"] > 150
