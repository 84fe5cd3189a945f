"""Dedup across the whole run: exact and near copies across sources and partitions, on real installed text.

The labelled corpus: originals are sections of ``pydoc_data.topics`` (the language reference), stdlib
``.py`` files and long stdlib docstrings, each wrapped in a site template. Planted near copies of an
original: 5% or 10% of its words replaced, the last ~10% cut off, its template swapped for another
site's, or (code) its most used identifiers renamed. Distinct documents that share only a long
template are planted too: they must stay apart.
"""

from __future__ import annotations

import ast
import collections
import functools
import os
import random
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain.config import RecipeError, load_recipe
from pretrain.data.dedup import buckets, dedup, minhash
from pretrain.data.dedup.plan import load_plan
from pretrain.data.documents import ShardWriter
from pretrain.data.readers.base import Partition
from pretrain.data.samples.copies import rename_identifiers, truncate, word_edits
from pretrain.manifest import Manifest

TEMPLATE_A = ("Example Docs | Home | Guides | API | Blog | Search\nYou are reading the documentation for version 3.\n",
              "\nCopyright 2024 Example Corp. Built with Sphinx. Report a bug on the tracker.\n")
TEMPLATE_B = ("MirrorSite :: Python reference mirror :: fast downloads\nLast updated automatically.\n",
              "\n(c) mirror team. Cookies help us deliver our services. Privacy | Terms | Contact\n")
DISTINCT_SKIPPED: list[int] = []  # natural near copies set aside by distinct(), for the report
SHARED = ("Welcome to the Example community portal. Sign in to save your preferences, follow topics, "
          "and get notifications when pages change. Our newsletter arrives every Tuesday with new guides, "
          "release notes and events near you. Skip to main content. Toggle navigation. Language: English. ")


def originals(limit: int = 300, seed: int = 0) -> list[str]:
    """Distinct real documents of 600-6000 characters: reference sections, source files, docstrings."""
    return list(_originals(limit, seed))


@functools.lru_cache(maxsize=8)
def _originals(limit: int, seed: int) -> tuple[str, ...]:
    from pydoc_data.topics import topics

    docs: list[str] = []
    for name in sorted(topics):
        text = topics[name]
        for start in range(0, len(text), 3000):
            chunk = text[start:start + 3000]
            if len(chunk) > 600:
                docs.append(chunk)
    lib = os.path.dirname(os.__file__)
    files = sorted(f for f in os.listdir(lib) if f.endswith(".py"))
    code, docstrings = [], []
    for name in files:
        try:
            with open(os.path.join(lib, name), encoding="utf-8") as f:
                source = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if len(source) > 1500:
            code.append(source[:6000])
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            doc = ast.get_docstring(node) if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else None
            if doc and len(doc) > 600:
                docstrings.append(doc)
    rng = random.Random(seed)
    pool = docs + code[:200] + docstrings
    rng.shuffle(pool)
    return tuple(distinct(pool, limit))


def distinct(pool: list[str], limit: int, k: int = 3) -> list[str]:
    """The first ``limit`` texts of ``pool`` that are no near copy of an earlier one (exact word-3-gram
    sets: Jaccard < 0.2 and neither contains half of the other). The real sources have such natural
    near copies (reference sections that repeat each other, docstrings copied between modules); they
    are set aside here, and counted, so that every merge the tests see is labelled."""
    tokens, offsets = minhash.shingles(pa.array(pool), k)
    kept: list[int] = []
    sets: list[set] = []
    for i in range(len(pool)):
        mine = set(tokens[offsets[i]:offsets[i + 1]].tolist())
        if mine and all(len(mine & other) < max(0.2 * len(mine | other), 0.5 * min(len(mine), len(other)))
                        for other in sets):
            kept.append(i)
            sets.append(mine)
            if len(kept) == limit:
                break
    DISTINCT_SKIPPED.append(i + 1 - len(kept))
    return [pool[i] for i in kept]


