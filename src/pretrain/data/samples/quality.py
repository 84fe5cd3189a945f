"""A labelled corpus for cleaning and dedup: real pages and code, planted junk, planted copies.

Real content comes from the installed Python: pydoc pages of standard-library modules and the
language reference (``pydoc_data.topics``) as web pages in a site template, and standard-library
``.py`` files as a code repository. Planted junk: gibberish, boilerplate-only pages, link farms,
repetition, short pages, minified code. Planted copies: exact copies, near copies with word edits,
a truncated tail, another site's template, and code with renamed identifiers.

``write_quality_corpus(root)`` writes ``root/web/crawl.warc.gz`` and ``root/code/`` and returns the
labels: the key of a web document is its URL, of a code document ``<repo>/<path>`` (its source_id).
"""

from __future__ import annotations

import html
import io
import json
import random
import re
import string
import sysconfig
import uuid
from pathlib import Path
from typing import Any

from pretrain.data.samples.web import page_html, reference_sections

SITE = "https://docs.example.org"
MIRROR = "https://mirror.example.net"


def _template_b(title: str, paragraphs: list[str]) -> str:
    """The same article as another site renders it: other menus, another footer."""
    menu = "".join(f'<li><a href="/c/{i}">Category {i}</a></li>' for i in range(9))
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)} - Mirror</title></head>"
            f'<body><div id="top"><nav><ul>{menu}</ul></nav></div><div class="wrap"><div class="post">'
            f"<h2>{html.escape(title)}</h2>{body}</div>"
            '<div class="sidebar-widgets">Popular posts this week and our newsletter sign-up</div></div>'
            '<footer class="footer">Mirror site. Content reproduced for archival purposes.</footer></body></html>')


def _edit_words(text: str, rng: random.Random, share: float) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(len(words) * share))):
        words[i] = rng.choice(["data", "value", "object", "module", "result", "system", "method", "number"])
    return " ".join(words)


def _gibberish(rng: random.Random, words: int = 400) -> list[str]:
    text = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 11)))
                    for _ in range(words))
    return [text[i:i + 400] for i in range(0, len(text), 400)]


def _link_farm(rng: random.Random) -> str:
    keywords = ["cheap", "best", "buy", "online", "discount", "free", "casino", "loans", "pills", "deals", "top", "now"]
    links = "".join(f'<li><a href="https://spam{rng.randint(0, 999)}.example.com/">'
                    f'{" ".join(rng.choice(keywords) for _ in range(3))}</a></li>' for _ in range(150))
    return ("<html><head><title>Best deals</title></head><body><main><h1>Best deals</h1>"
            f"<ul>{links}</ul></main></body></html>")


def _web_pages(rng: random.Random, real_pydoc: int, real_reference: int, junk_each: int,
               copies_each: int) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    from pretrain.data import corpus

    labels: dict[str, Any] = {"real": {}, "junk": {}, "copies": {}}
    pages: list[tuple[str, bytes]] = []
    rendered = corpus.render_pages(list(corpus.PYDOC_MODULES[:real_pydoc]))
    pydoc = [(corpus.page_url(name), body) for name, body in rendered.items() if body is not None]
    for url, body in pydoc:
        pages.append((url, body))
        labels["real"][url] = "web"
    # every reference section of at least 50 words (Gopher's minimum: shorter is a "short page"), however few
    # sentences it has: two sentences and a grammar rule make a real page
    sections = [(t, ps[:12]) for t, ps in reference_sections() if sum(len(p.split()) for p in ps[:12]) >= 50]
    sections = sections[:real_reference]
    for i, (title, paragraphs) in enumerate(sections):
        url = f"{SITE}/reference/{i}.html"
        pages.append((url, page_html(i, title, paragraphs).encode()))
        labels["real"][url] = "web"
    # planted copies: exact, word edits, truncated tail, another template
    for i in range(copies_each):
        url, body = pydoc[i]
        copy = f"{MIRROR}/exact/{i}.html"
        pages.append((copy, body))
        labels["copies"][copy] = {"of": url, "kind": "exact"}
    for kind in ("word_edits", "truncated", "template"):
        for j in range(copies_each):
            i = (j * 3 + ("word_edits", "truncated", "template").index(kind)) % len(sections)
            title, paragraphs = sections[i]
            if kind == "word_edits":
                page = page_html(i, title, [_edit_words(p, rng, 0.05) for p in paragraphs])
            elif kind == "truncated":
                text = " ".join(paragraphs)
                page = page_html(i, title, [text[: int(len(text) * 0.9)]])
            else:
                page = _template_b(title, paragraphs)
            copy = f"{MIRROR}/{kind}/{i}.html"
            pages.append((copy, page.encode()))
            labels["copies"][copy] = {"of": f"{SITE}/reference/{i}.html", "kind": kind}
    # planted junk
    for j in range(junk_each):
        junk = {
            "gibberish": page_html(1000 + j, "Lorem", _gibberish(rng)),
            "boilerplate": page_html(2000 + j, "Home", []),
            "link_farm": _link_farm(rng),
            "repetition": page_html(3000 + j, "Watches", ["Buy cheap watches online today. " * 8] * 30),
            "short": page_html(4000 + j, "Coming soon", ["Coming soon."]),
        }
        for kind, page in junk.items():
            url = f"https://junk.example.com/{kind}/{j}.html"
            pages.append((url, page.encode()))
            labels["junk"][url] = kind
    return pages, labels


