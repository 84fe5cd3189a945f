"""WARC and WET readers on crawls the tests write: main text, charsets, junk, broken files, ranges, S3."""

from __future__ import annotations

import gzip
import json
import re
import tracemalloc
import zlib
from pathlib import Path

import pytest

from pretrain import storage
from pretrain.config import SourceConfig
from pretrain.data.readers import warc
from pretrain.data.readers.base import InputError, Partition, ReadStats
from pretrain.data.samples import web

BOILERPLATE = ("Section 3 overview", "All rights reserved", "Accept all cookies", "Related reading number")
RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "examples"


def source(uri, fmt="warc", **kw) -> SourceConfig:
    return SourceConfig(name="web", format=fmt, uri=str(uri), **kw)


def read_all(src: SourceConfig, location=None) -> tuple[list[dict], ReadStats]:
    stats = ReadStats()
    rows = [row for part in warc.plan(src, str(location or src.uri)) for row in warc.read(src, part, stats)]
    assert stats.records == len(rows) + sum(stats.skipped.values()), stats
    return rows, stats


def members(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each gzip member of a per-record gzip WARC."""
    spans, pos = [], 0
    while pos < len(data):
        inflater = zlib.decompressobj(31)
        inflater.decompress(data[pos:])
        end = len(data) - len(inflater.unused_data)
        spans.append((pos, end))
        pos = end
    return spans


def test_pages_become_main_text_and_junk_is_counted_by_type(tmp_path):
    labels = web.write_warc(tmp_path / "crawl.warc.gz", 30)
    rows, stats = read_all(source(tmp_path / "crawl.warc.gz"))
    by_url = {r["url"]: r for r in rows}
    assert set(labels) <= set(by_url) and len(rows) == len(labels) + 3  # + the three charset pages
    assert stats.skipped == {"non_html": 5, "http_status": 1}
    assert stats.skipped_types == {"text/css": 1, "application/javascript": 1, "application/json": 1,
                                   "image/png": 1, "application/pdf": 1}
    for url, main in labels.items():
        text = by_url[url]["text"]
        assert all(p[:60] in text for p in main.split("\n")[1:4]), url
        assert not any(b in text for b in BOILERPLATE), (url, text[:300])
    row = by_url[next(iter(labels))]
    assert row["date"] == web.WARC_DATE and row["source_id"].startswith("<urn:uuid:")
    assert json.loads(row["meta"])["content_type"] == "text/html"
    assert len({r["id"] for r in rows}) == len(rows)


def test_main_content_off_keeps_the_menus(tmp_path):
    web.write_warc(tmp_path / "crawl.warc.gz", 3, junk=False)
    rows, _ = read_all(source(tmp_path / "crawl.warc.gz", main_content=False))
    assert all("Section 3 overview" in r["text"] for r in rows)


def test_charsets_header_meta_detection_and_bad_bytes(tmp_path):
    web.write_warc(tmp_path / "crawl.warc.gz", 12)
    rows, stats = read_all(source(tmp_path / "crawl.warc.gz"))
    pages = {r["url"]: r["text"] for r in rows if "menu.example.org" in r["url"]}
    phrase = web.charset_pages()[0][3]
    assert len(pages) == 3 and all(phrase in text for text in pages.values()), pages
    assert "di\ufffdsh" in pages["https://menu.example.org/utf8-bad-byte.html"]  # one byte replaced, not re-decoded
    assert "Ã" not in "".join(pages.values())  # no mojibake anywhere
    assert stats.repaired["invalid_utf8"] == 1


def test_trafilatura_is_selectable(tmp_path):
    labels = web.write_warc(tmp_path / "crawl.warc.gz", 4, junk=False)
    rows, _ = read_all(source(tmp_path / "crawl.warc.gz", extractor="trafilatura"))
    assert len(rows) == 4
    for row in rows:
        assert labels[row["url"]].split("\n")[1][:50] in row["text"]


def test_wet_conversion_records(tmp_path):
    labels = web.write_wet(tmp_path / "a.warc.wet.gz", 10)
    rows, _ = read_all(source(tmp_path / "a.warc.wet.gz", fmt="wet"))
    assert {r["url"]: r["text"] for r in rows} == {u: t.strip() for u, t in labels.items()}
    meta = json.loads(rows[0]["meta"])
    assert meta["languages"] == "eng" and meta["refers_to"].startswith("<urn:uuid:")
    assert rows[0]["source_id"].startswith("<urn:uuid:") and rows[0]["date"] == web.WARC_DATE


@pytest.mark.parametrize("compress", [None, "zstd", "bz2", "xz", "whole-gzip"])
def test_every_codec_reads_the_same_documents(tmp_path, compress):
    web.write_warc(tmp_path / "ref.warc.gz", 20)
    reference, _ = read_all(source(tmp_path / "ref.warc.gz"))
    if compress == "whole-gzip":
        web.write_warc(tmp_path / "plain.warc", 20, compress=None)
        path = tmp_path / "c.warc.gz"
        path.write_bytes(gzip.compress((tmp_path / "plain.warc").read_bytes()))
    else:
        suffix = {None: "", "zstd": ".zst", "bz2": ".bz2", "xz": ".xz"}[compress]
        path = tmp_path / f"c.warc{suffix}"
        web.write_warc(path, 20, compress=compress)
    rows, _ = read_all(source(path))
    assert [(r["url"], r["text"]) for r in rows] == [(r["url"], r["text"]) for r in reference]


def test_truncated_gzip_keeps_every_record_before_the_cut(tmp_path):
    labels = web.write_warc(tmp_path / "a.warc.gz", 20, junk=False)
    data = (tmp_path / "a.warc.gz").read_bytes()
    spans = members(data)
    cut = spans[22][0] + (spans[22][1] - spans[22][0]) // 2  # inside the 11th response (warcinfo, then pairs)
    (tmp_path / "a.warc.gz").write_bytes(data[:cut])
    rows, stats = read_all(source(tmp_path / "a.warc.gz"))
    assert len(rows) == 10 and [r["url"] for r in rows] == list(labels)[:10]
    assert stats.skipped == {"truncated": 1}
    assert stats.errors[0]["offset"] == spans[22][0] and stats.errors[0]["url"].endswith("a.warc.gz")


@pytest.mark.parametrize("delta", [+100, -100])
def test_a_wrong_content_length_is_repaired_from_the_gzip_framing(tmp_path, delta):
    labels = web.write_warc(tmp_path / "a.warc.gz", 10, junk=False)
    reference, _ = read_all(source(tmp_path / "a.warc.gz"))
    data = (tmp_path / "a.warc.gz").read_bytes()
    start, end = members(data)[8]  # the 4th page's response member (after warcinfo and request/response pairs)
    record = zlib.decompress(data[start:end], 31)
    declared = int(re.search(rb"Content-Length: (\d+)", record).group(1))
    record = record.replace(b"Content-Length: %d" % declared, b"Content-Length: %d" % (declared + delta), 1)
    (tmp_path / "a.warc.gz").write_bytes(data[:start] + gzip.compress(record) + data[end:])
    rows, stats = read_all(source(tmp_path / "a.warc.gz"))
    assert [(r["url"], r["text"]) for r in rows] == [(r["url"], r["text"]) for r in reference]
    assert stats.repaired == {"content_length": 1} and len(rows) == len(labels)


def test_a_corrupt_member_is_skipped_and_the_rest_is_read(tmp_path):
    web.write_warc(tmp_path / "a.warc.gz", 10, junk=False)
    data = bytearray((tmp_path / "a.warc.gz").read_bytes())
    start, _ = members(bytes(data))[6]
    data[start + 40:start + 200] = bytes(160)  # zero out part of the deflate stream
    (tmp_path / "a.warc.gz").write_bytes(bytes(data))
    rows, stats = read_all(source(tmp_path / "a.warc.gz"))
    assert len(rows) == 9 and stats.skipped == {"corrupt_record": 1}
    assert stats.errors[0]["offset"] == start


def test_a_plain_warc_resyncs_after_a_broken_record(tmp_path):
    web.write_warc(tmp_path / "a.warc", 10, junk=False, compress=None)
    data = (tmp_path / "a.warc").read_bytes()
    starts = [m.start() for m in re.finditer(rb"WARC/1\.[01]\r\n", data)]
    inside = data.index(b"<p>", starts[6])  # inside the 3rd page's body: its record no longer frames
    (tmp_path / "a.warc").write_bytes(data[:inside] + b"<p>junk that shifts the framing</p>" * 3 + data[inside:])
    rows, stats = read_all(source(tmp_path / "a.warc"))
    assert stats.files_skipped["corrupt_record"] == 1
    assert [r["url"] for r in rows][-7:] == [f"https://docs.example.org/reference/{i}.html" for i in range(3, 10)]


def test_binary_junk_empty_and_missing_files(tmp_path):
    (tmp_path / "junk.warc.gz").write_bytes(bytes(range(256)) * 400)
    (tmp_path / "junk.warc").write_bytes(bytes(reversed(range(256))) * 400)
    (tmp_path / "empty.warc.gz").write_bytes(b"")
    rows, stats = read_all(source(tmp_path, include=["*.warc*"]))
    assert rows == [] and stats.records == 0
    assert stats.files_skipped["empty"] == 1 and sum(stats.files_skipped.values()) >= 3
    missing = Partition("web", str(tmp_path / "nope.warc.gz"), "nope.warc.gz")
    with pytest.raises(InputError, match=r"nope\.warc\.gz: file not found"):
        list(warc.read(source(tmp_path), missing, ReadStats()))


def test_a_100_mb_page_is_skipped_without_holding_it(tmp_path):
    web.write_warc(tmp_path / "a.warc.gz", 4, junk=False)
    line = b"<p>all work and no play makes a dull page</p>\n"
    body = b"<html><body>" + line * (100_000_000 // len(line)) + b"</body></html>"
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body))
    block_len = len(head) + len(body)
    record = (b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:giant>\r\n"
              b"WARC-Target-URI: https://big.example.org/\r\nContent-Length: %d\r\n\r\n" % block_len)
    with open(tmp_path / "a.warc.gz", "ab") as f:
        f.write(gzip.compress(record + head + body + b"\r\n\r\n", compresslevel=1))
    del body
    web.write_warc(tmp_path / "b.warc.gz", 2, junk=False, start=50)
    with open(tmp_path / "a.warc.gz", "ab") as f:
        f.write((tmp_path / "b.warc.gz").read_bytes())  # good records after the giant one
    tracemalloc.start()
    rows, stats = read_all(source(tmp_path / "a.warc.gz"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(rows) == 6 and stats.skipped == {"too_large": 1}
    assert peak < 40_000_000, f"peak {peak / 1e6:.0f} MB while skipping a 100 MB page"


def test_plan_splits_large_files_at_records_and_ranges_cover_each_record_once(tmp_path):
    labels = web.write_warc(tmp_path / "big.warc.gz", 400, junk=False)
    whole, _ = read_all(source(tmp_path / "big.warc.gz", partition_bytes=1 << 30))
    src = source(tmp_path / "big.warc.gz", partition_bytes=1 << 16)
    parts = warc.plan(src, src.uri)
    assert len(parts) >= 4 and all(p.unit == "bytes" for p in parts)
    assert len({p.key for p in parts}) == len(parts)
    data = (tmp_path / "big.warc.gz").read_bytes()
    starts = {s for s, _ in members(data)}
    assert all(p.start in starts for p in parts)  # every cut is a record boundary
    split, _ = read_all(src)
    assert [r["id"] for r in split] == [r["id"] for r in whole] and len(whole) == len(labels)


def test_reads_from_s3(tmp_path, s3):
    labels = web.write_warc(tmp_path / "a.warc.gz", 200, junk=False)
    storage.write_bytes(f"{s3}/crawl/a.warc.gz", (tmp_path / "a.warc.gz").read_bytes())
    src = source(f"{s3}/crawl", partition_bytes=1 << 16)
    rows, stats = read_all(src)
    assert len(warc.plan(src, src.uri)) >= 2
    assert sorted(r["url"] for r in rows) == sorted(labels) and stats.bytes_read > 0


@pytest.mark.parametrize("fmt", ["warc", "wet"])
def test_pretrain_data_on_the_example_recipe(tmp_path, fmt, capsys):
    from pretrain.cli import main
    from pretrain.manifest import Manifest

    data = tmp_path / "in"
    if fmt == "warc":
        web.write_warc(data / "a.warc.gz", 60)
    else:
        web.write_wet(data / "a.warc.wet.gz", 60)
    run = tmp_path / "run"
    assert main(["data", str(RECIPES / f"{fmt}.yaml"), f"sources.0.uri={data}", f"run_root={run}"]) == 0
    tokens = Manifest.load(str(run / "tokens"))
    assert tokens.stats["train_tokens"] > 0
    ingested = [Manifest.load(str(p)) for p in (run / "documents").glob("*/*.manifest.json")]
    assert sum(m.stats["documents"] for m in ingested) == 60 + (3 if fmt == "warc" else 0)
    for m in ingested:
        assert m.stats["records"] == m.stats["documents"] + sum(m.stats["skipped"].values())
    assert "read 6" in capsys.readouterr().err  # the ledger line: read N = written + skipped


DIV_SOUP = """<html><body><div class="top-menu"><a href="/">Home</a> <a href="/shop">Shop the catalogue</a></div>
<div class="content"><h1>Sourdough at home</h1><p>Feed the starter twice a day and keep it somewhere warm.</p>
<div class="promo">Subscribe to our newsletter today</div></div>
<div class="site-footer">Copyright 2024 Bakery Ltd</div>
<div class="cookie-consent">We use cookies, accept them all</div></body></html>"""


def test_main_content_selectors_drop_boilerplate_without_semantic_tags():
    from pretrain.data.readers.html import extract_text

    text = extract_text(DIV_SOUP)
    assert "Feed the starter twice a day" in text and "Sourdough at home" in text
    for boilerplate in ("Shop the catalogue", "Copyright 2024", "accept them all"):
        assert boilerplate not in text
        assert boilerplate in extract_text(DIV_SOUP, main_content=False)
    heuristics = extract_text(DIV_SOUP, rules="resiliparse")  # Resiliparse's own rules stay selectable
    assert "Feed the starter twice a day" in heuristics and "Copyright 2024" not in heuristics


def test_boilerplate_selectors_are_configurable(tmp_path):
    from pretrain.data.readers.html import BOILERPLATE_SELECTORS, extract_text

    assert "Subscribe to our newsletter" in extract_text(DIV_SOUP)
    assert "Subscribe to our newsletter" not in extract_text(DIV_SOUP, selectors=[*BOILERPLATE_SELECTORS, ".promo"])
    web.write_warc(tmp_path / "a.warc.gz", 2, junk=False)
    rows, _ = read_all(source(tmp_path / "a.warc.gz", boilerplate_selectors=["p"]))  # drop every paragraph
    assert all("Section 3 overview" in r["text"] for r in rows)  # a custom list replaces the built-in one