def planted(n_originals: int = 240, seed: int = 0) -> dict:
    """{"docs": [(doc_id, text)], "groups": {doc_id: group}, "kinds": {copy_id: kind}, "boilerplate": [...]}.

    Each group is an original and its copies; documents outside any group are unique.
    """
    rng = random.Random(seed)
    base = originals(n_originals + 40, seed)
    shared_only, base = base[n_originals:], base[:n_originals]
    docs, groups, kinds = [], {}, {}
    for i, text in enumerate(base):
        is_code = "def " in text or "import " in text
        wrapped = TEMPLATE_A[0] + text + TEMPLATE_A[1]
        docs.append((f"orig-{i}", wrapped))
        kind = ["exact", "edit5", "edit10", "truncate", "template", "rename", None, None][i % 8]
        if kind == "rename" and not is_code:
            kind = "edit5"
        if kind is None:
            continue
        if kind == "exact":
            copy = wrapped
        elif kind == "edit5":
            copy = TEMPLATE_A[0] + word_edits(text, rng, 0.05) + TEMPLATE_A[1]
        elif kind == "edit10":
            copy = TEMPLATE_A[0] + word_edits(text, rng, 0.10) + TEMPLATE_A[1]
        elif kind == "truncate":
            copy = TEMPLATE_A[0] + truncate(text) + TEMPLATE_A[1]
        elif kind == "template":
            copy = TEMPLATE_B[0] + text + TEMPLATE_B[1]
        else:
            copy = TEMPLATE_A[0] + rename_identifiers(text, rng) + TEMPLATE_A[1]
        docs.append((f"copy-{i}", copy))
        groups[f"orig-{i}"] = groups[f"copy-{i}"] = i
        kinds[f"copy-{i}"] = kind
    boilerplate = []
    for j, text in enumerate(shared_only):  # distinct bodies, one long shared header and footer
        body = text[:800]
        docs.append((f"shared-{j}", SHARED * 2 + body + SHARED))
        boilerplate.append(f"shared-{j}")
    rng.shuffle(docs)
    return {"docs": docs, "groups": groups, "kinds": kinds, "boilerplate": boilerplate}


# --- running dedup on documents the tests make --------------------------------------------------------------

def filtered_manifest(root, source: str, key: str, docs: list[tuple[str, str]]) -> Manifest:
    """What the filter step outputs for one partition: a kept shard plus the partition and ingest stats."""
    part = Partition(source=source, url=f"mem://{source}", rel=key)
    url = os.path.join(root, "filtered", source, f"{part.shard_name}.parquet")
    with ShardWriter(url) as writer:
        writer.write_rows([{"id": doc_id, "text": text, "source": source, "source_id": doc_id,
                            "url": f"https://{source}.example/{doc_id}", "date": "", "license": "", "meta": "{}"}
                           for doc_id, text in docs])
        shard = writer.close()
    return Manifest(kind="filtered", root=str(root), fingerprint=f"{source}-{key}-{len(docs)}", shards=[shard],
                    stats={"documents_in": len(docs), "kept": len(docs), "dropped": 0, "dropped_by_reason": {}},
                    extra={"partition": part.to_dict(),
                           "ingest_stats": {"records": len(docs), "documents": len(docs), "skipped": {}}})


def spread(root, docs: list[tuple[str, str]], sources=("code", "web"), partitions: int = 3) -> list[Manifest]:
    """Deal the documents round-robin over sources x partitions (copies land anywhere)."""
    cells = [(s, f"p{i}") for s in sources for i in range(partitions)]
    dealt = collections.defaultdict(list)
    for n, doc in enumerate(docs):
        dealt[cells[n % len(cells)]].append(doc)
    return [filtered_manifest(root, s, k, dealt[(s, k)]) for s, k in cells]


def recipe_at(tmp_path, *overrides: str):
    return load_recipe("tiny", [f"run_root={tmp_path / 'run'}", *overrides])


def kept_ids(manifest: Manifest) -> list[str]:
    return [i for s in manifest.shards for i in pq.read_table(s.url, columns=["id"]).column("id").to_pylist()]


