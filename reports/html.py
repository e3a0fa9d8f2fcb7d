"""HTML pieces of the static report: one page template, escaped tables, figures and notes.

Every string that can come from a user or a plugin (problem, optimizer and hyperparameter names,
error messages, environment values) passes through :func:`escape`; the markup around it is
fixed. Styles are inline, there are no scripts, and every link is relative, so the site opens
offline and can be published as it is.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from string import Template

import pandas as pd

from curvebench.formatting import format_number

__all__ = ["escape", "page", "table", "figure", "missing", "section", "link", "paragraph",
           "download", "contents", "notes"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #fff; line-height: 1.45; }
header { background: #243b55; color: #fff; padding: 0.8rem 1.5rem; }
header a { color: #cfe3ff; }
header h1 { margin: 0; font-size: 1.35rem; }
nav { font-size: 0.9rem; margin-top: 0.3rem; }
nav a { margin-right: 0.9rem; }
main { padding: 0.5rem 1.5rem 2rem; max-width: 1400px; }
h2 { border-bottom: 1px solid #d5dbe5; padding-bottom: 0.2rem; margin-top: 1.8rem; }
h3 { margin-bottom: 0.3rem; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 0.4rem 0 0.6rem; }
th, td { border: 1px solid #d5dbe5; padding: 0.2rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #eef2f7; }
tbody tr:nth-child(even) { background: #f8fafc; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: 0.6rem 0 1rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e7ee; }
figcaption { font-size: 0.85rem; color: #4a5568; max-width: 70rem; }
.missing { background: #fff7e0; border-left: 4px solid #e0a800; padding: 0.4rem 0.7rem;
           max-width: 70rem; }
.lead { font-size: 1.02rem; max-width: 70rem; }
.diagnostics { background: #fdf0ef; border-left: 4px solid #c0392b; padding: 0.4rem 0.7rem;
               max-width: 70rem; font-size: 0.88rem; }
.diagnostics ul { margin: 0.3rem 0 0; padding-left: 1.2rem; }
.note { font-size: 0.88rem; color: #4a5568; max-width: 70rem; }
code { background: #f1f3f6; padding: 0 0.2rem; }
footer { font-size: 0.8rem; color: #6b7280; padding: 1rem 1.5rem; border-top: 1px solid #e3e7ee; }
"""

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$css</style>
</head>
<body>
<header><h1>$heading</h1><nav>$nav</nav></header>
<main>
$body
</main>
<footer>$footer</footer>
</body>
</html>
""")


#: Bidirectional formatting characters: they can reorder what a browser shows (a name that
#: reads as another one), so they are shown as visible ``[U+202E]`` marks instead.
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape(value: object) -> str:
    """HTML-escape any value as text (quotes included); bidi controls become visible marks."""
    text = _BIDI_CONTROLS.sub(lambda m: f"[U+{ord(m.group()):04X}]", str(value))
    return html.escape(text, quote=True)


def link(href: str, text: object) -> str:
    """A relative link; ``href`` is built by the report (file names are sanitised)."""
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def page(*, title: str, heading: str, nav: Sequence[tuple[str, str]], body: str,
         footer: str) -> str:
    """A complete HTML document; ``title``, ``heading`` and ``footer`` are plain text."""
    return _PAGE.substitute(
        title=escape(title), heading=escape(heading), css=_CSS,
        nav=" ".join(link(href, text) for href, text in nav), body=body,
        footer=escape(footer))


def table(frame: pd.DataFrame, *, links: dict[int, str] | None = None, max_rows: int = 500,
          csv: str | None = None) -> str:
    """An HTML table of ``frame`` (all cells escaped); ``links`` maps a row position to an
    href for its first cell; ``csv`` adds a download link under the table."""
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    rows = []
    for position, values in enumerate(frame.itertuples(index=False)):
        if position >= max_rows:
            break
        cells = [escape(format_number(v)) for v in values]
        if links and position in links and cells:
            cells[0] = f'<a href="{escape(links[position])}">{cells[0]}</a>'
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    extra = ""
    if len(frame) > max_rows:
        extra = f'<p class="note">First {max_rows} of {len(frame)} rows shown.</p>'
    numbers = download("Numbers", csv) if csv else ""
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>{extra}{numbers}')


def figure(*, src: str, alt: str, caption: str, csv: Sequence[str] = ()) -> str:
    """An image with a caption and links to the CSV files with its numbers."""
    links = ", ".join(link(href, href.rsplit("/", 1)[-1]) for href in csv)
    numbers = f" Numbers: {links}." if links else ""
    return (f'<figure><img src="{escape(src)}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}{numbers}</figcaption></figure>")


def missing(text: str) -> str:
    """A visible note that some data is missing, and what."""
    return f'<p class="missing">{escape(text)}</p>'


def section(title: str, *parts: str, anchor: str | None = None) -> str:
    """A titled section (``title`` is text; ``parts`` are HTML built by this module)."""
    attribute = f' id="{escape(anchor)}"' if anchor else ""
    return f"<section{attribute}><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def paragraph(text: str, *, css: str = "note") -> str:
    """A paragraph of plain text."""
    return f'<p class="{escape(css)}">{escape(text)}</p>'


def download(text: str, href: str) -> str:
    """``<p>text: <a href>file name</a></p>`` for a data file of the site."""
    return f'<p class="note">{escape(text)}: {link(href, href.rsplit("/", 1)[-1])}</p>'


def contents(sections: Sequence[tuple[str, str]]) -> str:
    """An in-page table of contents: ``(anchor, title)`` pairs."""
    items = " · ".join(f'<a href="#{escape(anchor)}">{escape(title)}</a>'
                       for anchor, title in sections)
    return f'<p class="note">On this page: {items}</p>'


def notes(title: str, items: Sequence[str]) -> str:
    """A highlighted diagnostics note: a plain-text title over a list of plain-text items."""
    listed = "".join(f"<li>{escape(item)}</li>" for item in items)
    return f'<div class="diagnostics"><strong>{escape(title)}</strong><ul>{listed}</ul></div>'
