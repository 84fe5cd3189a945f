"""The quickstart corpus, built from what any machine with Python has.

``builtin:stdlib`` is the standard library's source folder, read as a code repository.
``builtin:pydoc`` is pydoc's HTML pages of standard-library modules, packed into WARC files as if
crawled from the web. Both are deterministic for a given Python version: pages are rendered with
machine paths and object addresses scrubbed, and WARC headers carry fixed dates and name-based ids.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pydoc
import re
import subprocess
import sys
import sysconfig
import uuid
import warnings

from pretrain import storage

# Pure-Python modules that import without side effects (no GUI, no network, no printing).
PYDOC_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmath", "cmd",
    "codecs", "codeop", "collections", "collections.abc", "colorsys", "compileall", "concurrent.futures",
    "configparser", "contextlib", "contextvars", "copy", "copyreg", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "doctest", "email", "email.message", "email.parser", "email.utils",
    "enum", "errno", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gc",
    "getopt", "getpass", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html",
    "html.parser", "http", "http.client", "http.cookies", "http.server", "imaplib", "importlib",
    "importlib.metadata", "importlib.resources", "inspect", "io", "ipaddress", "itertools", "json",
    "keyword", "linecache", "locale", "logging", "logging.handlers", "lzma", "mailbox", "marshal",
    "math", "mimetypes", "mmap", "modulefinder", "multiprocessing", "netrc", "numbers", "operator",
    "optparse", "os", "os.path", "pathlib", "pickle", "pickletools", "pkgutil", "platform", "plistlib",
    "poplib", "pprint", "profile", "pstats", "py_compile", "pyclbr", "queue", "quopri", "random", "re",
    "reprlib", "runpy", "sched", "secrets", "select", "selectors", "shelve", "shlex", "shutil", "signal",
    "site", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string",
    "stringprep", "struct", "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "time", "timeit", "token", "tokenize", "tomllib", "trace",
    "traceback", "tracemalloc", "types", "typing", "unicodedata", "unittest", "unittest.mock",
    "urllib", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml",
    "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax", "xmlrpc.client", "zipapp", "zipfile",
    "zipimport", "zlib", "zoneinfo",
)
WARC_DATE = "2024-01-01T00:00:00Z"
_ADDRESS = re.compile(r"\bat(\s|&nbsp;)0x[0-9a-fA-F]+")
# The renderer's whole environment: module data such as os.environ is part of the pages, so it must
# hold nothing of this machine's (no credentials) and be the same everywhere.
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent", "TZ": "UTC", "PYTHONHASHSEED": "0"}


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _scrub(page: str) -> str:
    """Replace what differs between machines and runs: install paths, object addresses."""
    generic = "/usr/bin/python3"
    for path, replacement in ((stdlib_dir(), f"/usr/lib/python{python_version()}"), (sys.executable, generic),
                              (sys.prefix, "/usr"), (sys.base_prefix, "/usr"), (sys.exec_prefix, "/usr")):
        page = page.replace(path, replacement)
    return _ADDRESS.sub(lambda m: f"at{m.group(1)}0x0", page)


def render_pydoc_page(module_name: str) -> bytes | None:
    """One module's pydoc HTML page, scrubbed of machine-specific text; None if it cannot import.

    Call it in a process started by ``render_pages`` (clean environment): pages show module data.
    """
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(module_name)
            page = pydoc.html.page(pydoc.describe(module), pydoc.html.document(module, module_name))
        except Exception:
            return None
    return _scrub(page).encode("utf-8")


def render_pages(modules: list[str]) -> dict[str, bytes | None]:
    """Render pages in a fresh interpreter with a fixed, empty environment (see ``CLEAN_ENV``)."""
    env = dict(CLEAN_ENV)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep))
    code = "import sys; from pretrain.data.corpus import render_main; render_main(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, *modules], env=env, cwd="/",
                          capture_output=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"rendering pydoc pages failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    pages = json.loads(proc.stdout)
    return {name: None if html is None else html.encode("utf-8") for name, html in pages.items()}


def page_url(module_name: str) -> str:
    return f"https://docs.python.org/{python_version()}/library/{module_name}.html"


def write_pydoc_warcs(out_dir: str, pages: int, parts: int) -> list[str]:
    """Render up to ``pages`` module pages into ``parts`` gzipped WARC files; return their URLs.

    Built once: a ``.built.json`` marker (hidden from listings), written last, names what the folder holds.
    """
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from pretrain.config import code_version

    marker = storage.join(out_dir, ".built.json")
    wanted = {"pages": pages, "parts": parts, "python": python_version(), "code": code_version()}
    try:
        built = storage.read_json(marker)
    except (FileNotFoundError, ValueError):
        built = None
    if built and built.get("spec") == wanted:
        return built["files"]
    modules = list(PYDOC_MODULES[:pages])
    rendered = render_pages(modules)
    urls = []
    for part in range(parts):
        url = storage.join(out_dir, f"pydoc-{part:05d}.warc.gz")
        with storage.atomic_path(url) as tmp, open(tmp, "wb") as f:
            writer = WARCWriter(f, gzip=True)
            for name in modules[part::parts]:
                body = rendered[name]
                if body is None:
                    continue
                target = page_url(name)
                http_headers = StatusAndHeaders(
                    "200 OK",
                    [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
                    protocol="HTTP/1.1",
                )
                record = writer.create_warc_record(
                    target, "response", payload=io.BytesIO(body), http_headers=http_headers,
                    warc_headers_dict={
                        "WARC-Date": WARC_DATE,
                        "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, target)}>",
                    },
                )
                writer.write_record(record)
        urls.append(url)
    storage.write_json(marker, {"spec": wanted, "files": urls})
    return urls


def render_main(modules: list[str]) -> None:
    """The clean renderer process of ``render_pages``: JSON of {module: page or null} on stdout."""
    out = {}
    for name in modules:
        page = render_pydoc_page(name)
        out[name] = None if page is None else page.decode("utf-8")
    sys.stdout.write(json.dumps(out))
