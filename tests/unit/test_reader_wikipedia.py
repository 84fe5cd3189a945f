"""The wikipedia reader: clean text from wikitext, ranges of multistream dumps, and every kind of bad input."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import pytest

from pretrain import storage
from pretrain.config import SourceConfig
from pretrain.data.readers import wikipedia as wk
from pretrain.data.readers.base import InputError, Partition, ReadStats
from pretrain.data.samples.wikipedia import (
    FOOTER,
    HIDDEN,
    SamplePage,
    bz2_multistream,
    header_xml,
    page_xml,
    sample_pages,
    write_wikipedia_dump,
)

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "wikipedia.yaml"


def source(uri: str, **kw) -> SourceConfig:
    return SourceConfig(name="wiki", format="wikipedia", uri=uri, **kw)


def read_part(src: SourceConfig, part: Partition) -> tuple[list[dict], ReadStats]:
    """All rows of a partition; the ledger every reader keeps must hold."""
    stats = ReadStats()
    rows = list(wk.read(src, part, stats))
    assert stats.records == len(rows) + sum(stats.skipped.values())
    return rows, stats


def read_file(path: str, **kw) -> tuple[list[dict], ReadStats]:
    return read_part(source(path, **kw), Partition("wiki", path, Path(path).name))


def titles(rows: list[dict]) -> list[str]:
    return [json.loads(r["meta"])["title"] for r in rows]


def test_clean_wikitext_removes_markup_and_keeps_prose():
    text = ("{{Infobox person|name=Hidden}}'''Ada''' was a [[Mathematician|mathematician]] and ''writer''"
            "<ref>{{cite book|title=Hidden}}</ref> from [[London]].\n== Early life ==\nBorn in 1815&nbsp;AD."
            "<!-- hidden -->\n{| class=\"wikitable\"\n|-\n| hidden cell || 2\n|}\n[[File:Ada.jpg|thumb|Hidden]]\n"
            "* [[Analytical engine|The engine]] notes\n[[Category:Hidden]]\n[[de:Hidden]]\n"
            "[https://example.org her letters] https://hidden.example {{{arg|hidden}}} __NOTOC__")
    assert wk.clean_wikitext(text) == ("Ada was a mathematician and writer from London.\n\nEarly life\n\n"
                                       "Born in 1815 AD.\n\nThe engine notes\n\nher letters")
    for page in sample_pages(40):
        if page.is_article:
            clean = wk.clean_wikitext(page.wikitext)
            assert all(s in clean for s in page.must_contain), page.title
            assert not any(s in clean for s in page.must_not_contain), page.title


def test_reads_articles_skips_redirects_and_other_namespaces(tmp_path):
    dump = write_wikipedia_dump(str(tmp_path / "enwiki.xml.bz2"), pages=60, pages_per_stream=10)
    rows, stats = read_file(dump.path)
    assert titles(rows) == [p.title for p in dump.articles]
    assert dump.redirects > 0 and dump.other_namespaces > 0
    assert stats.skipped == {"redirect": dump.redirects, "namespace": dump.other_namespaces}
    assert stats.records == len(dump.pages) and stats.bytes_read == Path(dump.path).stat().st_size
    page, row = dump.articles[0], rows[0]
    assert row["source_id"] == str(page.page_id) and row["date"] == page.timestamp
    assert row["url"] == dump.page_url(page.title) and row["license"] == "CC-BY-SA-4.0"
    meta = json.loads(row["meta"])
    assert meta == {"title": page.title, "page_id": str(page.page_id), "revision_id": str(page.revision_id),
                    "namespace": 0, "site": "enwiki"}
    assert HIDDEN not in row["text"] and "Overview" in row["text"]


def test_plan_splits_multistream_at_stream_starts_and_loses_nothing(tmp_path):
    dump = write_wikipedia_dump(str(tmp_path / "dump" / "enwiki.xml.bz2"), pages=400, pages_per_stream=8)
    src = source(str(tmp_path / "dump")).model_copy(update={"partition_bytes": 65536})
    parts = wk.plan(src, src.uri)
    size = Path(dump.path).stat().st_size
    assert len(parts) >= 2 and all(p.unit == "bytes" for p in parts)
    assert {p.start for p in parts} <= set(dump.stream_offsets)
    assert [p.end for p in parts[:-1]] == [p.start for p in parts[1:]] and parts[-1].end == size
    whole, _ = read_file(dump.path)
    pieces = [read_part(src, p) for p in parts]
    assert [r for rows, _ in pieces for r in rows] == whole  # same rows, same order: none lost or doubled
    assert all(rows and rows[0]["url"].startswith("https://en.wikipedia.org/wiki/") for rows, _ in pieces)
    assert sum(st.bytes_read for _, st in pieces) == size


def test_pages_straddling_streams_belong_to_the_range_they_start_in(tmp_path):
    """Streams cut at arbitrary bytes (as pbzip2 writes them): ranges still add up to the whole file."""
    xml = (header_xml() + "".join(page_xml(p) for p in sample_pages(40)) + FOOTER).encode()
    chunks = [xml[k: k + 1500] for k in range(0, len(xml), 1500)]
    chunks.insert(9, xml[9 * 1500: 9 * 1500 + 2])  # a stream holding only "  <" of the next tag
    chunks[10] = xml[9 * 1500 + 2: 10 * 1500]
    data, offsets = bz2_multistream(chunks)
    path = tmp_path / "cut.xml.bz2"
    path.write_bytes(data)
    src = source(str(path))
    whole, _ = read_file(str(path))
    assert len(whole) == sum(p.is_article for p in sample_pages(40))
    for step in (1, 2, 3, 5):
        starts = offsets[::step]
        ends = [*starts[1:], len(data)]
        rows = [r for s, e in zip(starts, ends, strict=True)
                for r in read_part(src, Partition("wiki", str(path), "cut", "bytes", s, e))[0]]
        assert rows == whole, step


def test_split_points_are_verified_stream_starts(tmp_path):
    dump = write_wikipedia_dump(str(tmp_path / "a.xml.bz2"), pages=60, pages_per_stream=5)
    size = Path(dump.path).stat().st_size
    points = wk.split_points(dump.path, size, 4096)
    assert points[0] == 0 and len(points) > 3 and set(points) <= set(dump.stream_offsets)
    fake = b"xx" + b"BZh91AY&SY" + b"not really a bz2 block at all" * 10
    (tmp_path / "fake.bin").write_bytes(fake)
    with open(tmp_path / "fake.bin", "rb") as raw:
        assert wk.find_stream_start(raw, 0, len(fake)) is None
    single = write_wikipedia_dump(str(tmp_path / "one.xml.bz2"), pages=60, multistream=False)
    assert wk.split_points(single.path, Path(single.path).stat().st_size, 4096) == [0]


def test_corrupt_stream_loses_its_pages_and_the_rest_is_read(tmp_path):
    dump = write_wikipedia_dump(str(tmp_path / "bad.xml.bz2"), pages=60, pages_per_stream=10)
    data = bytearray(Path(dump.path).read_bytes())
    k = 3
    middle = (dump.stream_offsets[k] + dump.stream_offsets[k + 1]) // 2
    data[middle: middle + 8] = bytes(b ^ 0xFF for b in data[middle: middle + 8])
    Path(dump.path).write_bytes(bytes(data))
    rows, stats = read_file(dump.path)
    lost = set(dump.stream_titles[k])
    assert titles(rows) == [p.title for p in dump.articles if p.title not in lost]
    assert any(t in titles(rows) for t in dump.stream_titles[k + 1])  # reading resumed after the bad stream
    assert stats.skipped["corrupt_stream"] >= 1
    assert any(e["reason"] == "corrupt_stream" and e["offset"] == dump.stream_offsets[k] and e["url"] == dump.path
               for e in stats.errors)


def test_truncated_file_keeps_the_pages_before_the_cut(tmp_path):
    dump = write_wikipedia_dump(str(tmp_path / "cut.xml.bz2"), pages=60, pages_per_stream=10)
    k = 4
    data = Path(dump.path).read_bytes()
    Path(dump.path).write_bytes(data[: dump.stream_offsets[k] + 300])
    rows, stats = read_file(dump.path)
    before = {t for ts in dump.stream_titles[:k] for t in ts}
    assert titles(rows) == [p.title for p in dump.articles if p.title in before]
    assert stats.skipped.get("truncated", 0) + stats.files_skipped.get("truncated", 0) == 1
    # plain, gzip and zstd files cut inside a page (zstd decodes whole 128 KiB blocks: a bigger sample)
    pages = sample_pages(120)
    xml = (header_xml() + "".join(page_xml(p) for p in pages)).encode()
    for name in ("cut.xml", "cut.xml.gz", "cut.xml.zst"):
        full = write_wikipedia_dump(str(tmp_path / name), pages=pages)
        whole = Path(full.path).read_bytes()
        Path(full.path).write_bytes(whole[: (len(xml) if name.endswith(".xml") else len(whole)) * 9 // 10])
        cut_rows, cut_stats = read_file(full.path)
        assert 0 < len(cut_rows) < len(full.articles), name
        assert titles(cut_rows) == [p.title for p in full.articles[: len(cut_rows)]], name
        assert cut_stats.skipped.get("truncated", 0) + cut_stats.files_skipped.get("truncated", 0) == 1, name


@pytest.mark.parametrize("name", ["empty.xml.bz2", "empty.xml", "empty.xml.gz"])
def test_empty_file_is_counted_not_fatal(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    rows, stats = read_file(str(tmp_path / name))
    assert rows == [] and stats.files_skipped == {"empty": 1} and stats.records == 0


def test_missing_file_raises_input_error_naming_it(tmp_path):
    path = str(tmp_path / "nope.xml.bz2")
    with pytest.raises(InputError, match=r"nope\.xml\.bz2"):
        read_file(path)


def test_malformed_page_is_skipped_and_the_next_pages_read(tmp_path):
    pages = sample_pages(12)
    body = [page_xml(p) for p in pages]
    body[1] = body[1].replace("</title>", "</titel>")  # mismatched tag
    body[4] = body[4].replace("  </page>\n", "")  # never closed: the next <page> starts a new one
    path = tmp_path / "broken.xml"
    path.write_text(header_xml() + "".join(body) + FOOTER)
    rows, stats = read_file(str(path))
    assert stats.skipped["malformed_xml"] == 2
    assert titles(rows) == [p.title for i, p in enumerate(pages) if p.is_article and i not in (1, 4)]


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    pages = sample_pages(8)
    xml = (header_xml() + "".join(page_xml(p) for p in pages) + FOOTER).encode()
    xml = xml.replace(b"is a module of the", b"is a \xff\xfe module of the", 1)
    path = tmp_path / "utf.xml.bz2"
    path.write_bytes(bz2.compress(xml))
    rows, stats = read_file(str(path))
    assert len(rows) == sum(p.is_article for p in pages)
    assert stats.repaired == {"invalid_utf8": 1}
    assert "is a \ufffd\ufffd module of the" in rows[0]["text"]


def test_too_large_and_empty_pages_are_skipped(tmp_path):
    big = SamplePage("Big", 1, 0, 2, "2024-01-01T00:00:00Z", "A long article. " * 5000)
    empty = SamplePage("Empty", 3, 0, 4, "2024-01-01T00:00:00Z", "{{Only a template}}\n[[Category:Nothing]]")
    small = SamplePage("Small", 5, 0, 6, "2024-01-01T00:00:00Z", "A short article about something small.")
    for name in ("sizes.xml.bz2", "sizes.xml"):
        dump = write_wikipedia_dump(str(tmp_path / name), pages=[big, empty, small], pages_per_stream=1)
        rows, stats = read_file(dump.path, max_document_bytes=20_000)
        assert titles(rows) == ["Small"], name
        assert stats.skipped == {"too_large": 1, "empty": 1}, name


@pytest.mark.parametrize("name", ["w.xml", "w.xml.gz", "w.xml.xz", "w.xml.zst", "single.xml.bz2"])
def test_other_codecs_read_the_same_pages_as_one_partition(tmp_path, name):
    dump = write_wikipedia_dump(str(tmp_path / name), pages=30, multistream=False)
    src = source(str(tmp_path)).model_copy(update={"partition_bytes": 65536})
    assert [p.unit for p in wk.plan(src, src.uri)] == ["file"]
    rows, _ = read_file(dump.path)
    assert titles(rows) == [p.title for p in dump.articles]
    assert rows[0]["url"] == dump.page_url(dump.articles[0].title)


def test_reads_from_s3(tmp_path, s3):
    dump = write_wikipedia_dump(str(tmp_path / "enwiki.xml.bz2"), pages=400, pages_per_stream=8)
    url = f"{s3}/dumps/enwiki.xml.bz2"
    storage.write_bytes(url, Path(dump.path).read_bytes())
    src = source(f"{s3}/dumps").model_copy(update={"partition_bytes": 65536})
    parts = wk.plan(src, src.uri)
    assert len(parts) >= 2 and all(p.url == url for p in parts)
    rows = [r for p in parts for r in read_part(src, p)[0]]
    assert titles(rows) == [p.title for p in dump.articles]


def test_pretrain_data_on_the_example_recipe(tmp_path):
    from pretrain.cli import main
    from pretrain.manifest import Manifest

    dump = write_wikipedia_dump(str(tmp_path / "in" / "enwiki.xml.bz2"), pages=80, pages_per_stream=10)
    run_root = tmp_path / "run"
    assert main(["data", str(RECIPE), f"sources.0.uri={tmp_path / 'in'}", f"run_root={run_root}"]) == 0
    tokens = Manifest.load(str(run_root / "tokens"))
    assert tokens.shards and sum(s.rows for s in tokens.shards) > 0
    manifests = sorted((run_root / "documents" / "wikipedia").glob("*.manifest.json"))
    assert manifests
    stats = [json.loads(m.read_text())["stats"] for m in manifests]
    for s in stats:
        assert s["records"] == s["documents"] + sum(s["skipped"].values())
    assert sum(s["documents"] for s in stats) == len(dump.articles)


def test_splitter_finishes_only_a_page_begun_in_its_range():
    stats = ReadStats()
    s = wk.PageSplitter(10_000, "u", stats)
    s.feed(b"<siteinfo><base>b</base></siteinfo><page>one</page> <pa")
    s.end_range()
    assert s.wants_more and s.siteinfo == b"<siteinfo><base>b</base></siteinfo>"
    s.feed(b"ge>two</page><page>three</page>", may_start=False)
    assert s.pages == [b"<page>one</page>", b"<page>two</page>"] and not s.wants_more
    other = wk.PageSplitter(10_000, "u", stats)
    other.feed(b"<page>one</page> <")
    other.end_range()
    other.feed(b"x <pa", may_start=False)  # a tag beginning past the range belongs to the next range
    assert not other.wants_more and other.pages == [b"<page>one</page>"]
