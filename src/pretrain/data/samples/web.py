"""Web crawl samples: WARC and WET files of labelled pages, plus the junk a real crawl carries.

Each page wraps known main text (paragraphs of the Python language reference that ships with
CPython in ``pydoc_data.topics``) in the boilerplate real sites have: a navigation menu, a header,
a sidebar of links, a cookie banner and a footer. The main text is returned as the page's label, so
extractors can be scored on how much of it they recover.
"""

from __future__ import annotations

import html
import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

WARC_DATE = "2024-03-01T12:00:00Z"
_RULE = re.compile(r"^[*=~^-]{3,}$")


def reference_sections() -> list[tuple[str, list[str]]]:
    """(title, paragraphs) of each section of the language reference, in a fixed order."""
    from pydoc_data.topics import topics

    sections = []
    for key in sorted(topics):
        lines = topics[key].splitlines()
        title = lines[0].strip() if lines else key
        paragraphs, current = [], []
        for line in lines[1:]:
            if _RULE.match(line.strip()):
                continue
            if line.strip():
                current.append(line.strip())
            elif current:
                paragraphs.append(" ".join(" ".join(current).split()))  # as a browser shows it
                current = []
        if current:
            paragraphs.append(" ".join(" ".join(current).split()))
        paragraphs = [p for p in paragraphs if len(p.split()) >= 8]
        if paragraphs:
            sections.append((title, paragraphs))
    return sections


def page_html(index: int, title: str, paragraphs: list[str], charset: str | None = "utf-8") -> str:
    """A page as a real site renders it: the main article inside menus, sidebars and a footer."""
    nav = "".join(f'<li><a href="/section/{i}">Section {i} overview</a></li>' for i in range(12))
    side = "".join(f'<li><a href="/related/{index}/{i}">Related reading number {i}</a></li>' for i in range(8))
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    meta = f'<meta charset="{charset}">' if charset else ""
    return (
        f"<!DOCTYPE html><html lang=\"en\"><head>{meta}<title>{html.escape(title)} | Example Docs</title>"
        "<style>body{font-family:sans-serif}.nav li{display:inline}</style>"
        "<script>window.analytics = {track: function(){}};</script></head><body>"
        f'<header><div class="logo">Example Docs</div><nav class="nav"><ul>{nav}</ul></nav></header>'
        '<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies?</div>'
        f'<div class="layout"><aside class="sidebar"><h3>Related</h3><ul>{side}</ul></aside>'
        f'<main><article><h1>{html.escape(title)}</h1>{body}</article></main></div>'
        '<footer><p>Copyright 2024 Example Docs. All rights reserved.</p>'
        '<ul><li><a href="/privacy">Privacy policy</a></li><li><a href="/terms">Terms of use</a></li></ul>'
        "</footer></body></html>"
    )


def labelled_pages(count: int, start: int = 0) -> Iterator[tuple[str, str, str]]:
    """(url, html, main text) for ``count`` pages; sections repeat with a page number beyond 79."""
    sections = reference_sections()
    for i in range(start, start + count):
        title, paragraphs = sections[i % len(sections)]
        if i >= len(sections):
            title = f"{title} (copy {i // len(sections)})"
        paragraphs = paragraphs[:12]
        yield f"https://docs.example.org/reference/{i}.html", page_html(i, title, paragraphs), "\n".join(
            [title, *paragraphs])


def _record_id(url: str, kind: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, kind + ':' + url)}>"


def _response(writer, url: str, body: bytes, content_type: str, status: str = "200 OK"):
    from warcio.statusandheaders import StatusAndHeaders

    headers = StatusAndHeaders(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))],
                               protocol="HTTP/1.1")
    return writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers,
                                     warc_headers_dict={"WARC-Date": WARC_DATE,
                                                        "WARC-Record-ID": _record_id(url, "response")})


def junk_records() -> list[tuple[str, bytes, str, str]]:
    """(url, body, content type, status) of what a crawl holds besides pages: they must be skipped."""
    return [
        ("https://docs.example.org/static/site.css", b"body{color:#333}\n" * 40, "text/css", "200 OK"),
        ("https://docs.example.org/static/app.js", b"function f(){return 1}\n" * 40, "application/javascript",
         "200 OK"),
        ("https://docs.example.org/api/search.json", b'{"results": [1, 2, 3]}', "application/json", "200 OK"),
        ("https://docs.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png", "200 OK"),
        ("https://docs.example.org/manual.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
         "application/pdf", "200 OK"),
        ("https://docs.example.org/missing.html", b"<html><body><h1>Not found</h1></body></html>",
         "text/html; charset=utf-8", "404 Not Found"),
    ]