def removals(recipe) -> dict[str, tuple[str, str]]:
    """{removed doc id: (kind, id of the document kept for it)} from the cluster stage's files."""
    plan = load_plan(recipe)
    ids = [[i for s in m.shards for i in pq.read_table(s.url, columns=["id"]).column("id").to_pylist()]
           for m in plan.filtered]
    out = {}
    for p in plan.partitions:
        for r in pq.read_table(plan.removals_url(p)).to_pylist():
            out[ids[p][r["row"]]] = (r["kind"], ids[r["rep_part"]][r["rep_row"]])
    return out


# --- tests ----------------------------------------------------------------------------------------------------

def test_exact_copies_across_sources_and_partitions_keep_the_earliest(tmp_path):
    text = originals(1)[0]
    spaced = re.sub(" ", "  \n", text, count=5)  # the same text once whitespace is normalized
    other = originals(2)[1]
    filtered = [filtered_manifest(tmp_path, "web", "b", [("w1", text), ("w2", other)]),
                filtered_manifest(tmp_path, "code", "a", [("c1", "unrelated " * 40), ("c2", spaced)]),
                filtered_manifest(tmp_path, "web", "a", [("w0", text)])]
    recipe = recipe_at(tmp_path)
    result = dedup(recipe, filtered)
    assert sorted(kept_ids(result)) == ["c1", "c2", "w2"]  # code sorts before web: c2 is the first copy
    assert removals(recipe) == {"w0": ("exact", "c2"), "w1": ("exact", "c2")}
    assert result.stats["by_source"]["web"]["exact_duplicates"] == 2
    assert result.stats["by_source"]["code"]["duplicates"] == 0
    ledger = result.extra["ledger"]["sources"]["web"]
    assert ledger["duplicates"] == 2 and ledger["deduplicated"] == 1 and ledger["balanced"]
    assert [s.meta["source"] for s in result.shards] == ["code", "web", "web"]


@pytest.mark.parametrize("rule,kept", [("longest", "long"), ("earliest", "short")])
def test_representative_rule(tmp_path, rule, kept):
    text = originals(1)[0]
    filtered = [filtered_manifest(tmp_path, "a", "p", [("short", truncate(text))]),  # earlier in run order
                filtered_manifest(tmp_path, "b", "p", [("long", text)])]
    recipe = recipe_at(tmp_path, f"dedup.representative={rule}")
    assert kept_ids(dedup(recipe, filtered)) == [kept]
    removed = "short" if kept == "long" else "long"
    assert removals(recipe) == {removed: ("fuzzy", kept)}


def test_near_copies_found_with_high_recall_and_precision_on_real_text(tmp_path):
    corpus = planted()
    recipe = recipe_at(tmp_path)
    result = dedup(recipe, spread(tmp_path, corpus["docs"]))
    removed, groups = removals(recipe), corpus["groups"]
    resolved: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    for copy, kind in corpus["kinds"].items():
        original = copy.replace("copy", "orig")
        total[kind] += 1
        resolved[kind] += removed.get(copy, ("", ""))[1] == original or removed.get(original, ("", ""))[1] == copy
    right = sum(1 for doc, (_, keeper) in removed.items() if doc in groups and groups.get(keeper) == groups[doc])
    recall, precision = sum(resolved.values()) / sum(total.values()), right / max(1, len(removed))
    print(f"recall {recall:.3f} precision {precision:.3f} by kind "
          f"{ {k: f'{resolved[k]}/{total[k]}' for k in sorted(total)} }; natural near copies set aside: "
          f"{DISTINCT_SKIPPED}")
    assert set(total) == {"exact", "edit5", "edit10", "truncate", "template", "rename"} and min(total.values()) >= 8
    assert recall >= 0.95 and precision >= 0.95
    assert all(resolved[k] >= 0.9 * total[k] for k in total)
    # Distinct pages that share only a long template are all kept.
    assert not set(corpus["boilerplate"]) & set(removed)
    # The stats, the ledger and the cluster report agree with what was removed.
    stats = result.stats
    assert stats["duplicates"] == len(removed) == stats["documents_in"] - stats["documents_out"]
    assert stats["exact_duplicates"] == sum(k == "exact" for k, _ in removed.values()) >= 30
    assert sum(s["duplicates"] for s in stats["by_source"].values()) == len(removed)
    assert set(stats["by_source"]) == {"code", "web"}
    assert all(s["fuzzy_duplicates"] for s in stats["by_source"].values())
    assert sum(result.extra["clusters"]["size_histogram"].values()) == stats["clusters"]["clusters"]
    sample = result.extra["clusters"]["samples"][0]
    assert sample["members"][0]["role"] == "kept" and {m["role"] for m in sample["members"][1:]} <= {"exact", "fuzzy"}
    assert all(m["id"] and m["url"].startswith("https://") and 0 < len(m["text"]) <= 200 for m in sample["members"])
    assert result.extra["ledger"]["total"]["balanced"]


