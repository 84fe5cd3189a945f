"""The jsonl / parquet / hf readers: field mapping, dates, splitting big files, and every kind of bad input."""

from __future__ import annotations

import glob
import itertools
import json
import os
import random
import tracemalloc
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain import storage
from pretrain.config import SourceConfig
from pretrain.data.readers import tables
from pretrain.data.readers.base import InputError, Partition, ReadStats
from pretrain.data.samples import tables as samples

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "examples"


def source(fmt: str, uri: str = "unused", **kw) -> SourceConfig:
    return SourceConfig(name="t", format=fmt, uri=uri, **kw)


def read_all(src: SourceConfig, parts: list[Partition]) -> tuple[list[dict], ReadStats]:
    """Every document of ``parts``, checking the ledger every reader keeps."""
    stats = ReadStats()
    rows = [row for part in parts for row in tables.read(src, part, stats)]
    assert stats.records == len(rows) + sum(stats.skipped.values())
    return rows, stats


def read_file(src: SourceConfig, path) -> tuple[list[dict], ReadStats]:
    return read_all(src, [Partition("t", str(path), os.path.basename(path))])


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def good(i: int) -> bytes:
    return json.dumps({"id": f"g{i}", "text": f"good document number {i}"}).encode()


# -- field mapping and dates --------------------------------------------------------------------

def test_jsonl_fields_map_into_the_documents_schema(tmp_path):
    path = samples.write_jsonl(tmp_path / "in.jsonl", 5, text_field="body")
    src = source("jsonl", text_field="body", id_field="id", url_field="url", date_field="date",
                 meta_fields=["module", "chars", "absent"], license="PSF-2.0")
    rows, _ = read_file(src, path)
    expected = list(samples.rows(5))
    assert [r["text"] for r in rows] == [e["text"] for e in expected]
    assert [r["source_id"] for r in rows] == [e["id"] for e in expected]
    assert [r["url"] for r in rows] == [e["url"] for e in expected]
    assert rows[1]["date"] == "2024-01-01T01:00:00Z"
    assert json.loads(rows[0]["meta"]) == {"module": expected[0]["module"], "chars": expected[0]["chars"]}
    assert rows[0]["license"] == "PSF-2.0" and rows[0]["source"] == "t"
    # Without id and url fields: file and 1-based line number, and the file's location.
    plain, _ = read_file(source("jsonl", text_field="body"), path)
    assert [r["source_id"] for r in plain] == [f"in.jsonl:{i}" for i in range(1, 6)]
    assert {r["url"] for r in plain} == {str(path)} and plain[0]["date"] == "" and plain[0]["meta"] == "{}"
    # The default text field is absent from these lines: every line is counted as no_text.
    none, stats = read_file(source("jsonl"), path)
    assert none == [] and stats.skipped == {"no_text": 5}


@pytest.mark.parametrize(("value", "expected"), [
    (datetime(2024, 3, 5, 12, 0, tzinfo=timezone(timedelta(hours=2))), "2024-03-05T10:00:00Z"),
    (datetime(2024, 3, 5, 12, 30), "2024-03-05T12:30:00"),
    (date(2024, 3, 5), "2024-03-05"),
    (1709640000, "2024-03-05T12:00:00Z"),
    (1709640000123, "2024-03-05T12:00:00.123000Z"),
    ("2024-03-05", "2024-03-05"),
    ("2024-03-05T12:00:00+01:00", "2024-03-05T11:00:00Z"),
    ("2024-03-05T12:00:00Z", "2024-03-05T12:00:00Z"),
    ("Tue, 05 Mar 2024 12:00:00 GMT", "2024-03-05T12:00:00Z"),
    ("sometime in spring", "sometime in spring"),
    (None, ""),
    ("", ""),
])
def test_dates_become_iso_8601_when_parseable(value, expected):
    assert tables.iso_date(value) == expected


# -- splitting --------------------------------------------------------------------------------

