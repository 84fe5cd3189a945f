"""The filter rules on hand-made examples, the profiles and the recipe's overrides, and the filter step."""

from __future__ import annotations

import json
import pydoc
import random
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain.config import C4Settings, FilterConfig, RecipeError, SourceConfig, validate
from pretrain.data import documents
from pretrain.data.filters import base, c4, code, fineweb, gopher, profiles
from pretrain.data.filters.base import Doc
from pretrain.data.filters.step import Stats, chain_for, filter_batch

PROSE = ("The quick brown fox jumps over the lazy dog, and that is the whole story of the day. "
         "It was a bright and cold day in April, and the clocks were striking thirteen. ")


SENTENCES = [
    "The river runs past the old mill before it turns toward the sea.",
    "Children from the village learned to swim in its cold, clear water.",
    "Every spring the farmers repaired the stone walls that the frost had broken.",
    "A small bakery on the square sold bread that was still warm at dawn.",
    "Travelers often stopped there to ask for directions to the mountain pass.",
    "The school had only two rooms, yet it taught reading, history and arithmetic.",
    "In winter the road was closed, and letters arrived once a week by sledge.",
    "Old maps show a bridge where today there is only a ferry and a rope.",
    "The church bell was cast in a foundry far away and carried up by oxen.",
    "Most houses have thick walls and small windows that keep out the wind.",
    "A festival with music and dancing is held when the harvest is done.",
    "Visitors say that the view from the hill is worth the long climb.",
]


def prose(sentences: int = 12) -> str:
    return "\n".join(SENTENCES[:sentences])


def judge(rules, text: str, **kw) -> dict[str, object]:
    doc = Doc(text, **kw)
    return {r.name: v for r in rules if (v := r.judge(doc)) is not None}


def test_gopher_quality_rules_trip_with_their_value():
    cfg = FilterConfig().profiles.web.gopher_quality
    rules = gopher.quality_rules(cfg)
    assert judge(rules, prose()) == {}
    assert judge(rules, "the cat and the dog " * 5)["gopher_quality.min_doc_words"] == 25
    assert judge(rules, prose() + "\n" + "and so on... " * 40)["gopher_quality.max_symbol_word_ratio"] > 0.1
    hashes = prose() + "\n" + "# " * 100  # a line of symbols is code-like: only the published variant counts it
    assert "gopher_quality.max_symbol_word_ratio" not in judge(rules, hashes)
    published = gopher.quality_rules(cfg.model_copy(update={"variant": "published"}))
    assert judge(published, hashes)["gopher_quality.max_symbol_word_ratio"] > 0.1
    assert "gopher_quality.max_bullet_lines_ratio" in judge(rules, "\n".join(f"- the item {i} of the list to buy "
                                                                          "and the rest" for i in range(20)))
    long_words = " ".join(["internationalization"] * 60) + " the and of"
    assert judge(rules, long_words)["gopher_quality.max_avg_word_length"] > 10
    no_stop = " ".join(f"word{i} alpha beta gamma" for i in range(30))
    assert judge(rules, no_stop)["gopher_quality.min_stop_words"] == 0


def test_gopher_repetition_rules():
    rules = gopher.repetition_rules(FilterConfig().profiles.web.gopher_repetition)
    assert judge(rules, prose()) == {}
    spam = "\n\n".join(["Buy cheap watches online today. " * 8] * 30)
    found = judge(rules, spam)
    assert found["gopher_repetition.max_dup_para_frac"] == pytest.approx(28 / 30)  # the last one has no trailing space
    assert found["gopher_repetition.max_top_ngram_char_frac.2"] > 0.2
    assert found["gopher_repetition.max_dup_ngram_char_frac.5"] > 0.75  # word characters, not the spaces


def test_repeated_ngrams_are_counted_in_characters():
    doc = Doc("alpha beta gamma delta epsilon zeta " * 4)
    # every 5-gram after the first occurrence of the 6-word cycle repeats: words 6..23 are covered
    assert gopher._dup_ngram_chars(gopher._Words.of(doc, False), 5) == sum(len(w) for w in doc.words[6:])
    assert gopher._top_ngram_chars(gopher._Words.of(doc, False), 2, published=False) == len("alpha beta") * 4