def test_rerun_reuses_every_stage(tmp_path):
    corpus = planted(40)
    filtered = spread(tmp_path, corpus["docs"], partitions=2)
    recipe = recipe_at(tmp_path)
    first = dedup(recipe, filtered)
    plan = load_plan(recipe)
    stamps = {u: os.stat(u).st_mtime_ns for u in (plan.signatures_url(0), plan.pairs_url(3), plan.removals_url(1),
                                                   plan.exact_dups_url(2), plan.output_url(0))}
    again = dedup(recipe, filtered)
    assert again.to_json() == first.to_json()
    assert {u: os.stat(u).st_mtime_ns for u in stamps} == stamps
    os.remove(os.path.join(plan.root, "_MANIFEST.json"))  # a crash before the end: finished stages are reused
    assert dedup(recipe, filtered).to_json() == first.to_json()
    assert {u: os.stat(u).st_mtime_ns for u in stamps} == stamps
    other = dedup(recipe_at(tmp_path, "dedup.threshold=0.9"), filtered)  # another config: recomputed
    assert other.fingerprint != first.fingerprint and other.stats["duplicates"] < first.stats["duplicates"]


def test_exact_keys_are_split_across_prefix_shards(tmp_path):
    docs = [(f"d{i}", f"document number {i} " * 20) for i in range(300)]
    recipe = recipe_at(tmp_path, "dedup.prefix_shards=4", "dedup.fuzzy=false")
    dedup(recipe, spread(tmp_path, docs + docs[:10], sources=("s",), partitions=2))
    plan = load_plan(recipe)
    files = {p: pq.ParquetFile(plan.exact_url(p)) for p in plan.partitions}
    assert all(f.num_row_groups == 4 for f in files.values())  # one row group per prefix shard
    per_file = {(k, p): files[p].read_row_group(k) for k in range(4) for p in plan.partitions}
    assert sum(t.num_rows for t in per_file.values()) == 310
    assert all(t.num_rows > 20 for t in per_file.values())  # every prefix of every partition holds a share
    keys = {k: {(h1, h2) for t in (per_file[(k, p)] for p in plan.partitions)
                for h1, h2 in zip(t["h1"].to_pylist(), t["h2"].to_pylist(), strict=True)} for k in range(4)}
    assert not any(keys[a] & keys[b] for a in range(4) for b in range(a + 1, 4))  # a key lives in one prefix only
    dups = [pq.read_table(plan.exact_dups_url(k)).num_rows for k in range(4)]
    assert sum(dups) == 10 and not os.path.exists(plan.signatures_url(0))