def _write_warc(path: Path, pages: list[tuple[str, bytes]], rng: random.Random) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    order = list(range(len(pages)))
    rng.shuffle(order)  # copies and originals spread over the file, as in a crawl
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for i in order:
        url, body = pages[i]
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(
            url, "response", payload=io.BytesIO(body), http_headers=headers,
            warc_headers_dict={"WARC-Date": "2024-03-01T12:00:00Z",
                               "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"}))
    path.write_bytes(buffer.getvalue())


def _rename_identifiers(source: str) -> str:
    """The same module with its own function and class names renamed, as a fork would."""
    names = sorted(set(re.findall(r"^(?:def|class) ([A-Za-z_]\w*)", source, re.M)), key=len, reverse=True)
    for n, name in enumerate(names):
        source = re.sub(rf"\b{re.escape(name)}\b", f"renamed_{n}_{name[::-1].strip('_')}", source)
    return source


def _minified(rng: random.Random) -> str:
    parts = [f"function {rng.choice('abcdefgh')}{i}(t,e){{return t.{rng.choice(['map', 'filter'])}"
             f"(function(n){{return n*e+{i}}})}}" for i in range(400)]
    return "!function(){" + ";".join(parts) + "}();"


def _code_files(rng: random.Random, real: int, junk_each: int, copies_each: int, repo: str) -> tuple[dict, dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = sorted(p for p in stdlib.glob("*.py") if 3_000 < p.stat().st_size < 60_000)
    chosen = candidates[:real]
    files: dict[str, bytes] = {}
    labels: dict[str, Any] = {"real": {}, "junk": {}, "copies": {}}
    for p in chosen:
        files[f"lib/{p.name}"] = p.read_bytes()
        labels["real"][f"{repo}/lib/{p.name}"] = "code"
    for i in range(copies_each):
        p = chosen[i]
        files[f"vendored_copy/{p.name}"] = p.read_bytes()  # not a vendor/ folder: the reader must not skip it
        labels["copies"][f"{repo}/vendored_copy/{p.name}"] = {"of": f"{repo}/lib/{p.name}", "kind": "exact"}
        q = chosen[-1 - i]
        files[f"fork/{q.name}"] = _rename_identifiers(q.read_text(encoding="utf-8")).encode()
        labels["copies"][f"{repo}/fork/{q.name}"] = {"of": f"{repo}/lib/{q.name}", "kind": "renamed"}
    for j in range(junk_each):
        files[f"static/bundle{j}.js"] = _minified(rng).encode()
        labels["junk"][f"{repo}/static/bundle{j}.js"] = "minified"
    return files, labels


def write_quality_corpus(root: str | Path, *, real_pydoc: int = 40, real_reference: int = 80, real_code: int = 40,
                         junk_each: int = 6, copies_each: int = 6, seed: int = 0) -> dict[str, Any]:
    """Write the corpus under ``root`` (web/crawl.warc.gz, code/) and return its labels (also in labels.json)."""
    root = Path(root)
    rng = random.Random(seed)
    pages, labels = _web_pages(rng, real_pydoc, real_reference, junk_each, copies_each)
    _write_warc(root / "web" / "crawl.warc.gz", pages, rng)
    files, code_labels = _code_files(rng, real_code, junk_each, copies_each, repo="code")
    for rel, data in files.items():
        (root / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "code" / rel).write_bytes(data)
    for key in labels:
        labels[key].update(code_labels[key])
    (root / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
    return labels


def score(labels: dict[str, Any], surviving: set[str], after_filters: set[str]) -> dict[str, Any]:
    """Share of junk removed, of copies resolved (the copy or its original gone), of real content kept.

    A real document's content is kept when the filters keep it: dedup then either keeps it or keeps
    the representative of its cluster. Real documents that dedup merged into another *real* document
    (not a planted copy) are natural near copies of the sources themselves: reported apart, with their
    keys, not counted as losses (nor as planted copies found).
    """
    junk, copies, real = labels["junk"], labels["copies"], labels["real"]
    removed = sum(1 for key in junk if key not in surviving) / max(1, len(junk))
    resolved = sum(1 for key, c in copies.items() if key not in surviving or c["of"] not in surviving) / max(
        1, len(copies))
    planted = {c["of"] for c in copies.values()}
    natural = sorted(k for k in real if k in after_filters and k not in surviving and k not in planted)
    return {"junk_removed": removed, "copies_resolved": resolved,
            "real_kept": sum(1 for k in real if k in after_filters) / max(1, len(real)),
            "natural_near_copies": natural}
