"""Kronecker factors of the per-layer Gauss-Newton blocks: K-FAC, KFLR, KFRA, empirical Fisher.

For a layer with pre-activations ``s_{n,t} = W ã_{n,t}`` (``t`` runs over the positions that
share the weight: one for a Linear layer on ``(N, d)`` inputs, the output pixels of a
convolution) and ``ã = [a; 1]`` the layer input with a homogeneous coordinate for the bias, the
Gauss-Newton block of ``vec([W, b])`` (column-major) is approximated by ``G ≈ A ⊗ S`` with

    A = (1/N) Σ_n Σ_t ã_{n,t} ã_{n,t}ᵀ,        S = (1/T) Σ_n Σ_t Σ_k B_{k,n,t} B_{k,n,t}ᵀ,

where ``B_{k,n,t} = J_{s_{n,t}}ᵀ c_{k,n}`` backpropagates vector ``k`` of a factor of the
output Hessian of the *batch-mean* loss (so ``S`` already carries the loss's ``1/N``). The
curvature types differ only in those vectors:

=============  =====================================================================  ===========
type           vectors ``c_{k,n}`` backpropagated to every layer                      reference
=============  =====================================================================  ===========
``kflr``       the ``K`` columns of ``C_n`` with ``H_n = C_n C_nᵀ`` (``D − 1`` for    Botev 2017
                softmax cross-entropy, whose ``H_n`` has that rank, else ``D``;
                :meth:`~curvebench.losses.CurvatureLoss.hessian_factor`): exact
``kfac``       ``mc_samples`` draws of                                                Martens &
                :meth:`~curvebench.losses.CurvatureLoss.sampled_output_gradient`,     Grosse 2015
                each weighted ``1/mc_samples``: unbiased for ``kflr``'s ``S``
``kfra``       none: ``S_l = (W_{l+1}ᵀ S_{l+1} W_{l+1}) ⊙ E_n[f′(h_n) f′(h_n)ᵀ]``,   Botev 2017
                started from ``S_out = Σ_n H_n``; MLPs only (:func:`kfra_support`)
``empirical``  the gradient of the true-label loss, ``S = N Σ_n Σ_t b bᵀ / T`` with   Kunstner
                ``b_{n,t} = ∂L/∂s_{n,t}``, i.e. ``(1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ``              2019
=============  =====================================================================  ===========

With one position (``T = 1``) and one example, ``kflr`` (and ``kfra``) give the exact GGN block.
The empirical Fisher is that of the per-example loss ``ℓ_n`` (``L = (1/N) Σ_n ℓ_n``): for
cross-entropy this is the empirical Fisher of the likelihood; for MSE and BCE, whose ``ℓ_n``
averages over the ``D`` outputs, it differs from the likelihood's by the loss's scale ``c``
(see :mod:`curvebench.losses`), which the losses do not expose separately.

Scaling convention for convolutions (KFC, Grosse & Martens 2016, eq. 32): ``A`` *sums* the
outer products of the unfolded patches over the ``T = H_out·W_out`` output positions
(Ω of the paper) and ``S`` *averages* the backpropagated outer products over them (Γ of the
paper), so ``A ⊗ S`` is the unbiased estimate of the GGN block under the paper's assumptions of
spatial homogeneity and spatially uncorrelated derivatives, and a convolution with a single
output position is exactly a Linear layer. BackPACK (``KFAC``/``KFLR`` extensions) uses the
same ``A`` but a factor that is ``T`` times larger for ``S`` — and it sums the backpropagated
vectors over positions *before* the outer product, which makes its ``S`` the exact GGN of the
bias. We use the paper's scaling because it keeps one damping value meaningful for Linear and
convolution layers alike (the ``S`` of both is a per-position curvature) and because it is the
construction whose assumptions the paper states. Linear layers agree with BackPACK exactly:
BackPACK's weight factors are ``[S, A[:-1, :-1]]`` and its bias factor is ``S``.

All factors are symmetric positive semi-definite; ``A`` has the shape of ``ã`` and ``S`` of
``s``. Layers with a block: ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` with ``groups=1``
(any stride, padding, padding mode and dilation).

References: Martens & Grosse 2015, "Optimizing neural networks with Kronecker-factored
approximate curvature"; Grosse & Martens 2016, "A Kronecker-factored approximate Fisher matrix
for convolution layers"; Botev, Ritter & Barber 2017, "Practical Gauss-Newton optimisation for
deep learning"; Kunstner, Hennig & Balles 2019, "Limitations of the empirical Fisher
approximation for natural gradient descent".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

from curvebench.curvature import _has_input_gradient_rule, _input_gradient, _leaves
from curvebench.losses import CurvatureLoss

__all__ = [
    "CURVATURE_TYPES",
    "CurvatureType",
    "KFRA_ELEMENTWISE",
    "KroneckerFactors",
    "KroneckerFactorCollector",
    "UnsupportedModelError",
    "has_kronecker_block",
    "kronecker_layers",
    "kfra_support",
    "layer_inputs",
    "layer_pre_activations",
    "gram",
    "input_factor",
    "output_factor",
    "kronecker_factors",
    "parameter_matrix",
    "split_parameter_matrix",
    "dense_ggn_block",
    "kronecker_approximation_error",
]

CurvatureType = Literal["kflr", "kfac", "kfra", "empirical"]
#: The curvature types, in the order of the table above.
CURVATURE_TYPES: tuple[str, ...] = ("kflr", "kfac", "kfra", "empirical")

#: Modules KFRA can backpropagate through: elementwise activations (diagonal Jacobian) and
#: identities. Any other module (besides ``nn.Linear``) makes a model unsupported by KFRA.
KFRA_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Softplus,
    nn.Identity,
)

_CONV = (nn.Conv1d, nn.Conv2d)


class UnsupportedModelError(ValueError):
    """The model has a layer the requested curvature type cannot handle (one-line message)."""


@dataclass(frozen=True)
class KroneckerFactors:
    """The two factors of one layer's block ``G ≈ A ⊗ S`` (see the module docstring).

    Attributes:
        A: ``(d_in + 1, d_in + 1)`` with a bias (homogeneous coordinate last), else
            ``(d_in, d_in)``; ``d_in = C_in · Π kernel`` for convolutions.
        S: ``(d_out, d_out)``; ``d_out`` the output features or channels.
    """

    A: torch.Tensor
    S: torch.Tensor

    def kron(self) -> torch.Tensor:
        """The dense ``A ⊗ S`` (for tests and tiny layers), ordered like ``vec([W, b])``."""
        return torch.kron(self.A, self.S)


def has_kronecker_block(module: nn.Module) -> bool:
    """Whether ``module`` gets a Kronecker block: Linear, or Conv1d/Conv2d with ``groups=1``."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, _CONV) and module.groups == 1


