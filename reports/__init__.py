"""Reports of stored studies: a static HTML site (``curvebench report DIR --out SITE/``),
Markdown tables shared with ``curvebench show``, and CSV/Parquet export of the run table.

Modules: :mod:`~curvebench.reports.study` (runs as DataFrames and curves),
:mod:`~curvebench.reports.tables` (the numbers), :mod:`~curvebench.reports.figures` (PNG
figures), :mod:`~curvebench.reports.html` (escaped page pieces), :mod:`~curvebench.reports.build`
(the site) and :mod:`~curvebench.reports.cli` (the subcommand). Plotting libraries are imported
only by the modules that draw, so the command line starts fast.
"""
