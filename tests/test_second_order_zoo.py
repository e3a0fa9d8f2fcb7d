"""Float64 checks of the Hessian-diagonal, quasi-Newton, Krylov and exact optimizers.

Peers where they exist (pytorch-optimizer's AdaHessian and SophiaH, the Sophia authors'
``sophia_opt``, ``torch.optim.LBFGS``) get the same model, batches and random draws; the rest are
checked against dense float64 matrices from :mod:`tests.dense_reference`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import curvebench.optimizers.adahessian as adahessian_module
from curvebench.losses import CrossEntropyLoss, MSELoss
from curvebench.optimizers import get_optimizer
from tests.dense_reference import dense_ggn, dense_hessian, flat_parameters

pytestmark = pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True")

DTYPE = torch.float64


def tiny_mlp(seed: int = 0, *, inputs: int = 5, hidden: int = 4, outputs: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(),
                         nn.Linear(hidden, outputs)).to(DTYPE)


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 3)).to(DTYPE)


def batches(count: int, *, n: int = 8, features: int = 5, classes: int = 3, seed: int = 1,
            image: bool = False):
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 1, 5, 5) if image else (n, features)
    return [(torch.randn(shape, generator=generator, dtype=DTYPE),
             torch.randint(0, classes, (n,), generator=generator)) for _ in range(count)]


def record_probes(monkeypatch) -> list[list[torch.Tensor]]:
    """Record every probe our optimizers draw (through ``draw_probes``)."""
    recorded: list[list[torch.Tensor]] = []
    original = adahessian_module.draw_probes

    def recording(params, *, distribution, generator):
        probes = original(params, distribution=distribution, generator=generator)
        recorded.append([z.clone() for z in probes])
        return probes

    monkeypatch.setattr(adahessian_module, "draw_probes", recording)
    return recorded


def replay(monkeypatch, recorded: list[list[torch.Tensor]], name: str, transform) -> None:
    """Make ``torch.<name>`` return our recorded probes, parameter by parameter, in order."""
    queue = [transform(z) for probes in recorded for z in probes]

    def fake(like, *args, **kwargs):
        value = queue.pop(0)
        assert value.shape == like.shape
        return value.clone()

    monkeypatch.setattr(torch, name, fake)


def peer_steps(model, optimizer, data, *, create_graph=True) -> None:
    for inputs, targets in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward(create_graph=create_graph)
        optimizer.step()


# --- AdaHessian ----------------------------------------------------------------------------


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_adahessian_matches_pytorch_optimizer_with_the_same_probes(monkeypatch, power):
    data = batches(4)
    ours_model, peer_model = tiny_mlp(), tiny_mlp()
    settings = dict(lr=0.1, eps=1e-4, hessian_power=power, weight_decay=0.01)
    ours = get_optimizer("adahessian").build(model=ours_model, loss=CrossEntropyLoss(),
                                              hyperparameters=settings)
    recorded = record_probes(monkeypatch)
    for inputs, targets in data:
        ours.step(inputs=inputs, targets=targets)
    assert len(recorded) == len(data)
    replay(monkeypatch, recorded, "randint_like", lambda z: (z + 1) / 2)
    peer_library = pytest.importorskip("pytorch_optimizer")
    peer = peer_library.AdaHessian(peer_model.parameters(), lr=0.1, eps=1e-4,
                                   hessian_power=power, weight_decay=0.01,
                                   weight_decouple=True, foreach=False)
    peer_steps(peer_model, peer, data)
    torch.testing.assert_close(flat_parameters(ours_model), flat_parameters(peer_model),
                               rtol=1e-10, atol=1e-12)
    assert ours.counters["hessian_products"] == len(data)


def test_adahessian_averages_conv_kernels_spatially(monkeypatch):
    """One step on a tiny CNN against the dense Hessian and the recorded probe."""
    model = tiny_cnn()
    (inputs, targets), = batches(1, image=True)
    theta = flat_parameters(model)
    loss = CrossEntropyLoss()
    hessian = dense_hessian(model, loss, inputs, targets)
    gradient = torch.autograd.grad(loss(model(inputs), targets), list(model.parameters()))
    recorded = record_probes(monkeypatch)
    optimizer = get_optimizer("adahessian").build(model=model, loss=loss,
                                                  hyperparameters={"lr": 0.1})
    optimizer.step(inputs=inputs, targets=targets)
    z = torch.cat([v.reshape(-1) for v in recorded[0]])
    estimate = list(torch.split(z * (hessian @ z), [p.numel() for p in model.parameters()]))
    kernel = estimate[0].view(2, 1, 3, 3).abs().mean(dim=(2, 3), keepdim=True)
    estimate[0] = kernel.expand(2, 1, 3, 3).reshape(-1)
    assert not torch.allclose(estimate[0], (z * (hessian @ z))[:18].abs())  # averaging matters
    # first step: m̂ = g, v̂ = D², so θ ← θ − α g / (|D| + ε)
    diag = torch.cat([e.abs().reshape(-1) for e in estimate])
    g = torch.cat([x.reshape(-1) for x in gradient])
    expected = theta - 0.1 * g / (diag + 1e-4)
    torch.testing.assert_close(flat_parameters(model), expected, rtol=1e-10, atol=1e-12)


# --- Sophia ---------------------------------------------------------------------------------


def test_sophia_g_matches_the_authors_sophia_opt_with_the_same_labels():
    sophia_opt = pytest.importorskip("sophia_opt")
    data = batches(7)
    ours_model, peer_model = tiny_mlp(), tiny_mlp()
    loss = CrossEntropyLoss()
    sampled: list[torch.Tensor] = []
    original = loss.sampled_output_gradient

    def recording(output, *, generator=None):
        value = original(output, generator=generator)
        sampled.append(value.argmin(dim=1))  # g̃ = (p − e_ŷ)/√N is negative only at ŷ
        return value

    loss.sampled_output_gradient = recording
    settings = dict(lr=0.05, rho=0.04, weight_decay=0.1, update_period=3, eps=1e-300)
    ours = get_optimizer("sophia-g").build(model=ours_model, loss=loss,
                                           hyperparameters=settings)
    for inputs, targets in data:
        ours.step(inputs=inputs, targets=targets)
    assert len(sampled) == 3  # steps 1, 4, 7
    assert ours.counters["backward_passes"] == len(data) + 3

    peer = sophia_opt.SophiaG(peer_model.parameters(), lr=0.05, rho=0.04, weight_decay=0.1)
    labels = iter(sampled)
    for t, (inputs, targets) in enumerate(data):
        if t % 3 == 0:
            peer.zero_grad()
            nn.functional.cross_entropy(peer_model(inputs), next(labels)).backward()
            peer.update_hessian()
        peer.zero_grad()
        nn.functional.cross_entropy(peer_model(inputs), targets).backward()
        peer.step(bs=inputs.shape[0])
    torch.testing.assert_close(flat_parameters(ours_model), flat_parameters(peer_model),
                               rtol=1e-10, atol=1e-12)


def test_sophia_h_matches_pytorch_optimizer_with_the_same_probes(monkeypatch):
    data = batches(7)
    ours_model, peer_model = tiny_mlp(), tiny_mlp()
    rho, lr, eps = 0.05, 0.02, 1e-12
    ours = get_optimizer("sophia-h").build(
        model=ours_model, loss=CrossEntropyLoss(),
        hyperparameters=dict(lr=lr, rho=rho, eps=eps, update_period=3))
    recorded = record_probes(monkeypatch)
    for inputs, targets in data:
        ours.step(inputs=inputs, targets=targets)
    assert len(recorded) == 3 and ours.counters["hessian_products"] == 3
    # clipping must be active somewhere, or the test would not check it
    assert any((s["exp_avg"].abs() >= rho * s["hessian"].clamp(min=eps / rho)).any()
               for s in (ours.state[p] for p in ours_model.parameters()))
    replay(monkeypatch, recorded, "randn_like", lambda z: z)
    # pytorch-optimizer: θ ← θ − lr' clip(m / max(h, eps'), ±p); ours with lr' = η/ρ, p = ρ
    peer_library = pytest.importorskip("pytorch_optimizer")
    peer = peer_library.SophiaH(peer_model.parameters(), lr=lr / rho, p=rho,
                                eps=eps / rho, update_period=3, foreach=False)
    peer_steps(peer_model, peer, data)
    torch.testing.assert_close(flat_parameters(ours_model), flat_parameters(peer_model),
                               rtol=1e-10, atol=1e-12)


# --- ESGD -----------------------------------------------------------------------------------


def _dense_gradient(model, loss, inputs, targets) -> torch.Tensor:
    grads = torch.autograd.grad(loss(model(inputs), targets), list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def _assign(model: nn.Module, theta: torch.Tensor) -> None:
    with torch.no_grad():
        for p, value in zip(model.parameters(), torch.split(
                theta, [p.numel() for p in model.parameters()]), strict=True):
            p.copy_(value.view_as(p))


def test_esgd_matches_a_dense_float64_replay(monkeypatch):
    data = batches(5)
    model, reference = tiny_mlp(), tiny_mlp()
    loss = CrossEntropyLoss()
    recorded = record_probes(monkeypatch)
    optimizer = get_optimizer("esgd").build(
        model=model, loss=loss, hyperparameters=dict(lr=0.05, damping=1e-3, update_period=2))
    for inputs, targets in data:
        optimizer.step(inputs=inputs, targets=targets)
    assert len(recorded) == 3  # steps 1, 3, 5
    probes = iter(torch.cat([z.reshape(-1) for z in probes]) for probes in recorded)
    theta, total, count = flat_parameters(reference), 0.0, 0
    for t, (inputs, targets) in enumerate(data):
        _assign(reference, theta)
        gradient = _dense_gradient(reference, loss, inputs, targets)
        if t % 2 == 0:
            hessian = dense_hessian(reference, loss, inputs, targets)
            total = total + (hessian @ next(probes)) ** 2
            count += 1
        theta = theta - 0.05 * gradient / ((total / count).sqrt() + 1e-3)
    torch.testing.assert_close(flat_parameters(model), theta, rtol=1e-10, atol=1e-12)


# --- L-BFGS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("full_batch", "max_iter"), [(True, 1), (True, 4), (False, 1)])
def test_lbfgs_matches_torch_lbfgs_driven_by_a_closure(full_batch, max_iter):
    data = batches(1) * 6 if full_batch else batches(6)
    model, reference = tiny_mlp(), tiny_mlp()
    loss = CrossEntropyLoss()
    ours = get_optimizer("lbfgs").build(model=model, loss=loss, hyperparameters=dict(
        max_iter=max_iter, history_size=3))
    peer = torch.optim.LBFGS(reference.parameters(), max_iter=max_iter, history_size=3,
                             line_search_fn="strong_wolfe")
    for inputs, targets in data:
        evaluations = 0

        def closure(inputs=inputs, targets=targets):
            nonlocal evaluations
            evaluations += 1
            peer.zero_grad()
            value = loss(reference(inputs), targets)
            value.backward()
            return value

        expected = peer.step(closure)
        ours.counters.clear()
        value = ours.step(inputs=inputs, targets=targets)
        assert float(value) == float(expected.detach())
        assert ours.counters["function_evaluations"] == evaluations
        assert ours.counters["forward_passes"] == evaluations
        torch.testing.assert_close(flat_parameters(model), flat_parameters(reference),
                                   rtol=1e-10, atol=1e-12)
    assert evaluations > 1 or not full_batch  # the line search ran


# --- Exact Gauss-Newton, natural gradient, Woodbury -------------------------------------------


def _empirical_fisher(model, loss, inputs, targets) -> torch.Tensor:
    """``(1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ`` from one backward pass per sample (``ℓ_n`` as the mean loss
    of a batch of one)."""
    rows = [_dense_gradient(model, loss, inputs[n : n + 1], targets[n : n + 1])
            for n in range(len(inputs))]
    stacked = torch.stack(rows)
    return stacked.T @ stacked / len(inputs)


@pytest.mark.parametrize(("name", "curvature"), [("ggn-exact", "ggn"),
                                                 ("ngd-exact", "empirical_fisher")])
@pytest.mark.parametrize("loss", [CrossEntropyLoss(), MSELoss()], ids=["ce", "mse"])
def test_exact_step_is_the_dense_damped_solve(name, curvature, loss):
    model = tiny_mlp()
    (inputs, labels), = batches(1)
    targets = labels if isinstance(loss, CrossEntropyLoss) else torch.randn(
        8, 3, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    theta = flat_parameters(model)
    gradient = _dense_gradient(model, loss, inputs, targets)
    matrix = (dense_ggn(model, loss, inputs, targets) if curvature == "ggn"
              else _empirical_fisher(model, loss, inputs, targets))
    damping, lr = 0.05, 0.7
    expected = theta - lr * torch.linalg.solve(
        matrix + damping * torch.eye(len(theta), dtype=DTYPE), gradient)
    optimizer = get_optimizer(name).build(model=model, loss=loss,
                                          hyperparameters={"damping": damping, "lr": lr})
    optimizer.step(inputs=inputs, targets=targets)
    torch.testing.assert_close(flat_parameters(model), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("curvature", ["ggn", "empirical_fisher"])
def test_woodbury_equals_the_exact_solve(curvature):
    exact_name = "ggn-exact" if curvature == "ggn" else "ngd-exact"
    data = batches(3)
    a, b = tiny_mlp(), tiny_mlp()
    exact = get_optimizer(exact_name).build(model=a, loss=CrossEntropyLoss(),
                                            hyperparameters={"damping": 1e-3})
    woodbury = get_optimizer("ggn-woodbury").build(
        model=b, loss=CrossEntropyLoss(),
        hyperparameters={"damping": 1e-3, "curvature": curvature})
    for inputs, targets in data:
        exact.step(inputs=inputs, targets=targets)
        woodbury.step(inputs=inputs, targets=targets)
    torch.testing.assert_close(flat_parameters(b), flat_parameters(a), rtol=1e-10, atol=1e-10)
    assert not torch.equal(flat_parameters(b), flat_parameters(tiny_mlp()))


def test_exact_methods_refuse_large_models_and_studies_skip_them():
    from curvebench.optimizers import HyperparameterError
    from curvebench.study import parse_study

    big = tiny_mlp(inputs=100, hidden=20, outputs=10)  # 2230 parameters
    for name in ("ggn-exact", "ngd-exact"):
        with pytest.raises(HyperparameterError, match="limit is 2000") as error:
            get_optimizer(name).build(model=big, loss=CrossEntropyLoss())
        assert "\n" not in str(error.value)
    study = parse_study({"name": "t", "problems": ["digits-logreg", "digits-mlp"],
                         "seeds": [0], "budget": {"max_steps": 1},
                         "optimizers": {"ggn-exact": {}, "sgd": {}}})
    skipped = {(p, o) for p, o, _ in study.incompatible()}
    assert skipped == {("digits-mlp", "ggn-exact")}  # 8970 parameters
    assert {(c.problem, c.optimizer) for c in study.run_configs()} == {
        ("digits-logreg", "ggn-exact"), ("digits-logreg", "sgd"), ("digits-mlp", "sgd")}


# --- LiSSA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_lissa_converges_to_the_dense_damped_solve(curvature):
    model = tiny_mlp()
    loss = CrossEntropyLoss()
    (inputs, targets), = batches(1)
    theta = flat_parameters(model)
    gradient = _dense_gradient(model, loss, inputs, targets)
    matrix = (dense_ggn if curvature == "ggn" else dense_hessian)(model, loss, inputs, targets)
    damping = 1.0  # the Hessian's smallest eigenvalue here is about −0.46
    damped = matrix + damping * torch.eye(len(theta), dtype=DTYPE)
    eigenvalues = torch.linalg.eigvalsh(damped)
    assert eigenvalues[0] > 0.1
    scale = 1.1 * float(eigenvalues[-1])
    solve = torch.linalg.solve(damped, gradient)

    def step(depth: int) -> torch.Tensor:
        _assign(model, theta)
        optimizer = get_optimizer("lissa").build(model=model, loss=loss, hyperparameters=dict(
            damping=damping, scale=scale, depth=depth, curvature=curvature, lr=1.0))
        optimizer.step(inputs=inputs, targets=targets)
        return theta - flat_parameters(model)

    short, long = step(3), step(400)
    torch.testing.assert_close(long, solve, rtol=1e-10, atol=1e-12)
    assert (short - solve).norm() > 1e-3 * solve.norm()  # a short series is not the solve


# --- CurveBall ------------------------------------------------------------------------------


def test_curveball_step_matches_the_dense_quadratic_model():
    """Second step (z ≠ 0): Δz, the 2 × 2 solve for (β, ρ) and θ + z against dense G and g."""
    model = tiny_mlp()
    loss = CrossEntropyLoss()
    first, (inputs, targets) = batches(2)
    optimizer = get_optimizer("curveball").build(model=model, loss=loss,
                                                 hyperparameters={"damping": 0.3})
    optimizer.step(inputs=first[0], targets=first[1])
    z, lam = optimizer.direction().clone(), optimizer.state["curveball"]["damping"]
    assert z.norm() > 0
    theta = flat_parameters(model)
    gradient = _dense_gradient(model, loss, inputs, targets)
    damped = dense_ggn(model, loss, inputs, targets) + lam * torch.eye(len(theta), dtype=DTYPE)
    delta = damped @ z + gradient
    system = torch.stack([torch.stack([delta @ damped @ delta, z @ damped @ delta]),
                          torch.stack([z @ damped @ delta, z @ damped @ z])])
    beta, minus_rho = torch.linalg.solve(system, torch.stack([gradient @ delta, gradient @ z]))
    expected = theta + (-minus_rho) * z - beta * delta
    optimizer.step(inputs=inputs, targets=targets)
    torch.testing.assert_close(flat_parameters(model), expected, rtol=1e-10, atol=1e-12)
    # (β, ρ) minimise the quadratic model along span{z, Δz}: perturbing either raises it
    def model_value(b, r):
        step = r * z - b * delta
        return gradient @ step + 0.5 * step @ damped @ step

    best = model_value(beta, -minus_rho)
    for db, dr in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)]:
        assert model_value(beta + db, -minus_rho + dr) > best


def test_curveball_converges_to_the_newton_step_on_a_convex_quadratic():
    torch.manual_seed(0)
    model = nn.Linear(6, 2).to(DTYPE)
    loss = MSELoss()
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(20, 6, generator=generator, dtype=DTYPE)
    targets = torch.randn(20, 2, generator=generator, dtype=DTYPE)
    theta = flat_parameters(model)
    newton = theta - torch.linalg.solve(dense_ggn(model, loss, inputs, targets),
                                        _dense_gradient(model, loss, inputs, targets))
    optimizer = get_optimizer("curveball").build(model=model, loss=loss,
                                                 hyperparameters={"damping": 1e-6})
    for _ in range(300):
        optimizer.step(inputs=inputs, targets=targets)
    torch.testing.assert_close(flat_parameters(model), newton, rtol=1e-8, atol=1e-10)
