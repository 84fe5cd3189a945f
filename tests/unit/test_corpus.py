"""The quickstart corpus is built from the installed Python alone, and is the same every time."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pretrain.data import corpus


def digest(paths: list[str]) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def test_pydoc_warcs_are_deterministic_and_scrubbed(tmp_path):
    first = corpus.write_pydoc_warcs(str(tmp_path / "a"), pages=6, parts=2)
    second = corpus.write_pydoc_warcs(str(tmp_path / "b"), pages=6, parts=2)
    assert len(first) == 2 and digest(first) == digest(second)
    page = corpus.render_pydoc_page("json").decode()
    assert "json" in page and corpus.stdlib_dir() not in page
    assert " at 0x0" in page or " at 0x" not in page


def test_modules_that_cannot_import_are_skipped():
    assert corpus.render_pydoc_page("no_such_module_xyz") is None


def test_stdlib_source_is_a_folder_of_python_files():
    assert (Path(corpus.stdlib_dir()) / "json" / "decoder.py").is_file()