def test_jsonl_byte_ranges_read_exactly_the_whole_file(tmp_path):
    path = samples.write_jsonl(tmp_path / "big.jsonl", 400)
    size = os.path.getsize(path)
    assert size > 3 * 65536
    src = source("jsonl", uri=path, partition_bytes=65536)
    parts = tables.plan(src, path)
    assert len(parts) == -(-size // 65536) and all(p.unit == "bytes" for p in parts)
    assert parts[0].start == 0 and parts[-1].end == size
    assert all(a.end == b.start for a, b in itertools.pairwise(parts))
    whole, _ = read_all(src, [Partition("t", path, "big.jsonl", "bytes", 0, size)])
    ranged, _ = read_all(src, parts)
    assert len(whole) == 400 and ranged == whole
    assert whole[3]["source_id"].startswith("big.jsonl:@")  # a byte offset: known without reading the prefix
    # Boundaries exactly at a line start, one byte before and one after: each line is read once.
    starts = [0]
    with open(path, "rb") as f:
        starts += [starts[-1] + len(line) for line in f][:-1]
    for cut in (starts[57], starts[57] - 1, starts[57] + 1, starts[200]):
        halves = [Partition("t", path, "big.jsonl", "bytes", 0, cut),
                  Partition("t", path, "big.jsonl", "bytes", cut, size)]
        assert read_all(src, halves)[0] == whole, cut


def test_compressed_jsonl_is_one_partition_and_reads_like_plain(tmp_path):
    plain = samples.write_jsonl(tmp_path / "p" / "a.jsonl", 250)
    expected = [r["text"] for r in read_file(source("jsonl"), plain)[0]]
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        path = samples.write_jsonl(tmp_path / f"c{suffix}" / f"a.jsonl{suffix}", 250)
        src = source("jsonl", uri=path, partition_bytes=65536)
        parts = tables.plan(src, os.path.dirname(path))
        assert [p.unit for p in parts] == ["file"], suffix
        rows, _ = read_all(src, parts)
        assert [r["text"] for r in rows] == expected, suffix
        assert rows[0]["source_id"] == f"a.jsonl{suffix}:1"


def test_parquet_row_group_ranges_read_exactly_the_whole_file(tmp_path):
    path = samples.write_parquet(tmp_path / "t.parquet", 400, row_group_size=25)
    src = source("parquet", uri=path, partition_bytes=65536, date_field="date", meta_fields=["module", "chars"])
    parts = tables.plan(src, path)
    assert len(parts) > 1 and all(p.unit == "row_groups" for p in parts)
    assert parts[0].start == 0 and parts[-1].end == 16
    whole, _ = read_file(src, path)
    ranged, _ = read_all(src, parts)
    assert len(whole) == 400 and ranged == whole
    assert [r["source_id"] for r in whole[:2]] == ["t.parquet:0", "t.parquet:1"]
    assert whole[399]["source_id"] == "t.parquet:399"
    assert whole[2]["date"] == "2024-01-01T02:00:00Z"  # a timestamp column
    assert json.loads(whole[0]["meta"])["module"] == "abc"


def test_parquet_rows_without_usable_text_are_counted(tmp_path):
    path = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"text": ["a fine text", None, "", "   ", "x" * 5000], "n": [1, 2, 3, 4, 5]}), path)
    rows, stats = read_file(source("parquet", max_document_bytes=1000, meta_fields=["n"]), path)
    assert [r["text"] for r in rows] == ["a fine text"] and json.loads(rows[0]["meta"]) == {"n": 1}
    assert stats.skipped == {"no_text": 1, "empty": 2, "too_large": 1}
    _, stats = read_file(source("parquet", text_field="body"), path)  # no such column
    assert stats.records == 5 and stats.skipped == {"no_text": 5}
    pq.write_table(pa.table({"text": [1, 2]}), path)  # not a string column
    assert read_file(source("parquet"), path)[1].skipped == {"no_text": 2}


def test_corrupt_or_cut_parquet_is_skipped_naming_the_file(tmp_path):
    good_path = samples.write_parquet(tmp_path / "good.parquet", 50)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(random.Random(1).randbytes(5000))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(Path(good_path).read_bytes()[:3000])
    src = source("parquet", uri=str(tmp_path))
    parts = tables.plan(src, str(tmp_path))  # planning does not fail on them
    assert sorted(p.rel for p in parts) == ["cut.parquet", "good.parquet", "junk.parquet"]
    rows, stats = read_all(src, parts)
    assert len(rows) == 50
    assert stats.files_skipped == {"corrupt": 2}
    assert {e["url"] for e in stats.errors} == {str(junk), str(cut)}
    with pytest.raises(InputError, match=r"gone\.parquet"):
        read_file(src, tmp_path / "gone.parquet")


# -- bad JSONL ----------------------------------------------------------------------------------

