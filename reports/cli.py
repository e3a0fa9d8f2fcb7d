"""``curvebench report DIR --out SITE/``: the static HTML report, Markdown tables or data export.

Formats:

* ``html`` (default): the static site of :func:`curvebench.reports.build.build_site`.
* ``md``: the tables of ``curvebench show`` as Markdown, printed (or written to ``--out``).
* ``csv`` / ``parquet``: the run DataFrame (one row per run) written to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from curvebench.cli import UsageError, output_path, register_command

__all__ = ["add_arguments", "report_command", "FORMATS"]

FORMATS = ("html", "md", "csv", "parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``curvebench report``."""
    parser.add_argument("directory", type=Path, help="results directory (run-*.json files)")
    parser.add_argument("--out", type=output_path, help="output: the site directory for html "
                        "(default: DIRECTORY/report), a file for md, csv and parquet "
                        "(md prints to the terminal without it)")
    parser.add_argument("--format", choices=FORMATS, default="html")
    parser.add_argument("--force", action="store_true", help="write the html site into a "
                        "non-empty directory that is not a previous report (its other files "
                        "are kept)")
    parser.add_argument("--asv-html", type=Path, help="asv HTML directory to include and link "
                        "(default: .asv/html in the current directory or a parent, if any)")


def report_command(args: argparse.Namespace) -> int:
    """Handler of ``curvebench report``; returns the exit status."""
    from curvebench.reports.study import Study
    from curvebench.store import StoreError

    if not args.directory.is_dir():
        raise UsageError(f"results directory {str(args.directory)!r} does not exist")
    if args.format in ("csv", "parquet") and args.out is None:
        raise UsageError(f"--format {args.format} needs --out FILE")
    if args.asv_html is not None and not (args.asv_html / "index.html").is_file():
        raise UsageError(f"no asv index.html in {str(args.asv_html)!r}")
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("--format parquet needs pyarrow (pip install pyarrow)") from None
    try:
        study = Study.load(args.directory)
    except StoreError as error:
        raise UsageError(str(error)) from None
    for item in study.unreadable:
        print(f"curvebench: skipped {item.describe()}", file=sys.stderr)

    if args.format == "md":
        from curvebench.reports.tables import tables_text

        text = tables_text(study.records, fmt="md") if study.records else \
            f"No runs stored in {args.directory.name}.\n"
        if args.out is None:
            sys.stdout.write(text)
        else:
            _write(args.out, text.encode())
        return 0
    if args.format in ("csv", "parquet"):
        _check_parent(args.out)
        if args.format == "csv":
            study.runs.to_csv(args.out, index=False)
        else:
            _parquet_safe(study.runs).to_parquet(args.out, index=False)
        print(f"{len(study.runs)} run(s) written to {args.out}")
        return 0

    from curvebench.reports.build import (
        SiteTargetError,
        build_site,
        check_site_target,
        find_asv_html,
    )

    out = args.out if args.out is not None else args.directory / "report"
    try:
        check_site_target(out, force=args.force)
    except SiteTargetError as error:
        raise UsageError(str(error)) from None
    asv = args.asv_html if args.asv_html is not None else find_asv_html(Path.cwd())
    start = time.perf_counter()
    try:
        site = build_site(study, out=out, asv_html=asv, force=args.force)
    except SiteTargetError as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        raise UsageError(f"cannot write the report to {str(out)!r}: "
                         f"{error.strerror or error}") from None
    seconds = time.perf_counter() - start
    print(f"report of {len(study.records)} run(s) written to {site.pages[0]} "
          f"({len(site.pages)} pages, {len(site.images)} figures, {seconds:.1f} s)")
    for line in site.missing:
        print(f"  missing: {line}")
    return 0


def _parquet_safe(frame):
    """Columns whose values mix Python types (a hyperparameter that is a string for one
    optimizer and a number for another) become strings, which Parquet can store."""
    frame = frame.copy()
    for column in [c for c in frame.columns if frame[c].dtype == "object"]:
        values = frame[column].dropna()
        if len({type(v) for v in values}) > 1:
            frame[column] = frame[column].map(lambda v: v if v is None or v != v else str(v))
    return frame


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise UsageError(f"directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise UsageError(f"--out {str(path)!r} is a directory; give a file name")


def _write(path: Path, data: bytes) -> None:
    _check_parent(path)
    path.write_bytes(data)


register_command("report", help="static HTML report, Markdown tables or run data export",
                 add_arguments=add_arguments, handler=report_command)
