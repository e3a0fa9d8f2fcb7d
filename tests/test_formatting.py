"""The one number formatter and the one configuration label."""

from __future__ import annotations

import math

import numpy as np

from curvebench.formatting import (
    configuration_label,
    format_interval,
    format_number,
    format_value,
)


def test_format_number_missing_infinite_and_integers():
    assert format_number(None) == format_number(math.nan) == format_number(np.float32("nan"))
    assert format_number(None) == "—"
    assert format_number(math.inf) == "not reached" and format_number(-math.inf) == "-∞"
    assert format_number(12345) == "12345" and format_number(np.int64(7)) == "7"
    assert format_number(0.123456) == "0.1235" and format_number(2.0, ".3g") == "2"
    assert format_number(True) == "True" and format_number("x") == "x"


def test_format_interval():
    assert format_interval(120.0, 95.0, 160.0) == "120 [95, 160]"
    assert format_interval(120.0, 95.0, math.inf, ".0f") == "120 [95, ∞]"
    assert format_interval(math.inf, 1.0, 2.0) == "not reached"
    assert format_interval(math.nan, 1.0, 2.0) == "—"


def test_configuration_label_names_what_differs_from_the_defaults():
    defaults = {"lr": 0.1, "momentum": 0.9}
    assert configuration_label({"lr": 0.1, "momentum": 0.9}, defaults) == "defaults"
    assert configuration_label({"momentum": 0.0, "lr": 0.3}, defaults) == "lr=0.3 momentum=0"
    assert configuration_label({"hp.lr": 1e-5, "hp.nesterov": True}) == "lr=1e-05 nesterov=True"
    assert configuration_label({}, empty="single config") == "single config"
    assert format_value(np.float64(0.25)) == "0.25" and format_value(np.int64(3)) == "3"


def test_target_label():
    from curvebench.formatting import target_label

    assert target_label("test_accuracy", "max", 0.9) == "test_accuracy ≥ 0.9"
    assert target_label("train loss", "min", 0.123456, ".3g") == "train loss ≤ 0.123"
