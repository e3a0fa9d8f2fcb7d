"""A copy of asv's HTML that works without a network.

asv's ``index.html`` loads jQuery, Flot and its plugins, a table sorter, an MD5 function and
Bootstrap from public CDNs; offline it shows only its error page. :func:`copy_offline` copies
the asv output and rewrites every such ``<script>`` and stylesheet ``<link>`` to the copies
vendored in ``asv_assets/`` (unmodified files from npm packages, listed with their licenses in
``asv_assets/README.md``), and turns remaining outbound ``<a href>`` links into plain text, so
no ``http(s)`` URL is left in the copied pages. A script or stylesheet with no vendored copy
(a newer asv naming other versions) is reported, not guessed: the caller then leaves asv out.

asv's pages read their data (``index.json``, ``graphs/``) with requests that browsers refuse
to pages opened from ``file://``; served by any local web server they work.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ASSETS", "VENDORED", "VENDOR_FOLDER", "OfflineCopy", "copy_offline",
           "external_urls"]

#: The vendored files, next to this module.
ASSETS = Path(__file__).resolve().parent / "asv_assets"
#: Where the vendored files go inside the copied asv folder.
VENDOR_FOLDER = "vendor"
#: File name at the end of a CDN URL -> vendored file (relative to :data:`ASSETS`).
VENDORED: dict[str, str] = {
    "jquery-3.3.1.min.js": "jquery.min.js",
    "jquery.flot.min.js": "jquery.flot.js",
    "jquery.flot.time.min.js": "jquery.flot.time.js",
    "jquery.flot.selection.min.js": "jquery.flot.selection.js",
    "jquery.flot.categories.min.js": "jquery.flot.categories.js",
    "jquery.flot.orderBars.js": "jquery.flot.orderBars.js",
    "stupidtable.min.js": "stupidtable.min.js",
    "md5.min.js": "md5.js",
    "bootstrap.min.js": "bootstrap.min.js",
    "bootstrap.min.css": "css/bootstrap.min.css",
}

_REMOTE = r"""(?:https?:)?//[^"'\s>]+"""
_SCRIPT = re.compile(rf"""<script\b[^>]*?\bsrc\s*=\s*["']({_REMOTE})["'][^>]*>""", re.I)
_STYLESHEET = re.compile(rf"""<link\b[^>]*?\bhref\s*=\s*["']({_REMOTE})["'][^>]*>""", re.I)
_ANCHOR = re.compile(rf"""(<a\b[^>]*?)\s+href\s*=\s*["']{_REMOTE}["']""", re.I)
_URL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^"'\s<>]*""", re.I)


@dataclass(frozen=True)
class OfflineCopy:
    """What :func:`copy_offline` did.

    Attributes:
        target: the copied folder.
        replaced: CDN URLs now served from the vendored files.
        unresolved: ``page: URL`` of scripts or stylesheets with no vendored copy (the copy is
            not offline when this is not empty).
    """

    target: Path
    replaced: tuple[str, ...]
    unresolved: tuple[str, ...]


def external_urls(text: str) -> list[str]:
    """The ``http(s)://`` and protocol-relative URLs in an HTML page's markup."""
    return _URL.findall(text)


def copy_offline(source: Path, target: Path) -> OfflineCopy:
    """Copy asv's HTML output ``source`` to ``target`` (replaced if present) with its CDN
    scripts and stylesheets pointed at the vendored copies.

    Args:
        source: asv's HTML folder (with ``index.html``).
        target: the folder to create.

    Returns:
        The URLs replaced and those that could not be (see :class:`OfflineCopy`).
    """
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    vendor = target / VENDOR_FOLDER
    needed: set[str] = set()
    replaced, unresolved = [], []
    for page in sorted(target.rglob("*.html")):
        prefix = Path(os.path.relpath(vendor, page.parent)).as_posix()

        def local(match: re.Match[str], *, stylesheet: bool, page: Path = page,
                  prefix: str = prefix) -> str:
            url = match.group(1)
            name = VENDORED.get(url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
            if name is None:
                unresolved.append(f"{page.relative_to(target).as_posix()}: {url}")
                return match.group(0)
            needed.add(name)
            replaced.append(url)
            if stylesheet:
                return f'<link rel="stylesheet" href="{prefix}/{name}">'
            return f'<script src="{prefix}/{name}">'

        text = page.read_text(encoding="utf-8")
        text = _SCRIPT.sub(lambda m: local(m, stylesheet=False), text)
        text = _STYLESHEET.sub(lambda m: local(m, stylesheet=True), text)
        text = _ANCHOR.sub(r"\1", text)  # outbound links become plain text
        page.write_text(text, encoding="utf-8")
    if needed:
        for name in sorted(needed):
            (vendor / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ASSETS / name, vendor / name)
        if "css/bootstrap.min.css" in needed:  # its glyph fonts, at ../fonts/ from the css
            shutil.copytree(ASSETS / "fonts", vendor / "fonts", dirs_exist_ok=True)
        shutil.copytree(ASSETS / "licenses", vendor / "licenses", dirs_exist_ok=True)
        shutil.copy2(ASSETS / "README.md", vendor / "README.md")
    return OfflineCopy(target=target, replaced=tuple(replaced), unresolved=tuple(unresolved))
