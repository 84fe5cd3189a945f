"""Data facts read back from a real run of the data steps: funnel, drops, duplicates, curation, knowledge cutoff."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pretrain.config import load_recipe
from pretrain.data import facts as datacard
from pretrain.data.dedup import dedup
from pretrain.data.documents import iter_batches
from pretrain.data.filters import filter_shard
from pretrain.data.ingest import ingest
from pretrain.data.plan import plan
from pretrain.data.readers.base import document_id
from pretrain.data.tokenize import DateStats, document_day, is_validation, tokenize
from pretrain.manifest import Manifest

VOCABULARY = ("river stone garden window market letter silver morning harbor village winter candle forest bridge "
              "teacher engine paper summer orange castle mountain doctor kitchen island pocket ladder violin meadow "
              "basket thunder lantern compass feather blanket journey harvest painter sailor canyon glacier orchard "
              "the a of and to in that with for on was is by as at from quietly slowly brightly carefully")
WORDS = VOCABULARY.split()
VAL_FRACTION, SEED = 0.25, 0


def prose(rng: random.Random, sentences: int = 4) -> str:
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))).capitalize() + "."
                    for _ in range(sentences))


def pick_id(source: str, prefix: str, text: str, val: bool) -> str:
    """An id field value that sends the document to the wanted split (the split hashes the document id)."""
    for i in range(1000):
        sid = f"{prefix}-{i}"
        if is_validation(document_id(source, sid, text), VAL_FRACTION, SEED) == val:
            return sid
    raise AssertionError("no id found")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two JSONL sources through plan, ingest, filter, dedup and tokenize; returns the recipe and what was planted."""
    root = tmp_path_factory.mktemp("datacard")
    rng = random.Random(1)
    news = [{"id": f"n{i}", "text": prose(rng), "date": f"{2019 + i % 5}-0{1 + i % 9}-1{i % 10}"} for i in range(30)]
    news[3]["text"] += " Write to alice.smith@example.com for a copy."  # one e-mail address to redact
    planted = {
        "short": {"id": "short", "text": "Too short to keep.", "date": "2030-01-01"},  # min_chars drops it
        "copy": {"id": "copy", "text": news[0]["text"], "date": "2028-06-01"},  # an exact copy, later in the file
    }
    late = prose(rng)
    planted["late_val"] = {"id": pick_id("news", "late", late, True), "text": late, "date": "2027-01-01"}
    news += [planted["short"], planted["copy"], planted["late_val"]]
    forum = [{"id": f"f{i}", "text": prose(rng), "date": "2021-05-05T10:00:00Z" if i % 2 else ""} for i in range(12)]
    tz = prose(rng)  # 23:30 at UTC-5 on New Year's Eve is 2024-01-01 in UTC: the latest train date
    planted["latest_train"] = {"id": pick_id("forum", "tz", tz, False), "text": tz,
                               "date": "2023-12-31T23:30:00-05:00"}
    planted["toxic"] = {"id": "toxic", "text": " ".join(["zorbleflux words here again"] * 8), "date": "2029-01-01"}
    planted["invalid"] = {"id": "invalid", "text": prose(rng), "date": "someday"}
    forum += [planted["latest_train"], planted["toxic"], planted["invalid"]]
    for name, rows in (("news", news), ("forum", forum)):
        (root / name).mkdir()
        (root / name / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "toxic.txt").write_text("zorbleflux\n")
    prose_rules = {"gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False},
                   "gibberish": {"enabled": False}, "language": {"enabled": False},
                   "toxic": {"wordlist": str(root / "toxic.txt"), "languages": []}}
    tree = {"name": "datacard", "run_root": str(root / "run"), "seed": SEED,
            "sources": [{"name": n, "format": "jsonl", "uri": str(root / n), "id_field": "id", "date_field": "date",
                         "license": lic} for n, lic in (("news", "CC-BY-4.0"), ("forum", "MIT"))],
            "filter": {"min_chars": 100, "min_words": 10, "profiles": {"prose": prose_rules}},
            "dedup": {"fuzzy": False}, "tokenizer": {"vocab_size": 300},
            "split": {"val_fraction": VAL_FRACTION}, "model": {"seq_len": 16}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(tree))
    recipe = load_recipe(str(root / "recipe.yaml"))
    filtered = [filter_shard(recipe, ingest(recipe, p)) for p in plan(recipe).extra["partitions"]]
    tokens = tokenize(recipe, dedup(recipe, filtered), workers=1)
    return recipe, tokens, planted, {"news": news, "forum": forum}


