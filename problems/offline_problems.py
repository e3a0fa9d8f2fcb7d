"""Problems on data that needs no files or network: synthetic teachers, digits, MNIST-1D.

Targets of these problems come from tuned Adam baselines (as AlgoPerf sets its targets); each
target's ``provenance`` says how the value was obtained.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from curvebench.problems import datasets, models
from curvebench.problems.spec import Budget, ProblemSpec, Target, register_problem

__all__ = ["linreg_optimum"]

_LINREG = {"n_train": 1024, "n_test": 1024, "d_in": 32, "d_out": 4, "noise": 0.1}


@functools.lru_cache(maxsize=1)
def _linreg_data(*, data_dir=None) -> datasets.Dataset:
    del data_dir
    return datasets.synthetic_regression(**_LINREG, teacher="linear", seed=0)


def linreg_optimum() -> float:
    """The minimal training MSE of ``synthetic-linreg`` (least squares in float64)."""
    data = _linreg_data()
    x = np.concatenate([data.x_train, np.ones((len(data.x_train), 1))], axis=1, dtype=np.float64)
    y = data.y_train.astype(np.float64)
    solution = np.linalg.lstsq(x, y, rcond=None)[0]
    return float(((x @ solution - y) ** 2).mean())


def _digits(*, data_dir=None) -> datasets.Dataset:
    del data_dir
    return datasets.digits(seed=0)


def _digits_autoencoder(*, data_dir=None) -> datasets.Dataset:
    data = _digits()
    return dataclasses.replace(data, y_train=data.x_train, y_test=data.x_test, num_classes=None)


def _mnist1d(*, data_dir=None) -> datasets.Dataset:
    del data_dir
    return datasets.mnist1d(seed=0)


#: Adam's configurations in studies/quick.toml (3 Sobol points, seed 0, from Adam's lr space).
_QUICK_ADAM = "1.12e-3, 6.31e-3, 5.86e-2 (the quick study's Adam configurations)"


def _adam(*, lr: float, value: float, grid: str = "1e-3, 3e-3, 1e-2, 3e-2") -> str:
    return (f"Tuned Adam baseline (benchmarks/tune_targets.py; CPU, float32, 1 thread, "
            f"seeds 0-1, full step budget): lr={lr:.3g} was best of {{{grid}}}; its worse seed "
            f"reached {value:.4f} within half the step budget; rounded to the loose side.")


register_problem(ProblemSpec(
    name="synthetic-linreg",
    description="Linear least squares, 1024×32 Gaussian inputs, 4 outputs, noise σ=0.1.",
    architecture=models.mlp([32, 4]),
    loss="mse",
    load_data=_linreg_data,
    batch_size=128,
    eval_metric="test_loss",
    # The closed-form optimum of this fixed data set is 0.0096269 (see linreg_optimum()).
    target=Target(metric="train_loss", value=0.009723, direction="min",
                  provenance="Least-squares optimum 0.0096269 computed in closed form "
                             "(linreg_optimum), plus 1%."),
    budget=Budget(max_steps=2000),
    eval_every=10,
    tags=frozenset({"convex", "offline", "regression", "suite"}),
    reference="Teacher-student linear regression (known optimum).",
))

register_problem(ProblemSpec(
    name="digits-logreg",
    description="Multinomial logistic regression on scikit-learn's 8×8 digits.",
    architecture=models.mlp([64, 10]),
    loss="cross_entropy",
    load_data=_digits,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="train_loss", value=0.015, direction="min",
                  provenance=_adam(lr=0.0586232, value=0.01461, grid=_QUICK_ADAM)),
    budget=Budget(max_steps=2000),
    eval_every=20,
    tags=frozenset({"convex", "offline", "suite"}),
    reference="scikit-learn digits (UCI optdigits test set, 1797 images).",
))

register_problem(ProblemSpec(
    name="digits-mlp",
    description="MLP 64-64-64-10 (tanh) on 8×8 digits.",
    architecture=models.mlp([64, 64, 64, 10], activation="tanh"),
    loss="cross_entropy",
    load_data=_digits,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.975, direction="max",
                  provenance=_adam(lr=0.00630707, value=0.975, grid=_QUICK_ADAM)),
    budget=Budget(max_steps=3000),
    eval_every=20,
    tags=frozenset({"mlp", "offline", "suite"}),
))

register_problem(ProblemSpec(
    name="digits-cnn",
    description="CNN conv16@3-pool-conv32@3-pool-fc10 (ReLU) on 8×8 digits.",
    architecture=models.digits_cnn(),
    loss="cross_entropy",
    load_data=_digits,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.98, direction="max",
                  provenance=_adam(lr=0.00112137, value=0.98056, grid=_QUICK_ADAM)),
    budget=Budget(max_steps=3000),
    eval_every=20,
    tags=frozenset({"cnn", "offline", "suite"}),
))

register_problem(ProblemSpec(
    name="digits-autoencoder",
    description="Autoencoder 64-32-16-32-64 (sigmoid, linear code) on 8×8 digits, sigmoid BCE.",
    architecture=models.autoencoder([64, 32, 16], activation="sigmoid"),
    loss="bce_logits",
    load_data=_digits_autoencoder,
    batch_size=128,
    eval_metric="test_loss",
    target=Target(metric="train_loss", value=0.262, direction="min",
                  provenance=_adam(lr=0.00630707, value=0.26144, grid=_QUICK_ADAM)),
    budget=Budget(max_steps=3000),
    eval_every=20,
    tags=frozenset({"autoencoder", "mlp", "offline", "suite"}),
))

register_problem(ProblemSpec(
    name="mnist1d-mlp",
    description="MLP 40-100-100-10 (ReLU) on MNIST-1D (4000/1000).",
    architecture=models.mlp([40, 100, 100, 10], activation="relu"),
    loss="cross_entropy",
    load_data=_mnist1d,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.65, direction="max",
                  provenance=_adam(lr=0.00630707, value=0.658, grid=_QUICK_ADAM)),
    budget=Budget(max_steps=4000),
    eval_every=50,
    tags=frozenset({"mlp", "offline", "suite"}),
    reference="Greydanus 2020, 'Scaling down deep learning' (MNIST-1D).",
))

register_problem(ProblemSpec(
    name="mnist1d-cnn",
    description="1-D CNN (three strided conv32 layers, linear read-out) on MNIST-1D.",
    architecture=models.mnist1d_cnn(),
    loss="cross_entropy",
    load_data=_mnist1d,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.92, direction="max",
                  provenance=_adam(lr=0.00630707, value=0.921, grid=_QUICK_ADAM)),
    budget=Budget(max_steps=4000),
    eval_every=50,
    tags=frozenset({"cnn", "offline", "suite"}),
    reference="Greydanus 2020, 'Scaling down deep learning' (MNIST-1D).",
))