def test_bad_jsonl_lines_are_repaired_or_skipped_and_the_rest_is_read(tmp_path):
    lines = [
        good(0),
        b'{"text": "caf\xe9 au lait is invalid UTF-8"}',   # repaired, kept
        b'{"text": "lone \\ud800 surrogate"}',             # repaired, kept
        b'{"text": "broken json',                          # invalid_json
        b'["an", "array"]',                                # not_object
        b'{"title": "no text field"}',                     # no_text
        b'{"text": 42}',                                   # no_text
        b'{"text": ""}',                                   # empty
        b"",                                               # a blank line: no record at all
        good(1),
    ]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    rows, stats = read_file(source("jsonl"), path)
    assert [r["text"] for r in rows] == ["good document number 0", "caf\ufffd au lait is invalid UTF-8",
                                         "lone \ufffd surrogate", "good document number 1"]
    assert stats.repaired == {"invalid_utf8": 1, "lone_surrogate": 1}
    assert stats.skipped == {"invalid_json": 1, "not_object": 1, "no_text": 2, "empty": 1}
    assert stats.records == 9
    bad = next(e for e in stats.errors if e["reason"] == "invalid_json")
    assert bad["url"] == str(path) and bad["offset"] == sum(len(x) + 1 for x in lines[:3])
    assert rows[3]["source_id"] == "bad.jsonl:10"