def deduplicated(recipe) -> list[dict]:
    shards = Manifest.load(recipe.url("dedup")).shards
    return [row for s in shards for b in iter_batches(s.url) for row in b.to_pylist()]


def test_knowledge_cutoff_is_the_latest_train_date_not_a_dropped_duplicate_or_val_one(run):
    recipe, tokens, planted, _ = run
    data = datacard.collect(recipe)
    assert data["dates"]["knowledge_cutoff"] == "2024-01-01"
    assert data["dates"]["basis"] == "latest document date in the train split"
    # the later-dated documents really were dropped, removed as duplicates or sent to validation
    drops = data["drops"]
    assert drops["min_chars"]["sample"]["id"] == document_id("news", "short", planted["short"]["text"])
    assert drops["toxic.max_fraction"]["sample"]["id"] == document_id("forum", "toxic", planted["toxic"]["text"])
    rows = deduplicated(recipe)
    ids = {r["id"] for r in rows}
    assert document_id("news", "copy", planted["copy"]["text"]) not in ids
    late_val = document_id("news", planted["late_val"]["id"], planted["late_val"]["text"])
    assert late_val in ids and is_validation(late_val, VAL_FRACTION, SEED)
    # independently: the latest UTC day among deduplicated documents of the train split
    train_days = [document_day(r["date"]) for r in rows if not is_validation(r["id"], VAL_FRACTION, SEED)]
    assert max(d for d in train_days if d) == data["dates"]["knowledge_cutoff"]
    # every document of the token shards is counted, dated or not (an unreadable date counts as undated)
    for source, row in tokens.stats["by_source"].items():
        train, val = data["dates"]["by_source"][source], data["dates"]["val_by_source"][source]
        assert train["dated"] + train["undated"] == row["train_documents"]
        assert val["dated"] + val["undated"] == row["val_documents"]
    forum = [data["dates"][k]["forum"] for k in ("by_source", "val_by_source")]
    assert sum(r["invalid"] for r in forum) == 1
    assert sum(r["undated"] for r in forum) == 6 + 1  # six empty dates, one "someday"
    assert data["dates"]["by_source"]["forum"]["latest"] == "2024-01-01"
    news_train = data["dates"]["by_source"]["news"]
    assert news_train["latest"] <= "2023-12-31" and sum(news_train["by_year"].values()) == news_train["dated"]


def test_dates_are_read_from_the_documents_when_the_tokens_manifest_has_none(run, tmp_path):
    recipe, tokens, _, _ = run
    recorded = datacard.collect(recipe)["dates"]
    stripped = Manifest.from_json(tokens.to_json())
    del stripped.extra["dates"]
    stripped.save()
    try:
        fallback = datacard.collect(recipe)["dates"]
    finally:
        tokens.save()
    assert fallback["counted_from"] != recorded["counted_from"]
    assert {k: v for k, v in fallback.items() if k != "counted_from"} == \
        {k: v for k, v in recorded.items() if k != "counted_from"}