def test_band_shards_split_each_bands_keys_and_find_the_same_pairs(tmp_path):
    corpus = planted(60)
    filtered = spread(tmp_path, corpus["docs"], partitions=2)
    whole = recipe_at(tmp_path / "whole", "dedup.exact=false")
    split = recipe_at(tmp_path / "split", "dedup.exact=false", "dedup.band_shards=3")
    first, second = dedup(whole, filtered), dedup(split, filtered)
    assert kept_ids(second) == kept_ids(first) and removals(split) == removals(whole)
    plan = load_plan(split)
    assert plan.bucket_units()[:4] == ["band:0:0", "band:0:1", "band:0:2", "band:1:0"]
    keys = [buckets.run_unit(plan, f"band:5:{s}")["band_keys"] for s in range(3)]  # reused: the markers' stats
    whole_keys = buckets.run_unit(load_plan(whole), "band:5:0")["band_keys"]
    assert sum(keys) == whole_keys and max(keys) < 0.5 * whole_keys  # each unit holds its key range only
    pairs = [pq.read_table(plan.pairs_url(5, s)).num_rows for s in range(3)]
    assert sum(pairs) == pq.read_table(load_plan(whole).pairs_url(5)).num_rows


def test_sketch_writes_two_files_per_partition_whatever_the_bands_and_prefixes(tmp_path):
    """Small files made the sketch stage slow: band keys are columns of the signatures file, prefixes row groups."""
    corpus = planted(24)
    recipe = recipe_at(tmp_path, "dedup.prefix_shards=8", "dedup.bands=16", "dedup.rows=4", "dedup.num_perm=64")
    dedup(recipe, spread(tmp_path, corpus["docs"], sources=("s",), partitions=2))
    plan = load_plan(recipe)
    written = sorted(os.path.relpath(os.path.join(d, f), plan.root) for d, _, fs in os.walk(plan.url("exact", "keys"))
                     for f in fs) + sorted(os.listdir(plan.url("signatures")))
    assert written == ["exact/keys/p-00000.parquet", "exact/keys/p-00001.parquet", "p-00000.parquet",
                       "p-00001.parquet"]
    table = pq.read_table(plan.signatures_url(0))
    assert table.column_names == ["row", "length", "sig"] + [f"band_{b:03d}" for b in range(16)]
    sig = np.stack(table["sig"].to_numpy(zero_copy_only=False))
    assert np.array_equal(np.stack([table[f"band_{b:03d}"].to_numpy() for b in range(16)], axis=1),
                          minhash.band_keys(sig.astype(np.uint32), 16, 4))


def test_word_hashes_are_vectorized_and_agree_across_arrays():
    words = sorted({w for t in originals(40) for w in re.findall(r"\S+", t.lower())} | {"", "é", "日本", "x" * 300})
    hashes = minhash.word_hashes(pa.array(words))
    assert len(set(hashes.tolist())) == len(words)  # no collision among thousands of real words
    again = minhash.word_hashes(pa.array(["pad", *words[::-1]]).slice(1))  # another array, an offset slice
    assert again.tolist() == hashes[::-1].tolist()
    assert minhash.word_hashes(pa.array([], pa.string())).tolist() == []


def test_exact_normalization_collapses_unicode_whitespace():
    from pretrain.data.dedup import exact

    got = exact.normalize(pa.array(["  a \u00a0 b\u3000c\u2028d\t\n e  ", "", None, "x"])).to_pylist()
    assert got == ["a b c d e", "", "", "x"]
    keys = exact.keys(pa.array(["a  b", "a b", " a\u00a0b\n", "a c"]))
    assert len({tuple(k) for k in keys[:3].tolist()}) == 1 and tuple(keys[3]) != tuple(keys[0])
    assert exact.text_key("a\tb") == exact.text_key("a b") != exact.text_key("ab")


def test_cluster_stage_loads_only_the_documents_in_candidate_pairs(tmp_path):
    corpus = planted(80)
    unique = [(f"u{i}", f"{i} " + text) for i, text in enumerate(originals(400, seed=1)[80:])]
    recipe = recipe_at(tmp_path)
    result = dedup(recipe, spread(tmp_path, corpus["docs"] + unique))
    stats = Manifest.load(load_plan(recipe).marker_url("cluster")).stats
    n_docs = result.stats["documents_in"]
    assert stats["signatures_loaded"] == stats["pair_documents"] <= 2 * stats["distinct_pairs"]
    assert stats["signatures_loaded"] < 0.5 * n_docs  # what it holds grows with the pairs, not the corpus


