"""asv benchmark suite: step cost, curvature-product cost, time- and steps-to-target, memory.

Every benchmark is parametrised from the registries (:data:`curvebench.problems.PROBLEMS`,
:data:`curvebench.optimizers.OPTIMIZERS`), so new problems and optimizers appear without editing
the suite; :mod:`suite.workloads` says which problems each family of benchmarks covers.
"""
