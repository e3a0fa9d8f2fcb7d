"""pytest-benchmark micro-benchmarks of the curvature kernels (run with ``--run-benchmarks``)."""
