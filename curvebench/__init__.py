"""curvebench: honest benchmarks of second-order against first-order optimizers."""

__version__ = "0.1.0"
