"""Real text from the installed Python for benchmarks and tests: pydoc pages, stdlib sources, pieces of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_PYDOC_TEXT = """
import contextlib, io, json, pydoc, sys, warnings
from pretrain.data.corpus import PYDOC_MODULES, _scrub
out = []
for name in PYDOC_MODULES:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            out.append(_scrub(pydoc.render_doc(name, renderer=pydoc.plaintext)))
        except Exception:
            pass
sys.stdout.write(json.dumps(out))
"""


def pydoc_pages() -> list[str]:
    """Plain-text pydoc pages of the quickstart's stdlib modules, rendered in a clean interpreter (importing
    every module here would leave threads and state behind). Raises with the interpreter's error if it fails."""
    import pretrain
    from pretrain.data.corpus import CLEAN_ENV

    src = str(Path(pretrain.__file__).resolve().parents[1])
    env = dict(CLEAN_ENV, PYTHONPATH=os.pathsep.join([src, *sys.path[1:]]))
    proc = subprocess.run([sys.executable, "-c", _PYDOC_TEXT], env=env, cwd="/", capture_output=True, timeout=600,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"rendering pydoc pages failed: {proc.stderr.decode(errors='replace')[-500:]}")
    return json.loads(proc.stdout)


def chunks(text: str, size: int, minimum: int) -> list[str]:
    """Pieces of about ``size`` characters cut at line ends; pieces under ``minimum`` are left out."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        if end - start >= minimum:
            out.append(text[start:end])
        start = end
    return out


def stdlib_sources() -> list[str]:
    """Every stdlib ``.py`` file (subpackages too; not tests, not site-packages), sorted by path."""
    lib = Path(os.path.dirname(os.__file__))
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    out = []
    for path in sorted(lib.rglob("*.py")):
        if skip & set(path.relative_to(lib).parts):
            continue
        try:
            out.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    return out
