"""The quickstart corpus is built from the installed Python alone, and is the same every time."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

from pretrain.data import corpus


def digest(paths: list[str]) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def test_pydoc_warcs_are_deterministic_and_scrubbed(tmp_path, monkeypatch):
    first = corpus.write_pydoc_warcs(str(tmp_path / "a"), pages=6, parts=2)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2-secret")  # module data such as os.environ is on pages
    monkeypatch.chdir(tmp_path)
    second = corpus.write_pydoc_warcs(str(tmp_path / "b"), pages=6, parts=2)
    assert len(first) == 2 and digest(first) == digest(second)
    pages = corpus.render_pages(["os", "threading", "ftplib", "json", "site", "sysconfig", "importlib"])
    assert all(pages.values())
    text = b"".join(pages.values()).decode()
    assert "hunter2" not in text and "AWS_SECRET" not in text
    machine = [corpus.stdlib_dir(), sys.executable, sys.base_prefix, str(Path(__file__).parents[2]), str(tmp_path)]
    assert not [p for p in machine if p in text]
    assert not re.search(r"at(\s|&nbsp;)0x(?!0\b)[0-9a-f]+", text)  # object addresses are zeroed
    assert pages == corpus.render_pages(["os", "threading", "ftplib", "json", "site", "sysconfig", "importlib"])


def test_modules_that_cannot_import_are_skipped():
    assert corpus.render_pydoc_page("no_such_module_xyz") is None


def test_stdlib_source_is_a_folder_of_python_files():
    assert (Path(corpus.stdlib_dir()) / "json" / "decoder.py").is_file()
