"""Step costs of the Hessian-diagonal, quasi-Newton, Krylov and exact optimizers.

For an MLP 784-256-256-10 (ReLU, batch 512) and a small CNN (conv32-pool-conv64-pool-fc on
1×28×28, batch 128), both on random data (and an MLP 64-24-10 at batch 128, small enough for
the exact methods), prints the median process CPU time of one step of
each optimizer ÷ one ``torch.optim.SGD`` step, and ÷ its peer where one exists
(pytorch-optimizer's ``AdaHessian`` and ``SophiaH``, the Sophia authors' ``sophia_opt.SophiaG``,
``torch.optim.LBFGS``), all in one process with interleaved repeats and one thread. Where ours
is slower than the peer the output says by how much and why. It also prints the
gradient-equivalent passes per step from the optimizers' own counters (the reports' weights),
averaged over 20 steps at the defaults, so that column shows what the reports' x-axis charges.

Sophia and ESGD refresh their curvature estimate every ``k`` steps; the timed steps use
``k = 1`` (every step an estimator step, the expensive case) for ours and the peers alike, while
the gradient-equivalents column uses the defaults (amortised). Methods whose size limit
(``max_parameters``) excludes a model are listed as skipped.

    python benchmarks/second_order_costs.py [--repeats 11] [--threads 1] [--only adahessian ...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from curvebench.environment import device_description
from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers import CurvatureOptimizer, get_optimizer
from curvebench.reports.study import PASS_WEIGHTS
from curvebench.timing import add_allocator_option, apply_allocator_policy

METHODS = ("adahessian", "sophia-g", "sophia-h", "esgd", "lbfgs", "curveball", "lissa",
           "ggn-exact", "ngd-exact", "ggn-woodbury")

#: Settings for the timed steps: estimators refreshed every step (see the module docstring).
TIMED = {"sophia-g": {"update_period": 1}, "sophia-h": {"update_period": 1},
         "esgd": {"update_period": 1}}

#: Why ours can be slower than its peer (printed when it is).
WHY = {
    "adahessian": "same passes (one forward, one differentiable backward, one Hessian-vector "
                  "product); ours also copies its generator state in and out each step and "
                  "updates per parameter where the peer uses foreach kernels",
    "sophia-h": "same passes on an estimator step; ours keeps its own generator (state copy "
                "per refresh) and updates per parameter where the peer uses foreach kernels",
    "sophia-g": "ours computes the Gauss-Newton-Bartlett estimate in the same step from the "
                "retained graph (one extra backward pass, plus the linearisation's layer "
                "capture); the peer's timed step here includes its separate forward and "
                "backward on sampled labels",
    "lbfgs": "the same torch.optim.LBFGS step; ours adds building the closure and counting "
             "evaluations",
}


def cases(batch_mlp: int, batch_cnn: int) -> dict[str, tuple[nn.Module, torch.Tensor,
                                                            torch.Tensor]]:
    """The two workloads: model, inputs and targets (random, seeded)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 10))
    cnn = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64 * 7 * 7, 10))
    small = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10))
    return {
        f"mlp-784-256-256-10 b{batch_mlp}": (mlp, torch.randn(batch_mlp, 784),
                                             torch.randint(0, 10, (batch_mlp,))),
        f"cnn-c32-c64-fc 1x28x28 b{batch_cnn}": (cnn, torch.randn(batch_cnn, 1, 28, 28),
                                                 torch.randint(0, 10, (batch_cnn,))),
        # small enough for the exact methods (their size limits exclude the two above)
        "mlp-64-24-10 b128": (small, torch.randn(128, 64), torch.randint(0, 10, (128,))),
    }


def _ours(name: str, model: nn.Module, inputs, targets, **settings) -> Callable[[], object]:
    optimizer = get_optimizer(name).build(model=model, loss=CrossEntropyLoss(),
                                          hyperparameters=settings)
    assert isinstance(optimizer, CurvatureOptimizer)
    return lambda: optimizer.step(inputs=inputs, targets=targets)


def _first_order(optimizer: torch.optim.Optimizer, model: nn.Module, inputs, targets, *,
                 create_graph: bool = False) -> Callable[[], object]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), targets).backward(create_graph=create_graph)
        optimizer.step()
        if create_graph:  # break the parameter ↔ gradient reference cycle
            optimizer.zero_grad(set_to_none=True)
    return step