def test_c4_rules_and_line_removal():
    cfg = FilterConfig().profiles.web.c4
    steps = c4.rules(cfg)
    rules = [s for s in steps if hasattr(s, "judge")]
    remove = next(s for s in steps if s.name == "c4.remove_lines")
    assert judge(rules, prose()) == {}
    assert judge(rules, prose() + "\nLorem ipsum dolor sit amet.")["c4.lorem_ipsum"] == "lorem ipsum"
    assert judge(rules, "A title\nOne sentence here is fine.\nTwo more words.")["c4.min_sentences"] == 2
    text = prose() + "\nThis site uses cookies to improve your experience.\nPlease enable JavaScript to view it."
    new, counts = remove.apply(Doc(text))
    assert new == prose() and counts == {"lines": 2}
    minified = "function(a){return a+1};var b={c:[1,2,3]};if(x){y()}else{z()};" * 40
    assert judge(rules, minified + "\n" + prose(3))["c4.max_code_fraction"] > 0.9


def test_c4_published_variant_drops_curly_brackets_and_removes_unpunctuated_lines():
    cfg = validate({"name": "x", "sources": [{"name": "a", "format": "warc", "uri": "x"}],
                    "filter": {"profiles": {"web": {"c4": {"variant": "published"}}}}}).filter.profiles.web.c4
    assert cfg.min_sentences == 5  # the published variant brings C4's own minimum unless the recipe sets one
    steps = c4.rules(cfg)
    rules = [s for s in steps if hasattr(s, "judge")]
    assert judge(rules, prose() + "\nUse a dict such as {'a': 1} in the call.")["c4.curly_bracket"].startswith("Use")
    new, _ = next(s for s in steps if s.name == "c4.remove_lines").apply(Doc("Menu\nHome\n" + prose(6)))
    assert new == prose(6)


def test_fineweb_rules():
    rules = fineweb.rules(FilterConfig().profiles.web.fineweb)
    assert judge(rules, prose()) == {}
    menu = "\n".join(f"Item {i}" for i in range(40)) + "\n" + prose(2)
    found = judge(rules, menu)
    assert found["fineweb.min_line_punct_ratio"] < 0.12 and found["fineweb.max_short_line_ratio"] > 0.67
    dup = prose(12) + "\nShared sentence number one that repeats here.\n" * 2
    published = FilterConfig().profiles.web.fineweb.model_copy(update={"variant": "published"})
    assert judge(fineweb.rules(published), dup)["fineweb.max_char_dup_ratio"] > 0.01


def test_default_rules_read_tables_and_hard_wrapped_text_as_real_content():
    """Three pages real documentation is made of, which the published rules drop and the defaults keep."""
    import textwrap

    intro = ("This module makes available the standard error symbols of the system. The value of each symbol is "
             "the corresponding integer value, so that a program can compare the codes it gets back from the "
             "operating system with the names a person would rather read and write.")
    names = ("perm noent srch intr io nxio tooBig noexec badf child again nomem acces fault notblk busy exist xdev "
             "nodev notdir isdir inval nfile mfile notty txtbsy fbig nospc spipe rofs mlink pipe dom range")
    constants = "\n".join(f"E{name.upper()} = {i}" for i, name in enumerate(names.split(), 1))
    table_page = f"Error symbols\n\n{intro}\n\nData\n{constants}\n"
    doc = Doc(table_page)
    assert doc.data_lines[doc.lines.index("EPERM = 1")] and not doc.data_lines[doc.lines.index("Data")]
    assert not doc.data_lines[2] and not doc.data_lines[0]  # the prose and the title are prose
    assert not Doc("See RFC 3454, section 2.1, for the 12 tables.").data_lines.any()
    api = Doc("gettext(self, message)\nbuiltins.object\nSimpleNamespace\nif_stmt ::= \"if\" expr \":\" suite\n"
              "Call self as a function.\nHome\nContact us (24 hours)")
    assert api.api_lines.tolist() == [True, True, True, True, False, False, False]
    default = gopher.quality_rules(FilterConfig().profiles.web.gopher_quality)
    published = gopher.quality_rules(FilterConfig().profiles.web.gopher_quality.model_copy(
        update={"variant": "published"}))
    assert "gopher_quality.min_alpha_words_ratio" not in judge(default, table_page)
    assert judge(published, table_page)["gopher_quality.min_alpha_words_ratio"] < 0.8
    numbers_only = "\n".join(f"{i} {i * 7} {i * 13}" for i in range(80))  # no prose at all: still judged
    assert judge(default, numbers_only)["gopher_quality.min_alpha_words_ratio"] == 0.0

    long_sentence = "; then ".join(s.rstrip(".") for s in SENTENCES) + "."
    wrapped = "\n\n".join(textwrap.fill(long_sentence, width=72) for _ in range(2))  # lines end mid-sentence
    assert len(Doc(wrapped).prose_units) < len(Doc(wrapped).prose_lines) / 4
    fine_default = fineweb.rules(FilterConfig().profiles.web.fineweb)
    fine_published = fineweb.rules(FilterConfig().profiles.web.fineweb.model_copy(update={"variant": "published"}))
    assert judge(fine_default, wrapped) == {}
    assert judge(fine_published, wrapped)["fineweb.min_line_punct_ratio"] < 0.12
    menu = "\n".join(f"Category {i}" for i in range(40))  # short lines are never joined: still a menu
    assert judge(fine_default, menu + "\n" + prose(2))["fineweb.max_short_line_ratio"] > 0.67

    definition = ("The pass statement\n\nThe pass statement is a null operation: when it is executed, nothing "
                  "happens at all. It is useful as a placeholder when a statement is required by the syntax but no "
                  "code needs to be executed, for example in a class or function body that is not written yet.\n\n"
                  "    pass_stmt ::= \"pass\"\n    def f(arg): pass    # a function that does nothing yet\n")
    c4_default = [s for s in c4.rules(FilterConfig().profiles.web.c4) if hasattr(s, "judge")]
    c4_published = [s for s in c4.rules(C4Settings.model_validate({"variant": "published"})) if hasattr(s, "judge")]
    assert "c4.min_sentences" not in judge(c4_default, definition)  # 2 sentences + a code block: 3 units
    assert judge(c4_published, definition)["c4.min_sentences"] < 5


