"""The code reader on small repositories built by the test: folders, archives, git, S3, and broken inputs."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

from pretrain import storage
from pretrain.config import SourceConfig
from pretrain.data.readers import code
from pretrain.data.readers.base import InputError, ReadStats
from pretrain.data.samples import code as sample

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "examples" / "code.yaml"
DOCUMENTS = {path for path, reason in sample.EXPECTED.items() if not reason}


def source(uri, **kw) -> SourceConfig:
    return SourceConfig(name="code", format="code", uri=str(uri), **{"partitions": 2, **kw})


def read_all(uri, **kw) -> tuple[list[dict], ReadStats, list]:
    """Every partition of the source, read in turn, with the ledger checked."""
    src = source(uri, **kw)
    parts = code.plan(src, str(uri))
    stats = ReadStats()
    rows = [row for part in parts for row in code.read(src, part, stats)]
    assert stats.records == len(rows) + sum(stats.skipped.values())
    return rows, stats, parts


def by_path(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for row in rows:
        meta = json.loads(row["meta"])
        assert meta["path"] not in out, "a file read twice"
        out[meta["path"]] = {**row, "meta": meta}
    return out


def skip_counts() -> collections.Counter:
    return collections.Counter(reason for reason in sample.EXPECTED.values() if reason)


def test_folder_skip_reasons_languages_and_fields(tmp_path):
    repo = sample.write_repo_dir(tmp_path / "myrepo")
    rows, stats, parts = read_all(repo)
    docs = by_path(rows)
    assert set(docs) == DOCUMENTS
    assert stats.skipped == skip_counts()  # vendored 2, generated 2, minified 2, binary 2, empty 1
    assert stats.records == len(sample.EXPECTED)
    assert stats.repaired == {"invalid_utf8": 1}
    assert "\ufffd" in docs["src/legacy.py"]["text"] and "menu, written in Latin-1" in docs["src/legacy.py"]["text"]
    for path, lang in sample.LANGUAGES.items():
        assert docs[path]["meta"]["language"] == lang, path
    colorsys = docs["src/colorsys.py"]
    assert colorsys["text"] == sample.stdlib_source("colorsys.py").decode()
    assert colorsys["source_id"] == "myrepo/src/colorsys.py"
    assert colorsys["url"] == str(Path(repo) / "src/colorsys.py")
    assert colorsys["meta"]["repo"] == "myrepo" and colorsys["meta"]["bytes"] == len(colorsys["text"].encode())
    assert colorsys["date"] == ""
    assert [(p.rel, p.unit, p.start, p.end) for p in parts] == [("myrepo", "bucket", 0, 2), ("myrepo", "bucket", 1, 2)]
    reasons = {e["url"].rsplit("myrepo/", 1)[1]: e["reason"] for e in stats.errors}
    assert reasons["vendor/six.py"] == "vendored" and reasons["static/bundle.js"] == "minified"


def test_license_detected_once_and_overridden(tmp_path, monkeypatch):
    import spdx_lookup

    calls = []
    real = spdx_lookup.match
    monkeypatch.setattr(spdx_lookup, "match", lambda text: calls.append(1) or real(text))
    code.spdx_id.cache_clear()
    repo = sample.write_repo_dir(tmp_path / "repo")
    rows, _, _ = read_all(repo, partitions=3)
    assert {r["license"] for r in rows} == {"MIT"}
    assert len(calls) == 1  # once for the repository, not per file or per partition in one process
    rows, _, _ = read_all(repo, license="Apache-2.0")
    assert {r["license"] for r in rows} == {"Apache-2.0"}
    (Path(repo) / "LICENSE").write_text("All rights reserved. Ask before you copy anything from this repository.\n")
    rows, _, _ = read_all(repo)
    assert {r["license"] for r in rows} == {""}  # an unknown licence is not guessed


def test_git_ref_dates_and_bad_ref(tmp_path):
    repo = sample.write_git_repo(tmp_path / "proj")
    rows, stats, _ = read_all(repo)
    docs = by_path(rows)
    assert set(docs) == DOCUMENTS  # untracked.py is not read
    assert stats.skipped == skip_counts()
    first, second = sample.COMMIT_DATES
    assert docs["README.md"]["date"] == second and docs["src/util/shlex.py"]["date"] == second
    assert docs["src/colorsys.py"]["date"] == first and docs["LICENSE"]["date"] == first
    assert docs["README.md"]["url"] == f"{repo}@HEAD:README.md"
    assert docs["README.md"]["source_id"] == "proj/README.md"
    head = sample.git(repo, "rev-parse", "HEAD").strip()
    assert docs["README.md"]["meta"]["commit"] == head
    assert docs["LICENSE"]["license"] == "MIT"

    old = by_path(read_all(repo, ref="v1")[0])
    assert set(old) == DOCUMENTS - {p for p in DOCUMENTS if p.startswith("src/util/")}
    assert "early README" in old["README.md"]["text"] and old["README.md"]["date"] == first
    assert old["README.md"]["url"] == f"{repo}@v1:README.md"

    with pytest.raises(InputError, match="git ref 'no-such-branch' does not exist"):
        code.plan(source(repo, ref="no-such-branch"), repo)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"])
def test_archive_formats_read_like_the_folder(tmp_path, suffix):
    folder = by_path(read_all(sample.write_repo_dir(tmp_path / "pkg"))[0])
    archive = sample.write_repo_archive(tmp_path / f"pkg{suffix}")
    rows, stats, parts = read_all(archive)
    docs = by_path(rows)
    assert {p: d["text"] for p, d in docs.items()} == {p: d["text"] for p, d in folder.items()}
    assert stats.skipped == skip_counts() and not stats.files_skipped
    assert docs["src/heapq.py"]["url"] == f"{archive}#src/heapq.py"
    assert docs["src/heapq.py"]["source_id"] == "pkg/src/heapq.py" and parts[0].rel == "pkg"
    assert {d["license"] for d in docs.values()} == {"MIT"}
    # one streaming pass when the licence is given and nothing is limited: the same documents
    assert {r["id"] for r in read_all(archive, license="MIT")[0]} == {d["id"] for d in docs.values()}


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_release_tarball_licence_in_its_top_folder(tmp_path, suffix):
    archive = sample.write_repo_archive(tmp_path / f"lib-1.0{suffix}", prefix="lib-1.0/")
    docs = by_path(read_all(archive)[0])
    assert "lib-1.0/src/bisect.py" in docs and {d["license"] for d in docs.values()} == {"MIT"}


def test_buckets_cover_every_file_once_and_are_stable(tmp_path):
    repo = Path(sample.write_repo_dir(tmp_path / "repo"))
    src = source(repo, partitions=3)

    def buckets() -> list[set[str]]:
        out = []
        for part in code.plan(src, str(repo)):
            stats = ReadStats()
            out.append({json.loads(r["meta"])["path"] for r in code.read(src, part, stats)})
        return out

    before = buckets()
    assert sum(len(b) for b in before) == len(DOCUMENTS) and set().union(*before) == DOCUMENTS
    (repo / "src" / "added.py").write_text("def added():\n    return 'a new file lands in one bucket only'\n")
    after = buckets()
    assert [a - b for a, b in zip(after, before, strict=True)].count({"src/added.py"}) == 1
    assert all(b <= a and len(a - b) <= 1 for a, b in zip(after, before, strict=True))


def test_max_documents_and_globs_pick_the_first_files_by_path(tmp_path):
    repo = sample.write_repo_dir(tmp_path / "repo")
    rows, stats, _ = read_all(repo, include=["src/*"], exclude=["src/native/*"], max_documents=4)
    listed = sorted(p for p in sample.EXPECTED if p.startswith("src/") and not p.startswith("src/native/"))[:4]
    assert stats.records == 4
    assert set(by_path(rows)) == {p for p in listed if not sample.EXPECTED[p]}
    assert stats.skipped == collections.Counter(sample.EXPECTED[p] for p in listed if sample.EXPECTED[p])


def test_bad_files_binary_empty_giant(tmp_path):
    repo = tmp_path / "bad"
    repo.mkdir()
    (repo / "junk.txt").write_bytes(bytes((i * 7919) % 251 + 1 for i in range(4096)))  # no NUL, control bytes
    (repo / "nul.py").write_bytes(b"x = 1\n\x00\x00\x00")
    (repo / "empty.py").write_bytes(b"")
    (repo / "blank.py").write_bytes(b"\n   \n\t\n")
    (repo / "giant.py").write_bytes(b"y = 2\n" * 400_000)  # 2.4 MB
    (repo / "ok.py").write_text("print('fine')\n")
    rows, stats, _ = read_all(repo, max_document_bytes=100_000)
    assert [json.loads(r["meta"])["path"] for r in rows] == ["ok.py"]
    assert stats.skipped == {"binary": 2, "empty": 2, "too_large": 1}
    assert stats.bytes_read < 100_000  # the giant file was never read
    git_repo = tmp_path / "bad-git"
    shutil.copytree(repo, git_repo)
    sample.git(str(git_repo), "init", "-q")
    sample.git(str(git_repo), "add", "-A")
    sample.git(str(git_repo), "commit", "-q", "-m", "bad files")
    rows, git_stats, _ = read_all(git_repo, max_document_bytes=100_000)
    assert git_stats.skipped == stats.skipped and git_stats.bytes_read < 100_000


def test_missing_repository_and_not_a_repository(tmp_path):
    with pytest.raises(InputError, match="repository not found"):
        code.plan(source(tmp_path / "nowhere"), str(tmp_path / "nowhere"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a folder, an archive"):
        code.plan(source(tmp_path / "notes.txt"), str(tmp_path / "notes.txt"))
    with pytest.raises(InputError, match="not a git repository"):
        code.plan(source(tmp_path, ref="v1"), str(tmp_path))


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_truncated_archive_reads_what_it_can(tmp_path, suffix):
    whole = Path(sample.write_repo_archive(tmp_path / f"whole{suffix}")).read_bytes()
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(whole[: len(whole) // 2])
    rows, stats, _ = read_all(broken)
    docs = by_path(rows)
    assert 3 <= len(docs) < len(DOCUMENTS)
    assert stats.files_skipped == {"corrupt_archive": 1}  # once per archive, not once per bucket
    [err] = [e for e in stats.errors if e["reason"] == "corrupt_archive"]
    assert err["url"] == str(broken) and err["offset"] > 0
    tiny = tmp_path / f"tiny{suffix}"
    tiny.write_bytes(whole[:40])
    with pytest.raises(InputError, match=f"tiny{suffix}"):
        read_all(tiny)


def test_corrupt_member_in_zip(tmp_path):
    path = Path(sample.write_repo_archive(tmp_path / "r.zip"))
    data = bytearray(path.read_bytes())
    at = data.index(b"src/heapq.py") + len(b"src/heapq.py") + 200  # inside heapq.py's compressed bytes
    data[at:at + 64] = bytes(64)
    path.write_bytes(bytes(data))
    rows, stats, _ = read_all(path)
    assert "src/heapq.py" not in by_path(rows) and len(rows) == len(DOCUMENTS) - 1
    assert stats.skipped["corrupt"] == 1


def test_folder_of_repositories(tmp_path):
    top = tmp_path / "repos"
    top.mkdir()
    sample.write_repo_archive(top / "alpha.tar.gz")
    sample.write_git_repo(top / "beta")
    rows, _, parts = read_all(top)
    assert sorted({p.rel for p in parts}) == ["alpha", "beta"] and len(parts) == 4
    ids = collections.Counter(r["source_id"].split("/", 1)[0] for r in rows)
    assert ids == {"alpha": len(DOCUMENTS), "beta": len(DOCUMENTS)}


def test_s3_folder_and_archive(tmp_path, s3):
    local = by_path(read_all(sample.write_repo_dir(tmp_path / "repo"))[0])
    for rel, data in sample.repo_files().items():
        storage.write_bytes(f"{s3}/repo/{rel}", data)
    rows, stats, parts = read_all(f"{s3}/repo")
    docs = by_path(rows)
    assert {p: d["text"] for p, d in docs.items()} == {p: d["text"] for p, d in local.items()}
    assert stats.skipped == skip_counts() and parts[0].rel == "repo"
    assert docs["LICENSE"]["license"] == "MIT" and docs["LICENSE"]["url"] == f"{s3}/repo/LICENSE"
    archive = sample.write_repo_archive(tmp_path / "repo.tar.gz")
    storage.write_bytes(f"{s3}/arch/repo.tar.gz", Path(archive).read_bytes())
    docs = by_path(read_all(f"{s3}/arch/repo.tar.gz")[0])
    assert {p: d["text"] for p, d in docs.items()} == {p: d["text"] for p, d in local.items()}
    assert docs["README.md"]["url"] == f"{s3}/arch/repo.tar.gz#README.md"
    with pytest.raises(InputError, match="local disk only"):
        code.plan(source(f"{s3}/repo", ref="main"), f"{s3}/repo")
    storage.write_bytes(f"{s3}/cloned/.git/HEAD", b"ref: refs/heads/main\n")
    with pytest.raises(InputError, match="local disk only"):
        code.plan(source(f"{s3}/cloned"), f"{s3}/cloned")


def test_generated_markers_are_comments_not_prose():
    assert code.is_generated(b"// Code generated by protoc-gen-go. DO NOT EDIT.\npackage x\n")
    assert code.is_generated(b"# Generated by Django 4.2 on 2024-01-01\nfrom django.db import migrations\n")
    assert not code.is_generated(b'"""\n    A tree can be generated by passing a flag to compile().\n"""\n')


def test_pretrain_data_on_example_recipe(tmp_path, capsys):
    from pretrain.cli import main
    from pretrain.manifest import Manifest

    repo = sample.write_git_repo(tmp_path / "proj")
    run_root = tmp_path / "run"
    assert main(["data", str(RECIPE), f"sources.0.uri={repo}", f"run_root={run_root}"]) == 0
    tokens = Manifest.load(str(run_root / "tokens"))
    assert tokens.stats["train_documents"] + tokens.stats["val_documents"] >= len(DOCUMENTS) - 2
    assert tokens.stats["train_tokens"] > 1000
    manifests = sorted((run_root / "documents" / "code").glob("*.manifest.json"))
    assert len(manifests) == 2
    stats = [json.loads(m.read_text())["stats"] for m in manifests]
    for s in stats:
        assert s["records"] == s["documents"] + sum(s["skipped"].values())
    assert sum(s["records"] for s in stats) == len(sample.EXPECTED)
    assert sum(s["documents"] for s in stats) == len(DOCUMENTS)