def _peer(name: str, model: nn.Module, inputs, targets) -> Callable[[], object] | None:
    """One step of the peer implementation with the settings of the timed step, or None."""
    try:
        import pytorch_optimizer
    except ImportError:  # pragma: no cover - optional reference library
        pytorch_optimizer = None
    if name == "adahessian" and pytorch_optimizer is not None:
        peer = pytorch_optimizer.AdaHessian(model.parameters(), lr=0.15, eps=1e-4)
        return _first_order(peer, model, inputs, targets, create_graph=True)
    if name == "sophia-h" and pytorch_optimizer is not None:
        peer = pytorch_optimizer.SophiaH(model.parameters(), lr=1.0, p=0.01, update_period=1)
        return _first_order(peer, model, inputs, targets, create_graph=True)
    if name == "sophia-g":
        try:
            import sophia_opt
        except ImportError:  # pragma: no cover
            return None
        peer = sophia_opt.SophiaG(model.parameters(), lr=0.01)

        def step() -> None:  # the authors' loop: a step, then the estimator on sampled labels
            peer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs), targets).backward()
            peer.step(bs=len(inputs))
            logits = model(inputs)
            sampled = torch.distributions.Categorical(logits=logits).sample()
            peer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(logits, sampled).backward()
            peer.update_hessian()
        return step
    if name == "lbfgs":
        peer = torch.optim.LBFGS(model.parameters(), max_iter=1, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            peer.zero_grad()
            value = nn.functional.cross_entropy(model(inputs), targets)
            value.backward()
            return value
        return lambda: peer.step(closure)
    return None


def gradient_equivalents_per_step(name: str, model: nn.Module, inputs, targets,
                                  steps: int = 20) -> float:
    """Mean gradient-equivalent passes per step over ``steps`` steps at the defaults."""
    optimizer = get_optimizer(name).build(model=copy.deepcopy(model), loss=CrossEntropyLoss())
    total = 0.0
    for _ in range(steps):
        optimizer.step(inputs=inputs, targets=targets)
        total += sum(PASS_WEIGHTS.get(k, 0.0) * v for k, v in optimizer.counters.items())
        optimizer.counters.clear()
    return total / steps


def measure(*, repeats: int, only: list[str], batch_mlp: int, batch_cnn: int) -> None:
    cpu = device_description(torch.device("cpu"))
    print(f"torch {torch.__version__} on {cpu}, threads {torch.get_num_threads()}, "
          "process CPU time, "
          f"median of {repeats} interleaved repeats")
    for case, (base, inputs, targets) in cases(batch_mlp, batch_cnn).items():
        size = sum(p.numel() for p in base.parameters())
        tags = {"cnn"} if "cnn" in case else set()
        sgd_model = copy.deepcopy(base)
        work: dict[str, tuple[nn.Module, Callable[[], object]]] = {"sgd": (sgd_model, _first_order(
            torch.optim.SGD(sgd_model.parameters(), lr=1e-3), sgd_model, inputs, targets))}
        skipped = {}
        for name in only:
            reason = get_optimizer(name).unsupported_reason(tags=tags, num_parameters=size)
            if reason is not None:
                skipped[name] = reason
                continue
            model = copy.deepcopy(base)
            work[name] = (model, _ours(name, model, inputs, targets, **TIMED.get(name, {})))
            peer_model = copy.deepcopy(base)
            peer = _peer(name, peer_model, inputs, targets)
            if peer is not None:
                work[f"{name}:peer"] = (peer_model, peer)
        times: dict[str, list[float]] = {label: [] for label in work}
        initial = {label: copy.deepcopy(model.state_dict()) for label, (model, _) in work.items()}
        for _, fn in work.values():  # warm-up
            fn()
        for _ in range(repeats):
            for label, (model, fn) in work.items():
                model.load_state_dict(initial[label])  # same point every repeat, untimed
                start = time.process_time()
                fn()
                times[label].append(time.process_time() - start)
        median = {label: statistics.median(values) for label, values in times.items()}
        print(f"\n{case} ({size} parameters); SGD step {1e3 * median['sgd']:.1f} ms")
        print(f"  {'method':14s} {'step ms':>9s} {'÷ SGD':>7s} {'÷ peer':>7s} "
              f"{'grad-equiv/step':>16s}")
        for name in only:
            if name in skipped:
                print(f"  {name:14s} skipped: {skipped[name]}")
                continue
            ratio_peer = (median[name] / median[f"{name}:peer"]
                          if f"{name}:peer" in median else None)
            equivalents = gradient_equivalents_per_step(name, base, inputs, targets)
            peer_text = f"{ratio_peer:7.2f}" if ratio_peer is not None else f"{'-':>7s}"
            print(f"  {name:14s} {1e3 * median[name]:9.1f} {median[name] / median['sgd']:7.2f} "
                  f"{peer_text} {equivalents:16.2f}")
            if ratio_peer is not None and ratio_peer > 1.05:
                print(f"  {'':14s} {100 * (ratio_peer - 1):.0f}% slower than the peer: "
                      f"{WHY.get(name, 'not analysed')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-mlp", type=int, default=512)
    parser.add_argument("--batch-cnn", type=int, default=128)
    parser.add_argument("--only", nargs="+", default=list(METHODS), choices=METHODS)
    add_allocator_option(parser)
    args = parser.parse_args()
    print(apply_allocator_policy(args.allocator))
    torch.set_num_threads(args.threads)
    # the peers' create_graph backward warns about a reference cycle, which they break
    warnings.filterwarnings("ignore", message="Using backward.. with create_graph=True")
    measure(repeats=args.repeats, only=args.only, batch_mlp=args.batch_mlp,
            batch_cnn=args.batch_cnn)


if __name__ == "__main__":
    main()