def test_code_rules():
    rules = code.rules(FilterConfig().profiles.code.code)
    good = "".join(f"def add_{i}(a, b):\n    '''Add {i} and two numbers.'''\n    return a + b + {i}\n\n"
                   for i in range(5))
    assert judge(rules, good) == {}
    assert judge(rules, "x = '" + "a" * 1500 + "'\n")["code.max_line_length"] == 1506
    marked = "# Code generated by protoc. DO NOT EDIT.\n" + good
    assert judge(rules, marked)["code.autogenerated"] == "# Code generated by"
    assert judge(rules, "=+-*/ " * 100)["code.min_alnum_fraction"] < 0.25
    data = json.dumps({f"k{i}": list(range(50)) for i in range(400)})
    assert judge(rules, data, meta={"language": "json"})["code.data_max_chars"] > 50_000
    lic = code.license_rules(FilterConfig.model_validate(
        {"profiles": {"code": {"licenses": {"allowed": ["MIT"]}}}}).profiles.code.licenses)
    assert judge(lic, good, license="GPL-3.0") == {"licenses.allowed": "GPL-3.0"}
    assert judge(lic, good, license="MIT") == {}


def test_profile_by_format_and_by_choice():
    assert [SourceConfig(name="s", format=f, uri="x").profile for f in ("warc", "wet", "code", "wikipedia", "jsonl",
                                                                        "parquet", "hf")] == [
        "web", "web", "code", "prose", "prose", "prose", "prose"]
    assert SourceConfig(name="s", format="jsonl", uri="x", filter_profile="code").profile == "code"
    cfg = FilterConfig()
    names = {s.name for s in profiles.build(cfg, "prose")}
    assert "gopher_quality.min_doc_words" in names and not any(n.startswith(("c4.", "fineweb.")) for n in names)
    assert any(n.startswith("c4.") for n in (s.name for s in profiles.build(cfg, "web")))
    assert not any(n.startswith("gopher") for n in (s.name for s in profiles.build(cfg, "code")))


