"""Problems on MNIST, Fashion-MNIST and CIFAR-10 (standard files, downloaded when online).

These could not be run where curvebench was first built (no training sets offline), so their
targets are taken from the literature, and each ``provenance`` says so.
"""

from __future__ import annotations

import dataclasses
import os

from curvebench.problems import datasets, models
from curvebench.problems.spec import Budget, ProblemSpec, Target, register_problem

#: Set this environment variable to 1 to never download (missing files are an error at once).
OFFLINE_ENV = "CURVEBENCH_OFFLINE"


def downloads_allowed() -> bool:
    """False when ``CURVEBENCH_OFFLINE`` is set to a true value (``--offline`` sets it)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


def _mnist(*, data_dir=None) -> datasets.Dataset:
    return datasets.mnist(data_dir=data_dir, download=downloads_allowed())


def _fashion(*, data_dir=None) -> datasets.Dataset:
    return datasets.fashion_mnist(data_dir=data_dir, download=downloads_allowed())


def _cifar10(*, data_dir=None) -> datasets.Dataset:
    return datasets.cifar10(data_dir=data_dir, download=downloads_allowed())


def _mnist_autoencoder(*, data_dir=None) -> datasets.Dataset:
    data = _mnist(data_dir=data_dir)
    x_train = data.x_train.reshape(len(data.x_train), -1)
    x_test = data.x_test.reshape(len(data.x_test), -1)
    return dataclasses.replace(data, x_train=x_train, y_train=x_train, x_test=x_test,
                               y_test=x_test, num_classes=None)


_UNTESTED = "Not yet reproduced by curvebench (no training data offline where it was built); "

register_problem(ProblemSpec(
    name="mnist-mlp-sgn",
    description="MLP 784-20-20-20-10 (sigmoid, N(0,1) weights, zero biases) on MNIST, batch "
                "1000: the SGN paper's setup.",
    architecture=models.sgn_mlp(),
    loss="cross_entropy",
    load_data=_mnist,
    batch_size=1000,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.90, direction="max",
                  provenance=_UNTESTED + "0.90 is below the accuracy Gargiani et al. 2020 "
                             "report for SGN on this network."),
    budget=Budget(max_steps=5000),
    eval_every=200,
    tags=frozenset({"mlp", "paper"}),
    reference="Gargiani, Zanelli, Diehl, Hutter 2020, arXiv 2006.02409.",
))

register_problem(ProblemSpec(
    name="fashion-mnist-lenet5",
    description="LeNet-5 (tanh, average pooling) on Fashion-MNIST, the SGN paper's setup.",
    architecture=models.lenet5(),
    loss="cross_entropy",
    load_data=_fashion,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.88, direction="max",
                  provenance=_UNTESTED + "0.88 is a typical LeNet-5 accuracy on Fashion-MNIST."),
    budget=Budget(max_steps=10000),
    eval_every=250,
    tags=frozenset({"cnn", "paper"}),
    reference="Gargiani et al. 2020; LeCun et al. 1998.",
))

register_problem(ProblemSpec(
    name="cifar10-cnn-sgn",
    description="CNN conv32@3-pool-conv64@3-pool-conv64@3-fc64 (ReLU) on CIFAR-10.",
    architecture=models.cnn_sgn(),
    loss="cross_entropy",
    load_data=_cifar10,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.65, direction="max",
                  provenance=_UNTESTED + "0.65 is a typical accuracy of this small CNN without "
                             "augmentation."),
    budget=Budget(max_steps=20000),
    eval_every=500,
    tags=frozenset({"cnn", "paper"}),
    reference="Gargiani et al. 2020, arXiv 2006.02409.",
))

register_problem(ProblemSpec(
    name="mnist-autoencoder",
    description="Deep autoencoder 784-1000-500-250-30 and mirror (sigmoid) on MNIST, sigmoid BCE.",
    architecture=models.autoencoder([784, 1000, 500, 250, 30], activation="sigmoid"),
    loss="bce_logits",
    load_data=_mnist_autoencoder,
    batch_size=1000,
    eval_metric="test_loss",
    target=Target(metric="train_loss", value=0.10, direction="min",
                  provenance=_UNTESTED + "0.10 mean per-pixel BCE is a reconstruction level the "
                             "curvature methods reach in Martens 2010 and Botev et al. 2017."),
    budget=Budget(max_steps=10000),
    eval_every=250,
    tags=frozenset({"autoencoder", "mlp", "paper"}),
    reference="Hinton & Salakhutdinov 2006; Martens 2010; Botev, Ritter, Barber 2017.",
))

register_problem(ProblemSpec(
    name="mnist-2c2d",
    description="DeepOBS 2c2d (conv32@5-pool-conv64@5-pool-fc1024-fc10) on MNIST.",
    architecture=models.two_conv_two_dense(),
    loss="cross_entropy",
    load_data=_mnist,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.99, direction="max",
                  provenance=_UNTESTED + "0.99 as commonly reached by this network (DeepOBS)."),
    budget=Budget(max_steps=10000),
    eval_every=250,
    tags=frozenset({"cnn"}),
    reference="Schneider, Balles, Hennig 2019, DeepOBS.",
))

register_problem(ProblemSpec(
    name="fashion-mnist-2c2d",
    description="DeepOBS 2c2d on Fashion-MNIST.",
    architecture=models.two_conv_two_dense(),
    loss="cross_entropy",
    load_data=_fashion,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.92, direction="max",
                  provenance=_UNTESTED + "0.92, near the DeepOBS baselines' final accuracy."),
    budget=Budget(max_steps=10000),
    eval_every=250,
    tags=frozenset({"cnn"}),
    reference="Schneider, Balles, Hennig 2019, DeepOBS (fmnist_2c2d).",
))

register_problem(ProblemSpec(
    name="cifar10-3c3d",
    description="DeepOBS 3c3d (three conv, three dense layers) on CIFAR-10.",
    architecture=models.three_conv_three_dense(),
    loss="cross_entropy",
    load_data=_cifar10,
    batch_size=128,
    eval_metric="test_accuracy",
    target=Target(metric="test_accuracy", value=0.80, direction="max",
                  provenance=_UNTESTED + "0.80, below the DeepOBS baselines' final accuracy."),
    budget=Budget(max_steps=20000),
    eval_every=500,
    tags=frozenset({"cnn"}),
    reference="Schneider, Balles, Hennig 2019, DeepOBS (cifar10_3c3d).",
))