def test_empty_shards_empty_documents_giant_lines_and_other_scripts(tmp_path):
    cjk = "自然言語処理は人間の言語をコンピュータで扱う技術である。" * 6
    arabic = " ".join(["معالجة اللغات الطبيعية فرع من علوم الحاسوب والذكاء الاصطناعي"] * 8)
    giant = "x" * 200_000 + " end"
    docs = [("e1", ""), ("e2", "   "), ("g", giant), ("cjk", cjk), ("cjk2", cjk.replace("技術", "方法", 1) + "以上。"),
            ("ar", arabic), ("ar2", arabic + " شكرا"), ("p", "!!! ??? ---")]
    filtered = [filtered_manifest(tmp_path, "a", "empty", []), filtered_manifest(tmp_path, "b", "x", docs),
                filtered_manifest(tmp_path, "c", "empty", [])]
    recipe = recipe_at(tmp_path)
    result = dedup(recipe, filtered)
    assert [s.rows for s in result.shards] == [0, 5, 0]
    assert removals(recipe) == {"e2": ("exact", "e1"), "cjk": ("fuzzy", "cjk2"), "ar": ("fuzzy", "ar2")}
    assert result.extra["ledger"]["total"]["balanced"]


def test_words_split_cjk_per_character_and_strip_punctuation():
    lists = minhash.words(pa.array(["Hello, World!", "自然言語 ok", "", None])).to_pylist()
    got = [[w for w in ws if w] for ws in lists]  # '' at the ends of a split are dropped with punctuation
    assert got[0] == ["hello,", "world!"] and got[1] == ["自", "然", "言", "語", "ok"] and got[2:] == [[], []]
    tokens, offsets = minhash.shingles(pa.array(["Hello, world!", "hello world", "= = =", "a b c d"]), 3)
    assert offsets.tolist() == [0, 1, 2, 2, 4]  # short texts are one shingle; punctuation-only words dropped
    assert tokens[0] == tokens[1]


def test_components_join_chains_and_stars():
    from pretrain.data.dedup.clusters import components

    label = components(7, np.array([0, 1, 2, 5]), np.array([1, 2, 3, 6]))
    assert label.tolist() == [0, 0, 0, 0, 4, 5, 5]


@pytest.mark.parametrize("override,key", [("dedup.bands=100", "dedup"), ("dedup.representative=newest",
                                          "dedup.representative"), ("dedup.threshold=1.5", "dedup.threshold"),
                                          ("dedup.bogus=1", "dedup.bogus")])
def test_bad_dedup_settings_name_the_key(tmp_path, override, key):
    with pytest.raises(RecipeError, match=re.escape(key)):
        recipe_at(tmp_path, override)


def test_signatures_are_fast_enough_to_measure():
    """Not a timing assertion: prints docs/s on real source files (the report quotes it)."""
    texts = pa.array(originals(300))
    start = time.perf_counter()
    sig, has = minhash.signatures(texts, 3, 256, 1)
    elapsed = time.perf_counter() - start
    print(f"signatures: {len(texts) / elapsed:.0f} docs/s")
    assert sig.shape == (300, 256) and has.all()


@pytest.mark.parametrize("exact,fuzzy,removed", [(True, False, {"b": "exact"}), (False, True, {"b": "fuzzy",
                                                 "c": "fuzzy"}), (False, False, {})])
def test_exact_and_fuzzy_can_be_switched_off(tmp_path, exact, fuzzy, removed):
    text = originals(1)[0]
    filtered = [filtered_manifest(tmp_path, "s", "p", [("a", text), ("b", text), ("c", truncate(text))])]
    recipe = recipe_at(tmp_path, f"dedup.exact={str(exact).lower()}", f"dedup.fuzzy={str(fuzzy).lower()}")
    result = dedup(recipe, filtered)
    assert {k: v[0] for k, v in removals(recipe).items()} == removed
    assert result.stats["documents_out"] == 3 - len(removed)