def test_binary_junk_is_counted_as_invalid_json(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_bytes(random.Random(0).randbytes(300_000))
    rows, stats = read_file(source("jsonl"), path)
    assert rows == [] and stats.records > 100
    assert set(stats.skipped) <= {"invalid_json", "too_large"} and stats.skipped["invalid_json"] > 100
    assert stats.bytes_read == 300_000


def test_a_huge_line_is_skipped_without_holding_it(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(good(0) + b"\n")
        f.write(b'{"text": "' + b"word " * 2_000_000 + b'"}\n')  # a 10 MB line
        f.write(json.dumps({"text": "y" * 150_000}).encode() + b"\n")  # a line that fits, its text does not
        f.write(good(1) + b"\n")
    src = source("jsonl", max_document_bytes=100_000)
    tracemalloc.start()
    try:
        rows, stats = read_file(src, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["text"] for r in rows] == ["good document number 0", "good document number 1"]
    assert stats.skipped == {"too_large": 2} and stats.bytes_read == path.stat().st_size
    # Never the 10 MB line at once: a line of at most 3x max_document_bytes, plus the read buffer.
    assert peak < 3 * 100_000 + tables.READ_BUFFER + 2_000_000, peak


def test_an_empty_file_is_skipped_and_a_missing_one_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    rows, stats = read_file(source("jsonl"), empty)
    assert rows == [] and stats.files_skipped == {"empty": 1} and stats.errors[0]["url"] == str(empty)
    missing = tmp_path / "gone.jsonl"
    with pytest.raises(InputError, match=r"gone\.jsonl"):
        read_file(source("jsonl"), missing)


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_truncated_compressed_file_keeps_the_lines_before_the_cut(tmp_path, suffix):
    full = samples.write_jsonl(tmp_path / f"full.jsonl{suffix}", 300)
    data = Path(full).read_bytes()
    cut = tmp_path / f"cut.jsonl{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    rows, stats = read_file(source("jsonl"), cut)
    assert 50 < len(rows) < 300
    assert [r["text"] for r in rows] == [r["text"] for r in samples.rows(len(rows))]
    assert stats.files_skipped == {"truncated": 1}
    err = stats.errors[0]
    assert err["url"] == str(cut) and err["offset"] > 0 and err["reason"] == "truncated"


# -- hf -----------------------------------------------------------------------------------------

def test_hf_save_to_disk_reads_each_arrow_file(tmp_path):
    path = samples.write_hf_dataset(tmp_path / "ds", 120, num_shards=3)
    src = source("hf", uri=path, id_field="id", date_field="date", meta_fields=["module"])
    parts = tables.plan(src, path)
    assert [p.rel for p in parts] == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    rows, _ = read_all(src, parts)
    assert [r["source_id"] for r in rows] == [r["id"] for r in samples.rows(120)]
    assert rows[0]["date"] == "2024-01-01T00:00:00Z" and json.loads(rows[0]["meta"]) == {"module": "abc"}
    plain, _ = read_all(source("hf"), parts)
    assert plain[41]["source_id"] == "data-00001-of-00003.arrow:1"  # row within its file


def test_hf_dataset_dict_reads_the_chosen_split(tmp_path):
    path = samples.write_hf_dataset(tmp_path / "dd", 40, split="train")
    parts = tables.plan(source("hf"), path)
    assert [p.rel for p in parts] == ["train/data-00000-of-00001.arrow"]
    assert len(read_all(source("hf"), parts)[0]) == 40
    other = tables.plan(source("hf", split="other"), path)
    assert len(read_all(source("hf"), other)[0]) == 3
    with pytest.raises(InputError, match="no split 'test'"):
        tables.plan(source("hf", split="test"), path)


def test_hf_data_files_jsonl_parquet_and_csv(tmp_path):
    folder = tmp_path / "files"
    samples.write_jsonl(folder / "a.jsonl.gz", 10)
    samples.write_parquet(folder / "b.parquet", 10, start=10)
    csv_rows = list(samples.rows(10, start=20))
    with open(folder / "c.csv", "w", newline="") as f:
        import csv

        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
        f.write("only,two\n")  # a ragged row: counted, skipped
    (folder / "README.md").write_text("not data")
    src = source("hf", uri=str(folder), id_field="id", date_field="date")
    parts = tables.plan(src, str(folder))
    assert [p.rel for p in parts] == ["a.jsonl.gz", "b.parquet", "c.csv"]
    rows, stats = read_all(src, parts)
    assert [r["source_id"] for r in rows] == [r["id"] for r in samples.rows(30)]
    assert [r["text"] for r in rows] == [r["text"] for r in samples.rows(30)]  # multi-line texts survive CSV
    assert stats.skipped == {"invalid_row": 1}
    assert rows[25]["date"] == "2024-01-02T01:00:00Z"


# -- S3 -----------------------------------------------------------------------------------------

def test_jsonl_parquet_and_hf_from_s3(tmp_path, s3):
    local = samples.write_jsonl(tmp_path / "a.jsonl", 300)
    storage.write_bytes(f"{s3}/in/a.jsonl", Path(local).read_bytes())
    local_pq = samples.write_parquet(tmp_path / "b.parquet", 300, row_group_size=25)
    storage.write_bytes(f"{s3}/pq/b.parquet", Path(local_pq).read_bytes())
    src = source("jsonl", uri=f"{s3}/in", partition_bytes=65536, id_field="id")
    parts = tables.plan(src, f"{s3}/in")
    assert len(parts) > 1 and parts[0].url == f"{s3}/in/a.jsonl" and parts[0].rel == "a.jsonl"
    rows, _ = read_all(src, parts)
    assert [r["source_id"] for r in rows] == [r["id"] for r in samples.rows(300)]
    assert rows[0]["url"] == f"{s3}/in/a.jsonl"
    src = source("parquet", uri=f"{s3}/pq", partition_bytes=65536)
    parts = tables.plan(src, f"{s3}/pq")
    assert len(parts) > 1
    remote, _ = read_all(src, parts)
    here, _ = read_file(src, local_pq)
    assert [r["text"] for r in remote] == [r["text"] for r in here] and len(remote) == 300
    folder = samples.write_hf_dataset(tmp_path / "dd", 50, split="train")
    for path in Path(folder).rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{s3}/hf/{path.relative_to(folder)}", path.read_bytes())
    parts = tables.plan(source("hf"), f"{s3}/hf")
    assert [p.url for p in parts] == [f"{s3}/hf/train/data-00000-of-00001.arrow"]
    assert [r["text"] for r in read_all(source("hf"), parts)[0]] == [r["text"] for r in samples.rows(50)]


# -- the whole data path ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_pretrain_data_runs_each_example_recipe(tmp_path, fmt, capsys):
    from pretrain.cli import main
    from pretrain.manifest import Manifest

    folder = tmp_path / "input"
    if fmt == "jsonl":
        samples.write_jsonl(folder / "a.jsonl", 150)
        samples.write_jsonl(folder / "b.jsonl.gz", 150, start=150)
    elif fmt == "parquet":
        samples.write_parquet(folder / "a.parquet", 150, row_group_size=50)
        samples.write_parquet(folder / "b.parquet", 150, row_group_size=50, start=150)
    else:
        samples.write_hf_dataset(folder, 300, num_shards=2)
    run_root = tmp_path / "run"
    assert main(["data", str(RECIPES / f"{fmt}.yaml"), f"sources.0.uri={folder}", f"run_root={run_root}"]) == 0
    capsys.readouterr()
    tokens = Manifest.load(str(run_root / "tokens"))
    ledger = Manifest.load(str(run_root / "dedup")).extra["ledger"]["total"]
    assert ledger["read"] == ledger["written"] == 300 and ledger["balanced"]  # every sample document
    assert tokens.stats["train_documents"] + tokens.stats["val_documents"] == ledger["deduplicated"] > 0
    manifests = glob.glob(str(run_root / "documents" / f"docs-{fmt}" / "*.manifest.json"))
    assert len(manifests) == 2
    stats = [Manifest.load(m).stats for m in manifests]
    assert sum(s["documents"] for s in stats) == 300
    assert all(s["records"] == s["documents"] + sum(s["skipped"].values()) for s in stats)