def kronecker_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer of ``model`` with a block, in forward-definition order."""
    return [(name, m) for name, m in model.named_modules() if has_kronecker_block(m)]


def _runs_in_place(module: nn.Module) -> bool:
    return bool(getattr(module, "inplace", False))


def kfra_support(model: nn.Module) -> str | None:
    """Return ``None`` when KFRA can handle ``model``, else a one-line reason.

    KFRA backpropagates one batch-averaged matrix through the network, which needs the network
    to be a chain: an ``nn.Sequential`` (nested ones are flattened) of ``nn.Linear`` layers and
    the elementwise modules in :data:`KFRA_ELEMENTWISE`, or a single ``nn.Linear``.
    """
    leaves = _leaves(model)
    if not isinstance(model, nn.Linear) and leaves == [model]:
        return f"KFRA needs an nn.Sequential MLP, got {type(model).__name__}"
    for index, leaf in enumerate(leaves):
        if not isinstance(leaf, (nn.Linear, *KFRA_ELEMENTWISE)):
            return (f"KFRA supports only Linear layers and elementwise activations; layer "
                    f"{index} is {type(leaf).__name__}")
    linear = [leaf for leaf in leaves if isinstance(leaf, nn.Linear)]
    if not linear:
        return "KFRA needs at least one Linear layer"
    if len({id(leaf) for leaf in linear}) != len(linear):
        return "KFRA: a Linear layer is used more than once (weight sharing is not supported)"
    return None


def layer_inputs(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The layer inputs per position, ``(N, T, d_in)`` (unfolded patches for convolutions).

    Patches are ordered like ``weight.reshape(C_out, -1)``: channel-major, then kernel offsets.
    """
    n = inputs.shape[0]
    if isinstance(module, nn.Linear):
        return inputs.reshape(n, -1, module.in_features)
    if not isinstance(module, _CONV):
        raise TypeError(f"no Kronecker block for {type(module).__name__}")
    return _unfold(module, inputs).transpose(1, 2)