def test_recipe_overrides_rule_by_rule_and_names_unknown_keys():
    base = {"name": "x", "sources": [{"name": "a", "format": "warc", "uri": "x"}]}
    recipe = validate({**base, "filter": {"profiles": {"web": {"c4": {"enabled": False},
                                                               "gopher_quality": {"min_doc_words": 30}},
                                                       "prose": {"c4": {"min_sentences": 4}}}}})
    web = recipe.filter.profiles.web
    assert not web.c4.enabled and web.gopher_quality.min_doc_words == 30 and web.gopher_quality.min_stop_words == 2
    assert recipe.filter.profiles.prose.c4.min_sentences == 4 and not recipe.filter.profiles.prose.c4.enabled
    assert not any(s.name.startswith("c4.") for s in profiles.build(recipe.filter, "web"))
    for bad, key in [({"webb": {}}, "filter.profiles.webb"), ({"web": {"c5": {}}}, "filter.profiles.web.c5"),
                     ({"web": {"c4": {"min_sentencs": 1}}}, "filter.profiles.web.c4.min_sentencs"),
                     ({"web": {"gopher_quality": {"min_alpha_words_ratio": 2}}},
                      "filter.profiles.web.gopher_quality.min_alpha_words_ratio")]:
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            validate({**base, "filter": {"profiles": bad}})
    with pytest.raises(RecipeError, match=r"sources\[0\]\.filter_profile"):
        validate({**base, "sources": [{"name": "a", "format": "warc", "uri": "x", "filter_profile": "news"}]})


def pydoc_page() -> str:
    import re

    html = pydoc.HTMLDoc().page("json", pydoc.HTMLDoc().docmodule(__import__("json")))
    from resiliparse.extract.html2text import extract_plain_text

    return re.sub(r"\n{3,}", "\n\n", extract_plain_text(html, main_content=False))


def test_technical_pages_are_kept_by_default_and_dropped_by_the_published_variant():
    page = pydoc_page()
    web = chain_for(FilterConfig(), "web")
    assert web.judge(Doc(page, url="https://docs.python.org/3/library/json.html")).reason is None
    published = FilterConfig.model_validate({"profiles": {"web": {
        r: {"variant": "published"} for r in ("gopher_quality", "gopher_repetition", "c4", "fineweb")}}})
    assert chain_for(published, "web").judge(Doc(page)).reason is not None
    source = Path(sysconfig.get_paths()["stdlib"], "json", "decoder.py").read_text()
    assert chain_for(FilterConfig(), "code").judge(Doc(source, meta={"language": "python"})).reason is None


def test_cjk_arabic_empty_and_giant_line_documents():
    chain = chain_for(FilterConfig(), "prose")
    chinese = "。".join(["今天天气很好我们一起去公园散步然后吃午饭"] * 30) + "。"
    arabic = " ".join(["هذا نص عربي طويل يتحدث عن تاريخ المدينة القديمة وأسواقها."] * 30)
    for text in (chinese, arabic):
        verdict = chain.judge(Doc(text))
        assert not (verdict.reason or "").startswith(("min_words", "gopher_quality.min_doc_words",
                                                      "gopher_quality.min_avg", "gopher_quality.max_avg",
                                                      "gopher_quality.min_stop")), verdict
    web = chain_for(FilterConfig(), "web")
    assert web.judge(Doc("")).reason == "min_chars"
    giant = ("word " * 200_000).strip()
    verdict = web.judge(Doc(giant))
    assert verdict.reason is not None and web.stats.rule_errors == {}


def batch_of(texts: list[str], urls: list[str] | None = None) -> pa.RecordBatch:
    n = len(texts)
    rows = {"id": [str(i) for i in range(n)], "text": texts, "source": ["s"] * n, "source_id": [""] * n,
            "url": urls or [""] * n, "date": [""] * n, "license": [""] * n, "meta": ["{}"] * n}
    return pa.RecordBatch.from_pydict(rows, schema=documents.SCHEMA)


def test_filter_batch_writes_reason_and_value_and_stats_add_up():
    stats = Stats()
    chain = chain_for(FilterConfig(), "web", stats)
    texts = [prose(12), "short", "\n\n".join(["Buy cheap watches online today. " * 8] * 30),
             prose(12) + "\nWrite to jane.doe@example.com for details."]
    kept, dropped = filter_batch(batch_of(texts), chain)
    assert stats.documents_in == 4 and stats.kept + stats.dropped == 4 == kept.num_rows + dropped.num_rows
    assert dropped.column("reason").to_pylist() == ["min_chars", "gopher_repetition.max_dup_para_frac"]
    assert dropped.column("value").to_pylist()[0] == "5"
    assert stats.bytes_dropped_by_reason == {"min_chars": 5, "gopher_repetition.max_dup_para_frac":
                                             len(texts[2].encode())}
    assert stats.pii_redacted == {"email": 1} and stats.transformed["pii"] == 1
    assert "<EMAIL>" in kept.column("text")[1].as_py() and "jane.doe" not in kept.column("text")[1].as_py()
    assert json.loads(kept.column("meta")[0].as_py())["lang"] == "en"
    table = pa.Table.from_batches([batch_of(["x"])]).append_column("reason", pa.array(["r"])).append_column(
        "value", pa.array(["1"]))
    assert table.schema.names == documents.DROPPED_SCHEMA.names


