"""Report build time for a study of a few hundred runs (synthetic records, no training).

Builds the study of ``tests/report_fixtures.py`` scaled up (problems × seeds × sweep) and
prints the median over repeats of: loading the records into a :class:`Study`, the leaderboard
(metrics with bootstrap intervals), and the whole site (``build_site``, wall clock and this
process's CPU time, which is less sensitive to other load on the machine), with the number of
runs, pages and figures. Run from the repository root::

    python -m benchmarks.report_build [--problems 4] [--seeds 3] [--steps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from curvebench.reports import tables
from curvebench.reports.build import build_site
from curvebench.reports.study import Study
from tests.report_fixtures import synthetic_record, synthetic_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    records = synthetic_records(problems=[f"synth-{i}" for i in range(args.problems)],
                                seeds=range(args.seeds))
    if args.steps != 200:  # rebuild with longer histories
        records = [synthetic_record(
            problem=r.config.problem, optimizer=r.config.optimizer, seed=r.config.seed,
            hyperparameters=r.config.hyperparameter_dict, batch_size=r.config.batch_size,
            steps=args.steps, curvature="damping" in r.config.hyperparameter_dict)
            for r in records]
    history_rows = sum(len(r.history["step"]) for r in records)
    load, board, site_times, site_cpu = [], [], [], []
    site = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        study = Study.from_records(records)
        load.append(time.perf_counter() - start)
        start = time.perf_counter()
        tables.leaderboard(study)
        board.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as out:
            start, cpu = time.perf_counter(), time.process_time()
            site = build_site(study, out=out)
            site_times.append(time.perf_counter() - start)
            site_cpu.append(time.process_time() - cpu)
    print(f"{len(records)} runs, {history_rows} history rows, {len(site.pages)} pages, "
          f"{len(site.images)} figures, {len(site.data)} CSV files")
    print(f"median of {args.repeats}: Study {statistics.median(load):.2f} s, leaderboard "
          f"{statistics.median(board):.2f} s, whole site {statistics.median(site_times):.2f} s "
          f"(all: {', '.join(f'{t:.1f}' for t in site_times)}; CPU time of this process "
          f"{statistics.median(site_cpu):.2f} s)")


if __name__ == "__main__":
    main()