def charset_pages() -> list[tuple[str, bytes, str, str]]:
    """(url, body, content type, expected phrase): pages whose charset a reader must get right."""
    phrase = "Café crème, naïve façade, Ærøskøbing and Straße"
    text = f"<p>{phrase}. " + "The menu lists every dish with its price and a short description. " * 6 + "</p>"
    declared_wrong = f'<html><head><meta charset="iso-8859-1"></head><body><main>{text}</main></body></html>'
    latin1 = f"<html><head><title>Latin-1</title></head><body><main>{text}</main></body></html>"
    broken = f"<html><head></head><body><main>{text}</main></body></html>".encode().replace(
        b"dish", b"di\xffsh", 1)
    return [
        ("https://menu.example.org/utf8-declared-latin1.html", declared_wrong.encode("utf-8"), "text/html", phrase),
        ("https://menu.example.org/latin1.html", latin1.encode("latin-1"), "text/html; charset=ISO-8859-1",
         phrase),
        ("https://menu.example.org/utf8-bad-byte.html", broken, "text/html; charset=utf-8", phrase),
    ]


def write_warc(path: str | Path, pages: int, *, junk: bool = True, compress: str | None = "gzip",
               start: int = 0) -> dict[str, str]:
    """A WARC file of ``pages`` labelled pages (plus junk and charset cases); returns {url: main text}.

    ``compress``: ``gzip`` (one member per record, as Common Crawl ships), ``None`` (plain), or
    ``zstd``/``bz2``/``xz`` (one stream for the whole file).
    """
    from warcio.warcwriter import WARCWriter

    labels: dict[str, str] = {}
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=compress == "gzip")
    writer.write_record(writer.create_warcinfo_record("sample.warc", {"software": "pretrain samples"}))
    extras = iter(junk_records() + [(u, b, t, "200 OK") for u, b, t, _ in charset_pages()]) if junk else iter(())
    for n, (url, page, main) in enumerate(labelled_pages(pages, start)):
        writer.write_record(writer.create_warc_record(
            url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\nHost: docs.example.org\r\n\r\n"),
            warc_headers_dict={"WARC-Date": WARC_DATE, "WARC-Record-ID": _record_id(url, "request")}))
        writer.write_record(_response(writer, url, page.encode("utf-8"), "text/html; charset=utf-8"))
        labels[url] = main
        if n % 3 == 0 and (extra := next(extras, None)):
            writer.write_record(_response(writer, extra[0], extra[1], extra[2], extra[3]))
    for url, body, ctype, status in extras:
        writer.write_record(_response(writer, url, body, ctype, status))
    _write_compressed(Path(path), buffer.getvalue(), compress)
    return labels


def write_wet(path: str | Path, pages: int, *, compress: str | None = "gzip", start: int = 0) -> dict[str, str]:
    """A WET file (``conversion`` records of the pages' text, as Common Crawl ships); {url: text}."""
    from warcio.warcwriter import WARCWriter

    labels: dict[str, str] = {}
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=compress == "gzip")
    writer.write_record(writer.create_warcinfo_record("sample.warc.wet", {"software": "pretrain samples"}))
    for url, _page, main in labelled_pages(pages, start):
        record = writer.create_warc_record(
            url, "conversion", payload=io.BytesIO(main.encode("utf-8")),
            warc_headers_dict={"WARC-Date": WARC_DATE, "WARC-Record-ID": _record_id(url, "conversion"),
                               "WARC-Refers-To": _record_id(url, "response"), "Content-Type": "text/plain",
                               "WARC-Identified-Content-Language": "eng"})
        writer.write_record(record)
        labels[url] = main
    _write_compressed(Path(path), buffer.getvalue(), compress)
    return labels


def _write_compressed(path: Path, data: bytes, compress: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress in (None, "gzip"):
        path.write_bytes(data)
    elif compress == "zstd":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    elif compress == "bz2":
        import bz2

        path.write_bytes(bz2.compress(data))
    elif compress == "xz":
        import lzma

        path.write_bytes(lzma.compress(data))
    else:
        raise ValueError(f"unknown compression {compress!r}")