def test_blocked_domains_and_language_keep_list(tmp_path):
    listed = tmp_path / "optout.txt"
    listed.write_text("# opted out\nblocked.example\n")
    cfg = FilterConfig.model_validate({"profiles": {"web": {
        "urls": {"blocked_domains": ["spam.example"], "blocked_domains_file": str(listed)},
        "language": {"languages": ["fr"]}}}})
    chain = chain_for(cfg, "web")
    assert chain.judge(Doc(prose(), url="https://a.spam.example/x")).value == "a.spam.example"
    assert chain.judge(Doc(prose(), url="https://blocked.example/")).reason == "urls.blocked_domains"
    verdict = chain.judge(Doc(prose(), url="https://ok.example/"))
    assert (verdict.reason, verdict.value) == ("language.languages", "en")


def test_filter_shard_writes_dropped_shard_and_per_rule_bytes(tmp_path):
    from pretrain.config import load_recipe
    from pretrain.data.filters import filter_shard
    from pretrain.manifest import Manifest, Shard

    recipe = load_recipe("tiny", [f"run_root={tmp_path}"])
    url = str(tmp_path / "docs.parquet")
    texts = [prose(12), "tiny", PROSE * 5]
    pq.write_table(pa.Table.from_batches([batch_of(texts)]), url)
    part = {"source": "pydoc-web", "url": url, "rel": "a.warc.gz", "unit": "file", "start": 0, "end": -1, "limit": 0}
    docs = Manifest(kind="documents", root=str(tmp_path), fingerprint="f", shards=[Shard(url=url, rows=3, bytes=1)],
                    stats={"documents": 3}, extra={"partition": part})
    out = filter_shard(recipe, docs)
    assert out.stats["kept"] + out.stats["dropped"] == out.stats["documents_in"] == 3
    assert sum(out.stats["bytes_dropped_by_reason"].values()) == sum(
        len(t.encode()) for t, k in zip(texts, [True, False, False], strict=True) if not k) or out.stats["dropped"] > 0
    dropped = pq.read_table(out.extra["dropped"][0]["url"]).to_pylist()
    assert dropped[0]["reason"] == "min_chars" and dropped[0]["value"] == "4"
    assert out.extra["partition"] == part and out.extra["ingest_stats"] == {"documents": 3}
    assert out.extra["profile"] == "web"


# -- the published variant as datatrove 0.10 has it ------------------------------------------------------------
SPACY_SAMPLE = ("He said: 'It is.' Foo.Bar x.y U.S. AB. A. re-use 3-tuple 1,000 a,b key=value http://x.org/a/b?c=1). "
                "e.g., (i.e. this) foo): can't won't it's John's you're, cannot id... well-known os.path.join(a, b) "
                "[x] 5+ +3")
# what spaCy 3's blank English tokenizer yields for SPACY_SAMPLE (the words datatrove's Gopher rules count)
SPACY_WORDS = ["He", "said", ":", "'", "It", "is", ".", "'", "Foo", ".", "Bar", "x.y", "U.S.", "AB", ".", "A.", "re",
               "-", "use", "3", "-", "tuple", "1,000", "a", ",", "b", "key", "=", "value", "http://x.org/a/b?c=1",
               ")", ".", "e.g.", ",", "(", "i.e.", "this", ")", "foo", "):", "ca", "n't", "wo", "n't", "it", "'s",
               "John", "'s", "you", "'re", ",", "can", "not", "i", "d", "...", "well", "-", "known", "os.path.join(a",
               ",", "b", ")", "[", "x", "]", "5", "+", "+3"]


def test_published_words_follow_spacys_english_tokenizer():
    assert base.spacy_words(SPACY_SAMPLE) == SPACY_WORDS
    assert base.spacy_words("") == [] and base.spacy_words("  \n\t ") == []
    doc = Doc("The cat (2024) sat ... on __init__ -- ok")
    words, non_symbol, chars, alpha = doc.spacy_counts
    assert doc.spacy_words == ["The", "cat", "(", "2024", ")", "sat", "...", "on", "_", "_", "init", "_", "_", "--",
                               "ok"]  # spaCy's output: "_" is an affix, split one at a time
    assert (words, non_symbol, alpha) == (15, 7, 6)  # "(", ")", "...", four "_", "--" are punctuation only
    assert chars == len("The" "cat" "2024" "sat" "on" "init" "ok")
    chinese = Doc("今天天气很好我们一起去公园散步")  # scripts without spaces keep one word per character
    assert len(chinese.spacy_words) == 15