def test_funnel_drops_duplicates_and_curation_add_up(run):
    recipe, tokens, planted, written = run
    data = datacard.collect(recipe)
    stages = {s["stage"]: s["by_source"] for s in data["funnel"]}
    assert list(stages) == ["read", "ingested", "kept by filters", "after dedup", "in token shards"]
    n_news, n_forum = len(written["news"]), len(written["forum"])
    assert [stages[k]["news"]["documents"] for k in stages] == [n_news, n_news, n_news - 1, n_news - 2, n_news - 2]
    assert [stages[k]["forum"]["documents"] for k in stages] == [n_forum, n_forum, n_forum - 1, n_forum - 1,
                                                                   n_forum - 1]
    ingested = sum(len(r["text"].encode()) for r in written["news"])
    assert stages["ingested"]["news"]["bytes"] == ingested
    # the kept documents as written, after the e-mail's redaction (the filter counts them as it writes them)
    kept = sum(len(t.encode()) for f in sorted((Path(recipe.root) / "filtered" / "kept" / "news").glob("*.parquet"))
               for t in pq.read_table(f, columns=["text"]).column("text").to_pylist())
    assert 0 < stages["kept by filters"]["news"]["bytes"] == kept < ingested
    assert stages["kept by filters"]["forum"]["bytes"] == \
        sum(len(r["text"].encode()) for r in written["forum"]) - len(planted["toxic"]["text"].encode())
    in_tokens = tokens.stats["by_source"]["news"]
    assert stages["after dedup"]["news"]["bytes"] == stages["in token shards"]["news"]["bytes"] == \
        in_tokens["train_bytes"] + in_tokens["val_bytes"]

    drops = data["drops"]
    assert drops["min_chars"]["by_source"] == {"news": 1} and drops["min_chars"]["sample"]["value"] == "18"
    assert drops["min_chars"]["sample"]["text"] == planted["short"]["text"]
    assert drops["toxic.max_fraction"]["documents"] == 1 and drops["toxic.max_fraction"]["by_source"] == {"forum": 1}

    [cluster] = data["duplicate_clusters"]
    assert cluster["size"] == 2
    assert [m["id"] for m in cluster["members"]] == [document_id("news", "n0", written["news"][0]["text"]),
                                                     document_id("news", "copy", planted["copy"]["text"])]
    assert [m["role"] for m in cluster["members"]] == ["kept", "exact"]

    cur = data["curation"]
    assert cur["news"]["documents_in"] == n_news and cur["forum"]["documents_in"] == n_forum
    assert cur["news"]["low_quality"] == pytest.approx(1 / n_news)
    assert cur["news"]["duplicate"] == pytest.approx(1 / n_news)
    assert cur["news"]["toxic"] == 0 and cur["forum"]["duplicate"] == 0
    assert cur["forum"]["toxic"] == pytest.approx(1 / n_forum)
    assert cur["news"]["pii_redactions"] == {"email": 1}

    assert data["sources"]["news"]["licenses"] == {"CC-BY-4.0": n_news - 2}
    assert data["sources"]["forum"]["licenses"] == {"MIT": n_forum - 1}
    assert data["sources"]["news"]["train_tokens"] == in_tokens["train_tokens"]
    assert data["dedup"]["by_source"]["news"] == {"documents_in": n_news - 1, "exact": 1, "fuzzy": 0,
                                                  "documents_out": n_news - 2}
    assert data["filters"]["profiles"] == {"news": "prose", "forum": "prose"}
    assert data["mixture"] == tokens.extra["mixture"] and data["trained_tokens_by_source"] is None


def test_categories_of_the_rules():
    assert datacard.category("toxic.max_fraction") == datacard.category("toxic.classifier") == "toxic"
    assert datacard.category("language.languages") == datacard.category("urls.blocked_domains") == "other_dropped"
    assert datacard.category("licenses.allowed") == "other_dropped"
    for rule in ("min_chars", "gopher_quality.min_stop_words", "c4.min_sentences", "code.max_line_length",
                 "gibberish.max_score", "fineweb.max_list_ratio"):
        assert datacard.category(rule) == "low_quality"


def test_date_stats_merge_and_a_run_root_with_nothing_yet(tmp_path):
    a, b = DateStats(), DateStats()
    for v in ("2020-05-01", "", "2021-01-01T00:00:00Z"):
        a.add(v)
    for v in ("2019-12-31T23:00:00-02:00", "nonsense"):
        b.add(v)
    merged = a.merge(b).as_dict()
    assert merged == {"dated": 3, "undated": 2, "invalid": 1, "earliest": "2020-01-01", "latest": "2021-01-01",
                      "by_year": {"2020": 2, "2021": 1}}
    assert DateStats.from_dict(merged).as_dict() == merged
    empty = datacard.collect(load_recipe("tiny", [f"run_root={tmp_path / 'nothing'}"]))
    assert empty["funnel"] == [] and empty["drops"] == {} and empty["sources"] == {}
    assert empty["dates"]["knowledge_cutoff"] is None and empty["mixture"] is None
