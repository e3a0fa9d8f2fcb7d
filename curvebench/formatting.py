"""The one way numbers and configurations are written, for the CLI, sweeps and reports alike.

Framework-neutral; every table and label that shows a number, an interval or a configuration
calls these, so the terminal, the Markdown and the web page cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["format_number", "format_interval", "format_value", "configuration_label",
           "target_label"]

#: What a missing value (``None`` or NaN) is written as.
MISSING = "—"
#: What ``+∞`` time to target is written as.
NOT_REACHED = "not reached"


def format_number(value: Any, spec: str = ".4g") -> str:
    """``format(value, spec)`` for a real number; ``—`` when missing (``None`` or NaN),
    ``not reached`` for ``+∞`` (an infinite time to target), ``-∞``; integers exactly; anything
    else as ``str``."""
    if value is None:
        return MISSING
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return NOT_REACHED if value > 0 else "-∞"
        return format(value, spec)
    return str(value)


def format_interval(value: float, low: float, high: float, spec: str = ".4g") -> str:
    """``"120 [95, 160]"``; ``not reached`` for ``+∞``, ``—`` for NaN; open ends as ``∞``
    (an unknown end as ``?``)."""
    if not np.isfinite(value):
        return NOT_REACHED if value == np.inf else MISSING
    ends = [format(float(v), spec) if np.isfinite(v) else ("∞" if v == np.inf else "?")
            for v in (low, high)]
    return f"{float(value):{spec}} [{ends[0]}, {ends[1]}]"


def format_value(value: Any) -> str:
    """A hyperparameter value: floats with ``:g`` (``0.3``, ``1e-05``), others as ``str``."""
    if isinstance(value, float | np.floating) and not isinstance(value, bool):
        return f"{float(value):g}"
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def configuration_label(hyperparameters: Mapping[str, Any],
                        defaults: Mapping[str, Any] | None = None, *,
                        empty: str = "defaults") -> str:
    """``"lr=0.3 momentum=0"``: the hyperparameters that differ from ``defaults``, by name.

    Args:
        hyperparameters: name → value (an ``hp.`` prefix is dropped).
        defaults: name → default; ``None`` shows every hyperparameter.
        empty: the label when nothing differs.
    """
    defaults = defaults or {}
    changed = {str(k).removeprefix("hp."): v for k, v in hyperparameters.items()
               if defaults.get(str(k).removeprefix("hp.")) != v}
    return " ".join(f"{k}={format_value(v)}" for k, v in sorted(changed.items())) or empty


def target_label(metric: str, direction: str, value: float, spec: str = "g") -> str:
    """``"test_accuracy ≥ 0.9"``: a target as ``metric``, ``≤`` (``min``) or ``≥``, value."""
    sign = "≤" if direction == "min" else "≥"
    return f"{metric} {sign} {value:{spec}}"