def test_published_words_per_chunk_match_one_pass_over_the_text():
    """spacy_words cuts at whitespace and memoizes chunks: the same tokens as the expression over the whole text."""
    rng = random.Random(3)
    alphabet = [*"ab1_ .,;:!?'’\"()[]{}-–—…/\\<>=+*^$%#@&\n\t\u3000\x85\xa0é漢", ":)", "n't", "'s", "e.g.", "http://"]
    texts = [SPACY_SAMPLE, pydoc.render_doc(json, renderer=pydoc.plaintext)]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    base.clear_token_memo()
    for _ in range(2):  # cold, then every chunk from the memo
        for text in texts:
            whole = base.SPACY_TOKEN_RE.findall(text)
            if not base._SPLIT_KEYS.isdisjoint(whole):
                continue  # contraction splits run after tokenizing, the same on both paths
            assert base.spacy_words(text) == whole, repr(text)


def datatrove_dup_ngram_chars(words: list[str], n: int) -> int:
    """datatrove 0.10's find_all_duplicate, verbatim in substance: the reference for the published variant."""
    unique, repeated, idx = set(), 0, 0
    while idx < len(words) - n + 1:
        gram = "".join(words[idx:idx + n])
        if gram in unique:
            repeated += len(gram)
            idx += n
        else:
            unique.add(gram)
            idx += 1
    return repeated


def test_published_duplicate_ngrams_match_datatrove_and_never_exceed_the_covered_characters():
    rng = random.Random(7)
    vocab = ["alpha", "be", "cee", "delta", "e", "foxtrot"]
    for trial in range(60):
        words = [rng.choice(vocab[: 2 + trial % 5]) for _ in range(rng.randint(5, 120))]
        doc = Doc(" ".join(words))
        w = gopher._Words.of(doc, True)
        for n in (5, 7, 10):
            want = datatrove_dup_ngram_chars(words, n)
            assert want <= gopher._dup_ngram_chars(w, n)  # the bound that lets most documents skip the walk
            got = gopher._dup_ngram_greedy(w, n, -1.0, len(doc.text))  # limit below 0: always walk
            assert (got or 0.0) * len(doc.text) == pytest.approx(want), (words, n)


def test_published_line_ratios_count_splitlines_lines():
    rules = gopher.quality_rules(FilterConfig().profiles.web.gopher_quality.model_copy(update={"variant": "published"}))
    bullets = {r.name: r for r in rules}["gopher_quality.max_bullet_lines_ratio"]
    ellipsis = {r.name: r for r in rules}["gopher_quality.max_ellipsis_lines_ratio"]
    for text in ("- a\n- b\n", "- a\r\n- b\rc", "x\n\n  • y\n- z", "a...\nb …  \nc", "- a\u2028- b\u2029c"):
        lines = text.splitlines()
        share = sum(ln.lstrip().startswith(("•", "-")) for ln in lines) / len(lines)
        assert (bullets.judge(Doc(text)) is not None) == (share > 0.9), text
        share = sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines)
        assert (ellipsis.judge(Doc(text)) is not None) == (share > 0.3), text


def test_published_quality_counts_spacy_words_and_keeps_cjk():
    cfg = FilterConfig().profiles.web.gopher_quality.model_copy(update={"variant": "published"})
    rules = gopher.quality_rules(cfg)
    # 60 words of which 40% are punctuation-only: datatrove's alphabetic-word ratio is 0.6 (< 0.8)
    text = " ".join(["the cat sat ( on ) mat -- and"] * 8)
    assert judge(rules, text)["gopher_quality.min_alpha_words_ratio"] == pytest.approx(48 / 72)
    chinese = "。".join(["今天天气很好我们一起去公园散步然后吃午饭"] * 30) + "。"
    found = judge(rules, chinese)
    assert not any(k.startswith(("gopher_quality.min_doc", "gopher_quality.min_avg", "gopher_quality.min_stop"))
                   for k in found), found