def _geometry_2d(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """``(kernel, stride, dilation)`` of a convolution as a 2-D one (a Conv1d is ``1 × k``)."""
    if isinstance(module, nn.Conv1d):
        return (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
    return module.kernel_size, module.stride, module.dilation


def _unfold(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The patches of a convolution's input, ``(N, d_in, T)`` (``F.unfold``'s layout)."""
    kernel, stride, dilation = _geometry_2d(module)
    x = inputs.unsqueeze(2) if isinstance(module, nn.Conv1d) else inputs
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        padding = module.padding if isinstance(module, nn.Conv2d) else (0, *module.padding)
    else:  # 'same'/'valid' or non-zero padding modes: pad exactly as the module's forward does
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(inputs, module._reversed_padding_repeated_twice, mode=mode)
        x = x.unsqueeze(2) if isinstance(module, nn.Conv1d) else x
        padding = (0, 0)
    return F.unfold(x, kernel_size=kernel, dilation=dilation, padding=padding, stride=stride)


def layer_pre_activations(module: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """The layer outputs per position, ``(N, T, d_out)``, from ``(N, ..., d_out)`` (Linear) or
    ``(N, C_out, *spatial)`` (convolution)."""
    n = outputs.shape[0]
    if isinstance(module, nn.Linear):
        return outputs.reshape(n, -1, module.out_features)
    return outputs.reshape(n, module.out_channels, -1).transpose(1, 2)


def input_factor(module: nn.Module, inputs: torch.Tensor, *, homogeneous: bool = True,
                 running: torch.Tensor | None = None, decay: float = 0.0) -> torch.Tensor:
    """``A = (1/N) Σ_n Σ_t ã_{n,t} ã_{n,t}ᵀ`` of one layer from its batch input, or with
    ``running`` (a previous ``A``) the running average ``decay·running + (1 − decay)·A``
    written over ``running`` (:func:`gram`).

    ``ã = [a; 1]`` when the layer has a bias and ``homogeneous`` is set, else ``ã = a`` (for
    a bias given a block of its own, as ASDL does). ``inputs`` is what the layer received,
    ``(N, ...)``. Convolutions take one product of their patch columns
    (:func:`_patch_columns`), the homogeneous coordinate filled in from the column sums.
    """
    n = inputs.shape[0]
    scale = 1.0 / n
    ones = homogeneous and module.bias is not None
    if isinstance(module, _CONV):
        columns = _patch_columns(module, inputs)  # (d, N·T)
        if not ones:
            return gram(columns, scale=scale, running=running, decay=decay)
        return _homogeneous_gram(columns, columns.sum(dim=1).mul_(scale), scale,
                                 columns.shape[1] * scale, running=running, decay=decay)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"no Kronecker block for {type(module).__name__}")
    return _input_factor_from_rows(inputs.reshape(-1, module.in_features), scale,
                                   homogeneous=ones, running=running, decay=decay)


def _patch_columns(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A convolution's input patches as columns, ``(d_in, N·T)``, rows ordered like
    ``weight.reshape(C_out, -1)`` (channel-major, then kernel offsets).

    Strided windows of the padded input (``Tensor.unfold``, no copy), then one permuted copy:
    cheaper than ``F.unfold``'s ``(N, d_in, T)`` and a transposed copy, and one product of
    the columns is cheaper than one per example. Measured (one thread, batch 128, ms per
    factor, against ``F.unfold`` with copied rows or per-example products): 8×8 input, d 9:
    0.12 against 0.34; 4×4, d 144: 1.5 against 2.0; 28×28, d 9: 1.0 against 2.3; 14×14,
    d 288: 34 against 42.
    """
    x = inputs
    padding = module._reversed_padding_repeated_twice
    if any(padding):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, padding, mode=mode)
    x = x.unsqueeze(2) if isinstance(module, nn.Conv1d) else x
    kernel, stride, dilation = _geometry_2d(module)
    windows = x.unfold(2, (kernel[0] - 1) * dilation[0] + 1, stride[0])
    windows = windows.unfold(3, (kernel[1] - 1) * dilation[1] + 1, stride[1])
    if tuple(dilation) != (1, 1):  # windows span the dilated kernel: keep its taps
        windows = windows[..., :: dilation[0], :: dilation[1]]
    n, channels, height, width = windows.shape[:4]  # then the kernel offsets
    return windows.permute(1, 4, 5, 0, 2, 3).reshape(channels * kernel[0] * kernel[1],
                                                      n * height * width)


def _input_factor_from_rows(rows: torch.Tensor, scale: float, *, homogeneous: bool,
                            running: torch.Tensor | None, decay: float) -> torch.Tensor:
    """``scale · Σ_r ã_r ã_rᵀ`` over the rows ``a_r`` of ``rows`` (``ã = [a; 1]`` if
    ``homogeneous``, else ``a``), or its running average (:func:`input_factor`)."""
    append = homogeneous and rows.shape[0] <= rows.shape[1]  # copies less than d²
    if append:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    if not homogeneous or append:
        return gram(rows.T, scale=scale, running=running, decay=decay)
    return _homogeneous_gram(rows.T, rows.sum(dim=0).mul_(scale), scale, rows.shape[0] * scale,
                             running=running, decay=decay)


#: :func:`gram` on a CPU: column blocks of at least this width, at most this many, and only
#: for products over at least this many rows (shallower ones are bound by writing the output).
GRAM_BLOCK_WIDTH = 96
GRAM_MAX_BLOCKS = 6
GRAM_MIN_DEPTH = 256


def gram(columns: torch.Tensor, *, scale: float = 1.0, running: torch.Tensor | None = None,
         decay: float = 0.0) -> torch.Tensor:
    """``scale · C Cᵀ`` of ``C = columns``, ``(d, M)``: a Kronecker factor; with ``running``
    (symmetric, ``(d, d)``, a view allowed) the running average
    ``decay·running + (1 − decay)·scale·C Cᵀ``, written over ``running`` and returned.

    In place, the product adds into the running average: no new ``d × d`` tensor and no
    second pass over it. Measured (one thread, float32, ms, a new product and ``lerp_``
    against in place): d 3137, M 129 (the CNN's fc, a 39 MB factor) 41 against 18.

    On a CPU, with ``k = min(GRAM_MAX_BLOCKS, d // GRAM_BLOCK_WIDTH) ≥ 2`` and
    ``M ≥ GRAM_MIN_DEPTH``, only the lower triangle is multiplied out, one product per column
    block (``(k + 1)/(2k)`` of the flops; BLAS's symmetric rank-k update is not exposed by
    torch), and the upper triangle is its copy. Measured (one thread, float32, ms, one product
    against blocks): d 785, M 512 (the MLP's first layer) 4.0 against 3.0; d 289, M 25088 (the
    CNN's second convolution) 30 against 20-21; d 257, M 512 0.46 against 0.38; d 3137, M
    1024 144 against 118; but d 3137, M 129 (the CNN's fc) 33 against 34-51. Elsewhere (a GPU,
    where these small workloads are bound by kernel launches), and where autograd records
    ``columns``, one product.

    The result is symmetric to rounding, not always to the last bit: BLAS's product ``C Cᵀ``
    is not bit-symmetric on every CPU (on an AVX-512 one it is not, for some sizes).
    Its consumers read one triangle: ``eigh`` the lower one, the Cholesky route the upper one.
    """
    d, depth = columns.shape
    blocks = min(GRAM_MAX_BLOCKS, d // GRAM_BLOCK_WIDTH)
    # beta = 0: a new tensor's contents are not read
    result, beta, alpha = ((columns.new_empty(d, d), 0.0, scale) if running is None
                           else (running, decay, (1.0 - decay) * scale))
    if (blocks < 2 or depth < GRAM_MIN_DEPTH or columns.device.type != "cpu"
            or (columns.requires_grad and torch.is_grad_enabled())):
        return result.addmm_(columns, columns.T, beta=beta, alpha=alpha)
    edges = [d * i // blocks for i in range(blocks + 1)]
    for start, stop in itertools.pairwise(edges):
        result[start:, start:stop].addmm_(columns[start:], columns[start:stop].T, beta=beta,
                                          alpha=alpha)
        result[start:stop, stop:] = result[stop:, start:stop].T
    return result


def _homogeneous_gram(columns: torch.Tensor, sums: torch.Tensor, scale: float, count: float, *,
                      running: torch.Tensor | None, decay: float) -> torch.Tensor:
    """``[[scale·C Cᵀ, sums], [sumsᵀ, count]]``, or its running average over ``running``
    (:func:`gram`)."""
    d = columns.shape[0]
    # a new factor is a running average of zeros with decay 0 (exact: lerp_ at weight 1 is
    # its end, and no host scalar is copied into the tensor, which would be a sync)
    factor, decay = ((columns.new_zeros(d + 1, d + 1), 0.0) if running is None
                     else (running, decay))
    gram(columns, scale=scale, running=factor[:d, :d], decay=decay)
    factor[:d, d].lerp_(sums, 1.0 - decay)
    factor[d, d].mul_(decay).add_((1.0 - decay) * count)
    factor[d, :d] = factor[:d, d]
    return factor


def output_factor(module: nn.Module, backpropagated: Sequence[torch.Tensor]) -> torch.Tensor:
    """``S = (1/T) Σ_k Σ_n Σ_t B_{k,n,t} B_{k,n,t}ᵀ`` of one layer.

    Args:
        module: the layer (Linear or convolution).
        backpropagated: one tensor per vector ``k``, each shaped like the layer's output
            (``(N, ..., d_out)`` for Linear, ``(N, C_out, *spatial)`` for convolutions).
    """
    factor = None
    for b in backpropagated:
        if isinstance(module, nn.Linear):
            flat = b.reshape(-1, module.out_features)
            positions = flat.shape[0] // b.shape[0]
            term = gram(flat.T)
        else:  # (N, C, T): a batched product on the existing layout, no transposed copy
            per_example = b.reshape(b.shape[0], module.out_channels, -1)
            positions = per_example.shape[-1]
            term = torch.bmm(per_example, per_example.transpose(1, 2)).sum(dim=0)
        factor = term if factor is None else factor.add_(term)
    if factor is None:
        raise ValueError("output_factor needs at least one backpropagated tensor")
    return factor.div_(positions)


def parameter_matrix(module: nn.Module, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """Arrange a layer's weight-shaped and bias-shaped tensors as ``[W, b]``, ``(d_out, d_in+1)``.

    With this layout the Kronecker product acts as ``(A ⊗ S) vec(V) = vec(S V A)``.
    """
    matrix = weight.reshape(weight.shape[0], -1)
    if module.bias is None:
        return matrix
    if bias is None:
        raise ValueError("a layer with a bias needs the bias-shaped tensor")
    return torch.cat([matrix, bias.reshape(-1, 1)], dim=1)


def split_parameter_matrix(module: nn.Module,
                           matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`parameter_matrix`: ``(weight-shaped, bias-shaped or None)``."""
    if module.bias is None:
        return matrix.reshape(module.weight.shape), None
    return matrix[:, :-1].reshape(module.weight.shape), matrix[:, -1].clone()


class KroneckerFactorCollector:
    """Forward hooks that record what the factors need, registered once on a model.

    Inside ``with collector.capture():`` each forward pass records, for every layer with a
    block, its (detached) input and its output (still in the autograd graph, so vectors can be
    backpropagated to it); with ``activations=True`` it also records the inputs of the
    elementwise modules (for KFRA), in call order, so a module used twice is recorded twice.
    Where the model is a chain with reverse rules (:func:`_reverse_chain`) it records every
    layer's input and output, from which :meth:`output_factors` backpropagates its vectors
    itself (:meth:`_reverse_pass`) instead of by autograd. Outside ``capture`` the hooks do
    nothing.

    When the model has a module that runs in place (``inplace=True``), a layer's output is
    handed on as a copy while capturing, so the recorded pre-activation is not overwritten by
    the activation after it. A layer that runs more than once in one captured forward pass
    (a reused module) is refused with :class:`UnsupportedModelError` when the factors are
    read, before they are used.

    Args:
        model: the network.
        layers: the modules to collect factors for (default: :func:`kronecker_layers`).

    Raises:
        TypeError: a module of ``layers`` without a Kronecker block.
        UnsupportedModelError: two layers share a weight or bias tensor (weight tying).
    """

    def __init__(self, model: nn.Module, *, layers: Sequence[nn.Module] | None = None) -> None:
        self.model = model
        self.layers: list[nn.Module] = (
            [m for _, m in kronecker_layers(model)] if layers is None else list(layers)
        )
        for layer in self.layers:
            if not has_kronecker_block(layer):
                raise TypeError(f"no Kronecker block for {type(layer).__name__}")
        _check_no_tied_parameters(self.layers)
        self._capturing = False
        self._activations = False
        self._copy_outputs = any(_runs_in_place(m) for m in model.modules())
        self._inputs: dict[nn.Module, torch.Tensor] = {}
        self._outputs: dict[nn.Module, torch.Tensor] = {}
        self._reused: list[nn.Module] = []
        self._activation_inputs: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._chain = _leaves(model) if kfra_support(model) is None else None
        self._reverse_chain = _reverse_chain(model, self.layers)
        #: per leaf of the reverse chain, in the order they ran: (module, input, output)
        self._records: list[tuple[nn.Module, torch.Tensor, object]] = []
        self._elementwise = [] if self._chain is None else list({
            id(leaf): leaf for leaf in self._chain if isinstance(leaf, KFRA_ELEMENTWISE)
        }.values())

    def _register(self, *, activations: bool) -> None:
        """Hooks for one capture: the forward passes between captures run without any (a
        module with hooks takes a slower call path, every step)."""
        self._handles = [layer.register_forward_hook(self._layer_hook) for layer in self.layers]
        if self._reverse_chain is not None:
            self._handles += [leaf.register_forward_hook(self._record_hook)
                              for leaf in self._reverse_chain]
        if activations:
            self._handles += [leaf.register_forward_pre_hook(self._activation_hook)
                              for leaf in self._elementwise]

    def _layer_hook(self, module, inputs, output):
        if not self._capturing:
            return None
        if module in self._outputs:
            self._reused.append(module)
        self._inputs[module] = inputs[0].detach()
        self._outputs[module] = output
        # an in-place module later in the network must not overwrite the recorded output
        return output.clone() if self._copy_outputs else None

    def _record_hook(self, module, inputs, output) -> None:
        if self._capturing:
            self._records.append((module, inputs[0], output))

    def _activation_hook(self, module, inputs) -> None:
        if self._capturing and self._activations:
            h = inputs[0].detach()
            self._activation_inputs.append(h.clone() if _runs_in_place(module) else h)

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def capture(self, *, activations: bool = False) -> Iterator[None]:
        """Record the next forward pass (one per capture)."""
        self.clear()
        self._register(activations=activations)
        self._capturing, self._activations = True, activations
        try:
            yield
        finally:
            self._capturing, self._activations = False, False
            self.remove()

    def clear(self) -> None:
        """Drop recorded tensors (frees the graph references)."""
        self._inputs.clear()
        self._outputs.clear()
        self._reused.clear()
        self._activation_inputs.clear()
        self._records.clear()

    def pre_activations(self) -> list[torch.Tensor]:
        """The recorded layer outputs (in the graph), in :attr:`layers` order."""
        self._check_recorded()
        return [self._outputs[layer] for layer in self.layers]

    def positions(self) -> list[int]:
        """``T`` of every layer in the recorded pass, the positions per example that share its
        weight (1 for a Linear layer on ``(N, d)`` inputs, the output pixels of a convolution):
        ``A``'s homogeneous entry, and the bias's factor when ``A`` has none."""
        self._check_recorded()
        return [math.prod(self._outputs[layer].shape[1:]) // layer.weight.shape[0]
                for layer in self.layers]

    def _check_recorded(self) -> None:
        if self._reused:
            raise UnsupportedModelError(
                f"a {type(self._reused[0]).__name__} layer ran more than once in one forward "
                "pass; Kronecker factors need each layer once (weight sharing is not supported)")
        missing = [layer for layer in self.layers if layer not in self._outputs]
        if missing:
            raise RuntimeError("no forward pass was recorded for "
                               f"{len(missing)} layer(s); run the model inside capture()")

    def input_factors(self, *, homogeneous: bool = True,
                      running: Sequence[torch.Tensor | None] | None = None,
                      decay: float = 0.0) -> list[torch.Tensor]:
        """``A`` of every layer from the recorded inputs (:func:`input_factor`; without the
        homogeneous coordinate unless ``homogeneous``); where ``running`` (one entry per
        layer) holds a previous ``A``, the running average with ``decay``, written over it."""
        self._check_recorded()
        previous = list(running) if running is not None else [None] * len(self.layers)
        return [input_factor(layer, self._inputs[layer], homogeneous=homogeneous,
                             running=old, decay=decay)
                for layer, old in zip(self.layers, previous, strict=True)]

    def output_factors(
        self,
        *,
        curvature: CurvatureType,
        loss: CurvatureLoss,
        output: torch.Tensor,
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
        pre_activation_gradients: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """``S`` of every layer for the recorded forward pass.

        Args:
            curvature: one of :data:`CURVATURE_TYPES`.
            loss: the loss; its output-Hessian factor or Monte-Carlo factor is used.
            output: the network output of the recorded forward pass (in the graph).
            mc_samples: number of Monte-Carlo samples (``kfac`` only).
            generator: random generator for the samples (``kfac`` only; default global RNG).
            pre_activation_gradients: ``∂L/∂s`` of every layer, in :attr:`layers` order
                (``empirical`` only; the gradient of the true-label loss).

        Returns:
            One ``(d_out, d_out)`` tensor per layer.

        Raises:
            UnsupportedModelError: ``kfra`` on a model that is not a Linear/elementwise chain;
                a layer that ran more than once in the recorded pass.
            ValueError: unknown curvature type, ``mc_samples < 1``, or ``empirical`` without
                gradients.
        """
        self._check_recorded()
        if curvature == "kfra":
            return self._kfra_factors(loss=loss, output=output)
        if curvature == "kflr":
            vectors = loss.hessian_factor(output.detach()).permute(2, 0, 1)
        elif curvature == "kfac":
            if mc_samples < 1:
                raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
            vectors = torch.stack([
                loss.sampled_output_gradient(output.detach(), generator=generator)
                for _ in range(mc_samples)
            ]).mul_(mc_samples ** -0.5)
        elif curvature == "empirical":
            if pre_activation_gradients is None:
                raise ValueError("the empirical Fisher needs pre_activation_gradients (∂L/∂s)")
            n = output.shape[0]
            return [output_factor(layer, [g]).mul_(n) for layer, g in
                    zip(self.layers, pre_activation_gradients, strict=True)]
        else:
            raise ValueError(f"unknown curvature type {curvature!r}; "
                             f"known: {', '.join(CURVATURE_TYPES)}")
        per_layer = self._reverse_pass(vectors, output=output)
        if per_layer is not None:
            return [output_factor(layer, b) for layer, b in zip(self.layers, per_layer,
                                                                strict=True)]
        # Autograd, one backward per vector: PyTorch's batched (vmap) backward is slower than
        # a loop for convolutions, and a loop lets each per-vector result be freed after its
        # product.
        pre_activations = self.pre_activations()
        per_layer = [[] for _ in self.layers]
        for vector in vectors:
            grads = torch.autograd.grad(output, pre_activations, grad_outputs=vector,
                                        retain_graph=True)
            for collected, g in zip(per_layer, grads, strict=True):
                collected.append(g)
        return [output_factor(layer, b) for layer, b in zip(self.layers, per_layer, strict=True)]

    @torch.no_grad()
    def _reverse_pass(self, vectors: torch.Tensor, *,
                      output: torch.Tensor) -> list[list[torch.Tensor]] | None:
        """``J_sᵀ c`` at every layer's pre-activation ``s`` for the ``(K, N, D)`` vectors ``c``
        of the recorded pass's ``output``, by the layers' own reverse rules
        (:func:`curvebench.curvature._input_gradient`), or ``None`` where the model is not
        such a chain (:func:`_reverse_chain`), did not run as one or did not return
        ``output``: then autograd.

        Autograd's backward through an activation followed by max pooling applies the
        activation's derivative to the unpooled gradient, a tensor the size of the activation;
        the rules apply it to the pooled gradient before unpooling, a quarter of the elements
        for 2×2 windows, and no parameter gradients are formed. A chain of Linear layers and
        activations takes all ``K`` vectors as one batch (one product per layer); with
        convolutions or pooling one vector at a time, as PyTorch's convolutions run a
        ``K``-times larger batch slower than ``K`` batches. Measured (CPU, one thread, torch
        2.13, KFLR's ten vectors on ``benchmarks/kfac_peers.py``'s workloads, the whole
        :meth:`output_factors` against an autograd backward per vector): CNN 201 → 180 ms, MLP
        15.9 → 13.0 ms; in its K-FAC steps (step ÷ SGD step, in-process A/B) KFLR on the CNN
        at periods 5/20 2.03 → 1.93, every step 6.81 → 6.45, on the MLP every step 6.91 →
        6.60, K-FAC on the CNN every step 4.06 → 3.92.
        """
        chain = self._reverse_chain
        if (chain is None or [r[0] for r in self._records] != chain
                or self._records[-1][2] is not output):
            return None
        entries = [(module, inputs, _pooled(result), _pool_indices(result))
                   if isinstance(module, nn.MaxPool2d) else (module, inputs, result, None)
                   for module, inputs, result in self._records]
        if any(isinstance(module, nn.MaxPool2d) and indices is None
               for module, _, _, indices in entries):  # no argmax to unpool with
            return None
        wanted = {id(layer): i for i, layer in enumerate(self.layers)}
        first = min(i for i, leaf in enumerate(chain) if id(leaf) in wanted)
        batched = not any(isinstance(leaf, (*_CONV, nn.MaxPool2d)) for leaf in chain[first:])
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.layers]
        for g in [vectors] if batched else list(vectors):
            i = len(chain) - 1
            while True:
                if id(chain[i]) in wanted:
                    per_layer[wanted[id(chain[i])]].append(g.flatten(0, 1) if batched else g)
                    if i == first:
                        break
                g, i = _input_gradient(entries, i, g)
        return per_layer

    def _kfra_factors(self, *, loss: CurvatureLoss, output: torch.Tensor) -> list[torch.Tensor]:
        if self._chain is None:
            raise UnsupportedModelError(kfra_support(self.model))
        elementwise = [leaf for leaf in self._chain if isinstance(leaf, KFRA_ELEMENTWISE)]
        if len(self._activation_inputs) != len(elementwise):
            raise RuntimeError("KFRA needs one forward pass inside capture(activations=True)")
        activation_inputs = iter(reversed(self._activation_inputs))
        curvature = loss.hessian_matrix(output.detach()).sum(dim=0)
        factors: dict[nn.Module, torch.Tensor] = {}
        wanted = set(self.layers)
        for leaf in reversed(self._chain):
            if isinstance(leaf, nn.Linear):
                factors[leaf] = curvature
                if wanted.issubset(factors):  # no layer below needs the recursion
                    break
                curvature = leaf.weight.detach().T @ curvature @ leaf.weight.detach()
            else:
                h = next(activation_inputs)
                if isinstance(leaf, nn.Identity):
                    continue
                h = h.reshape(h.shape[0], -1)
                derivative = _elementwise_derivative(leaf, h)
                curvature = curvature * gram(derivative.T, scale=1.0 / h.shape[0])
        return [factors[layer] for layer in self.layers]


def _pooled(output: object) -> torch.Tensor:
    """A max pool's output values (the pool may have been asked for its indices too)."""
    return output[0] if isinstance(output, tuple) else output


def _pool_indices(output: object) -> torch.Tensor | None:
    """A max pool's argmax: its second output where it was asked for it (e.g. by a
    :class:`~curvebench.curvature.Linearization` capturing the same pass), else the indices
    autograd saved for its backward (``None`` where there are none)."""
    if isinstance(output, tuple):
        return output[1]
    return getattr(output.grad_fn, "_saved_result1", None)


def _reverse_chain(model: nn.Module, layers: Sequence[nn.Module]) -> list[nn.Module] | None:
    """The leaves of ``model`` where the collector can backpropagate its vectors itself: a plain
    (nested) ``nn.Sequential`` of layers each used once and each with a reverse rule
    (:func:`curvebench.curvature._has_input_gradient_rule`), with every layer of ``layers``
    among them; else ``None`` (autograd backpropagates them)."""
    leaves = _leaves(model)
    if (len({id(leaf) for leaf in leaves}) != len(leaves)
            or not all(_has_input_gradient_rule(leaf) for leaf in leaves)):
        return None
    ids = {id(leaf) for leaf in leaves}
    return leaves if layers and all(id(layer) in ids for layer in layers) else None


def _check_no_tied_parameters(layers: Sequence[nn.Module]) -> None:
    seen: set[int] = set()
    for layer in layers:
        for p in (layer.weight, layer.bias):
            if p is None:
                continue
            if id(p) in seen:
                raise UnsupportedModelError(
                    "two layers share a weight or bias tensor (weight tying); Kronecker "
                    "factors need each parameter in one layer")
            seen.add(id(p))


def _elementwise_derivative(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``f′(h)`` of an elementwise module, by one backward pass of ``Σ f(h)``."""
    with torch.enable_grad():
        h = inputs.detach().requires_grad_(True)
        # an in-place module may not overwrite a leaf: give it a copy
        (derivative,) = torch.autograd.grad(
            module(h.clone() if _runs_in_place(module) else h).sum(), h)
    return derivative


def kronecker_factors(
    model: nn.Module,
    loss: CurvatureLoss,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    curvature: CurvatureType,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> dict[str, KroneckerFactors]:
    """The factors ``A``, ``S`` of every layer with a block, for one batch (no averaging).

    Runs one forward pass (and one backward pass of the loss for ``empirical``); see the
    module docstring for the definitions and the scaling.

    Args:
        model: the network.
        loss: its loss.
        inputs: a batch of inputs.
        targets: the batch's targets (used by ``empirical`` only).
        curvature: one of :data:`CURVATURE_TYPES`.
        mc_samples: Monte-Carlo samples for ``kfac``.
        generator: random generator for ``kfac``.

    Returns:
        ``{layer name: KroneckerFactors}`` in :func:`kronecker_layers` order.

    Raises:
        UnsupportedModelError: ``kfra`` on a model that is not a Linear/elementwise chain.
    """
    if curvature == "kfra" and (reason := kfra_support(model)) is not None:
        raise UnsupportedModelError(reason)
    names = kronecker_layers(model)
    collector = KroneckerFactorCollector(model, layers=[m for _, m in names])
    try:
        with torch.enable_grad(), collector.capture(activations=curvature == "kfra"):
            output = model(inputs)
        gradients = None
        if curvature == "empirical":
            gradients = torch.autograd.grad(loss(output, targets), collector.pre_activations(),
                                            retain_graph=True)
        a_factors = collector.input_factors()
        s_factors = collector.output_factors(
            curvature=curvature, loss=loss, output=output, mc_samples=mc_samples,
            generator=generator, pre_activation_gradients=gradients)
    finally:
        collector.clear()
        collector.remove()
    return {name: KroneckerFactors(A=a.detach(), S=s.detach())
            for (name, _), a, s in zip(names, a_factors, s_factors, strict=True)}


def dense_ggn_block(model: nn.Module, loss: CurvatureLoss, inputs: torch.Tensor,
                    layer: str) -> torch.Tensor:
    """The exact GGN block of one layer, ordered like ``vec([W, b])`` (column-major).

    ``G_l = Σ_n J_nᵀ H_n J_n`` with ``J_n`` the Jacobian of output ``n`` with respect to the
    layer's parameters (``torch.func.jacrev``) and ``H_n`` from the loss. Dense: tiny nets only.
    """
    module = model.get_submodule(layer)
    names = [f"{layer}.weight"] + ([f"{layer}.bias"] if module.bias is not None else [])
    params = {name: p.detach() for name, p in model.named_parameters()}
    chosen = {name: params[name] for name in names}

    def output(selected: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, {**params, **selected}, (inputs,))

    with torch.no_grad():
        out = model(inputs)
    jacobians = jacrev(output)(chosen)
    n, d = out.shape
    weight = jacobians[names[0]].reshape(n, d, module.weight.shape[0], -1)
    bias = jacobians[names[1]].reshape(n, d, -1, 1) if len(names) > 1 else None
    jac = weight if bias is None else torch.cat([weight, bias], dim=-1)
    jac = jac.transpose(-1, -2).reshape(n, d, -1)  # column-major vec([W, b])
    hessian = loss.hessian_matrix(out)
    return torch.einsum("nip,nij,njq->pq", jac, hessian, jac)


def kronecker_approximation_error(
    model: nn.Module,
    loss: CurvatureLoss,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    curvature: CurvatureType = "kflr",
    mc_samples: int = 1,
) -> dict[str, float]:
    """Relative error ``‖G_l − A_l ⊗ S_l‖_F / ‖G_l‖_F`` of each layer's block (a diagnostic).

    ``G_l`` is the exact GGN block from :func:`dense_ggn_block` on the same batch, so this is
    for tiny networks. The number measures how much the Kronecker (and, for ``kfra``, the
    batch-averaging; for ``kfac``, the sampling; for ``empirical``, the label) approximation
    loses; it is not expected to be zero except for one example through one layer.

    Returns:
        ``{layer name: relative error}``.
    """
    factors = kronecker_factors(model, loss, inputs, targets, curvature=curvature,
                                mc_samples=mc_samples)
    errors = {}
    for name, block in factors.items():
        exact = dense_ggn_block(model, loss, inputs, name)
        norm = torch.linalg.matrix_norm(exact)
        errors[name] = float(torch.linalg.matrix_norm(exact - block.kron()) / norm)
    return errors
