"""Soft-symmetry penalties: sampled group elements and Lie derivatives along generators.

Both penalties compare *outputs* ``h(f(p))`` of a jet function ``f(p4, mask) -> [B, C]``, with
``h`` one of two output maps:

- ``"logits"``: the logits centred over the classes, ``z_c − mean_c z`` (a common shift of all
  logits changes no probability, so it is not penalised); a single output ``[B]`` or ``[B, 1]``
  is used as it is.
- ``"probabilities"``: the softmax over the classes (the sigmoid for a single output).

Per jet, the sampled penalty is ``|h(f(Λ p)) − h(f(p))|²`` with ``Λ`` drawn from the subgroup;
the infinitesimal one is ``Σ_a |L_a h|²`` with the Lie derivative
``L_a h = d/dε h(f(exp(ε G_a) p))|₀ = Σ_i ∇_{p_i} h · (G_a p_i)``. The batch penalty is the mean
over jets, so that data-parallel gradient averaging of equal shards equals the gradient on the
combined batch.

``Σ_a |L_a h|²`` is computed exactly (forward-mode JVP or input gradient, both differentiated a
second time for training) or estimated by finite differences along random directions in the
Lie algebra (:func:`directional_differences`), which needs only a forward and a backward pass of
the network on an enlarged batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from softsymlit.symmetry.base import JetFunction, SymmetryPenalty
from softsymlit.symmetry.elements import apply, exponential, sample_coefficients
from softsymlit.symmetry.generators import Subgroup

log = logging.getLogger(__name__)

OUTPUTS = ("logits", "probabilities")
MODES = ("sampled", "infinitesimal")
IMPLEMENTATIONS = ("jvp", "input_gradient")
ESTIMATORS = ("finite_difference",)
SCHEMES = ("forward", "central")

MEASURED_IMPLEMENTATION: dict[str, str] = {
    "ParticleFlowNetwork": "input_gradient",
    "ParticleTransformer": "input_gradient",
}
"""The faster Lie-derivative implementation per network class, from
``benchmarks/symmetry_step_time.py`` on CPU (see that script for how it is measured). The
input-gradient contraction costs one double backward whatever the number of generators; the JVP
costs one tangent pass per generator. ``"auto"`` chooses among these exact implementations only;
the finite-difference estimator (:data:`ESTIMATORS`) is biased and noisy, so it is chosen
explicitly."""

DEFAULT_IMPLEMENTATION = "input_gradient"
"""Used by ``implementation="auto"`` for a network class not in :data:`MEASURED_IMPLEMENTATION`."""

DEFAULT_DIFFERENCE_STEPS: dict[str, float] = {"forward": 1e-3, "central": 5e-3}
"""Default finite-difference step ``ε`` per scheme (dimensionless group parameter). Measured in
float32 on the trained benchmark transformer and particle-flow network with all six generators
and directions of norm ``√6``, the relative error of ``L_c h`` is about ``5 ε`` (truncation) and
``1e-6 / ε`` (round-off) for the forward scheme, ``50 ε²`` and ``4e-7 / ε`` for the central one:
at the defaults the round-off is at most a sixth of the truncation error, which is about 0.5 %
(forward) and 0.1 % (central) of ``L_c h``."""


def _choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not available; use one of: {', '.join(choices)}")
    return value


def _as_matrix(output: Tensor) -> Tensor:
    return output.unsqueeze(-1) if output.dim() == 1 else output


def output_map(output: Tensor, kind: str = "logits") -> Tensor:
    """The compared output ``h(f)``: centred logits or probabilities.

    Args:
        output: ``[B, C]`` logits, or ``[B]`` for a single output.
        kind: ``"logits"`` or ``"probabilities"``.

    Returns:
        ``[B, C]`` (``[B, 1]`` for a single output).
    """
    output = _as_matrix(output)
    single = output.shape[-1] == 1
    if kind == "logits":
        return output if single else output - output.mean(dim=-1, keepdim=True)
    if kind == "probabilities":
        return torch.sigmoid(output) if single else F.softmax(output, dim=-1)
    raise ValueError(f"output {kind!r} is not available; use one of: {', '.join(OUTPUTS)}")


def _independent_outputs(output: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Scalars ``s [B, K]`` and a mixing matrix ``M [C, K]`` with ``d h = M d s``.

    ``C`` outputs of either map have ``K = C − 1`` independent components (one for a single
    output), so the input-gradient implementation needs ``K`` backward passes: one for a binary
    classifier.
    """
    output = _as_matrix(output)
    classes = output.shape[-1]
    if classes == 1:
        scalars = output if kind == "logits" else torch.sigmoid(output)
        return scalars, output.new_ones(1, 1)

    eye = torch.eye(classes - 1, dtype=output.dtype, device=output.device)
    if kind == "logits":
        scalars = output[:, 1:] - output[:, :1]
        embedding = torch.cat((output.new_zeros(1, classes - 1), eye))
        centring = torch.eye(classes, dtype=output.dtype, device=output.device) - 1.0 / classes
        return scalars, centring @ embedding
    scalars = F.softmax(output, dim=-1)[:, 1:]
    return scalars, torch.cat((-output.new_ones(1, classes - 1), eye))


@dataclass
class LieDerivatives:
    """Lie derivatives of a jet function's outputs along a set of generators.

    Attributes:
        output: ``[B, C]`` (or ``[B]``) raw output ``f(p4, mask)``, differentiable in the
            function's parameters.
        derivatives: ``[B, A, C]``, ``L_a h_c`` for every jet, generator and mapped output.
        gradient_norm_squared: ``[B]``, ``Σ_c |∇_p h_c|²`` in GeV⁻² (None unless requested).
    """

    output: Tensor
    derivatives: Tensor
    gradient_norm_squared: Tensor | None = None


def tangents(generators: Tensor, p4: Tensor) -> Tensor:
    """``G_a p_i`` for every generator, jet and constituent.

    Args:
        generators: ``[B, A, 4, 4]``.
        p4: ``[B, N, 4]``.

    Returns:
        ``[A, B, N, 4]`` in GeV (zero where ``p4`` is zero).
    """
    return torch.einsum("bamn,bin->abim", generators.to(p4.dtype), p4)


def _input_gradients(function: JetFunction, p4: Tensor, mask: Tensor, kind: str, create_graph):
    """``(output, mixing, ∇_p s_k [B, K, N, 4])`` from one forward and ``K`` backward passes."""
    p4 = p4 if p4.requires_grad else p4.detach().requires_grad_(True)
    output = function(p4, mask)
    scalars, mixing = _independent_outputs(output, kind)
    gradients = []
    for k in range(scalars.shape[-1]):
        # Jets do not interact inside the network, so the gradient of the batch sum is the
        # per-jet gradient for every jet at once.
        (gradient,) = torch.autograd.grad(
            scalars[:, k].sum(), p4, create_graph=create_graph, retain_graph=True
        )
        gradients.append(gradient)
    return output, mixing, torch.stack(gradients, dim=1)


def _gradient_norm_squared(gradients: Tensor, mixing: Tensor) -> Tensor:
    mapped = torch.einsum("ck,bkim->bcim", mixing, gradients)
    return mapped.square().sum(dim=(1, 2, 3))


def lie_derivatives(
    function: JetFunction,
    p4: Tensor,
    mask: Tensor,
    generators: Tensor,
    output: str = "logits",
    implementation: str = "input_gradient",
    with_gradient_norm: bool = False,
    create_graph: bool = True,
) -> LieDerivatives:
    """Lie derivatives ``L_a h(f)(p) = d/dε h(f(exp(ε G_a) p, mask))|₀`` of a jet function.

    Two implementations give the same numbers:

    - ``"jvp"``: forward-mode derivatives (``torch.func.jvp``) along every tangent ``G_a p``,
      batched over generators with ``torch.func.vmap``; the primal is evaluated once.
    - ``"input_gradient"``: one reverse pass for ``∇_p s`` per independent output (one for a
      binary classifier), then ``L_a s = Σ_{μν} (G_a)_{μν} Σ_i (∇_{p_i} s)_μ (p_i)_ν``: the
      per-jet moment matrix is contracted with every generator at once, so the cost does not
      grow with the number of generators.

    With ``create_graph`` the result is differentiable in the function's parameters (a double
    backward for the input-gradient implementation, reverse-over-forward for the JVP).

    Args:
        function: ``f(p4, mask) -> [B, C]`` or ``[B]``; jets must not interact inside it.
        p4: ``[B, N, 4]`` (E, px, py, pz) in GeV, zero where masked.
        mask: ``[B, N]`` bool.
        generators: ``[B, A, 4, 4]`` (see :meth:`Subgroup.matrices`).
        output: the output map, ``"logits"`` or ``"probabilities"``.
        implementation: ``"jvp"`` or ``"input_gradient"``.
        with_gradient_norm: also return ``Σ_c |∇_p h_c|²`` per jet (one reverse pass per
            independent output, also for the JVP).
        create_graph: keep the graph of the derivatives for a backward pass.

    Returns:
        :class:`LieDerivatives`.

    Limitation: functions that couple the jets of a batch (batch normalisation in training
    mode) get the derivative of the batch sum, not per-jet derivatives.
    """
    _choice("output", output, OUTPUTS)
    _choice("implementation", implementation, IMPLEMENTATIONS)

    if implementation == "input_gradient":
        value, mixing, gradients = _input_gradients(function, p4, mask, output, create_graph)
        moments = torch.einsum("bkim,bin->bkmn", gradients, p4.detach())
        independent = torch.einsum("bamn,bkmn->bak", generators.to(p4.dtype), moments)
        derivatives = torch.einsum("bak,ck->bac", independent, mixing)
        norm = _gradient_norm_squared(gradients, mixing) if with_gradient_norm else None
        return LieDerivatives(value, derivatives, norm)

    value, derivatives = _jvp_derivatives(function, p4, mask, generators, output, create_graph)
    norm = None
    if with_gradient_norm:
        _, mixing, gradients = _input_gradients(function, p4, mask, output, create_graph)
        norm = _gradient_norm_squared(gradients, mixing)
    return LieDerivatives(value, derivatives, norm)


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``F.layer_norm`` written with elementary operations."""
    dims = tuple(range(-len(normalized_shape), 0))
    mean = input.mean(dim=dims, keepdim=True)
    variance = (input - mean).square().mean(dim=dims, keepdim=True)
    normalised = (input - mean) * torch.rsqrt(variance + eps)
    if weight is not None:
        normalised = normalised * weight
    if bias is not None:
        normalised = normalised + bias
    return normalised


class _ComposedLayerNorm(TorchFunctionMode):
    """Replaces ``F.layer_norm`` by its elementary composition.

    The forward-mode formula of the fused layer norm treats its saved mean and inverse standard
    deviation as constants, so reverse-mode gradients of its tangent (reverse-over-forward, what
    training on a JVP penalty needs) come out wrong; the composition is differentiated exactly.

    Limitation: only ``F.layer_norm`` is replaced; other fused normalisations (group or batch
    norm) in a network are differentiated with their own forward-mode formulas.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _jvp_derivatives(function, p4, mask, generators, output, create_graph):
    """``(f(p4), L_a h [B, A, C])`` by a forward-mode pass vmapped over generators."""
    p4 = p4.detach()

    def mapped(p: Tensor) -> tuple[Tensor, Tensor]:
        value = function(p, mask)
        return output_map(value, output), value

    def along(tangent: Tensor) -> tuple[Tensor, Tensor]:
        _, derivative, value = torch.func.jvp(mapped, (p4,), (tangent,), has_aux=True)
        return derivative, value

    context = nullcontext() if create_graph else torch.no_grad()
    with context, _ComposedLayerNorm():
        # One dropout mask for all generators, the one the primal (the logits) is computed with.
        lanes = torch.func.vmap(along, out_dims=(1, None), randomness="same")
        derivatives, value = lanes(tangents(generators, p4))
    return value, derivatives


def random_directions(
    num_jets: int,
    num_generators: int,
    num_directions: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random directions ``c`` in the Lie algebra with ``E[c cᵀ] = I``, independently per jet.

    Each block of ``A = num_generators`` consecutive directions of a jet is a random orthonormal
    frame (Haar-distributed) scaled by ``√A``: every direction is uniform on the sphere of radius
    ``√A``, so ``E[(c·v)²] = |v|²`` for any ``v``, and the directions of one block are mutually
    orthogonal, so the mean of ``(c_k·v)²`` over a whole block is exactly ``|v|²``. More than
    ``A`` directions take further independent frames.

    Args:
        num_jets: ``B``.
        num_generators: ``A``.
        num_directions: ``K``.
        generator: random-number generator on the CPU; the global one when None.
        device: where the result goes.

    Returns:
        ``[B, K, A]`` float64.
    """
    if num_directions < 1:
        raise ValueError(f"num_directions must be at least 1; got {num_directions}")
    frames = math.ceil(num_directions / num_generators)
    shape = (num_jets, frames, num_generators, num_generators)
    gaussian = torch.randn(shape, dtype=torch.float64, generator=generator)
    orthonormal, triangular = torch.linalg.qr(gaussian)
    # Fixing the signs of the triangular factor's diagonal makes the frame Haar-distributed.
    orthonormal = orthonormal * torch.diagonal(triangular, dim1=-2, dim2=-1).sign().unsqueeze(-2)
    rows = orthonormal.mT.reshape(num_jets, frames * num_generators, num_generators)
    return (math.sqrt(num_generators) * rows[:, :num_directions]).to(device)


def directional_differences(
    function: JetFunction,
    p4: Tensor,
    mask: Tensor,
    generators: Tensor,
    directions: Tensor,
    output: str = "logits",
    step: float | None = None,
    scheme: str = "forward",
) -> LieDerivatives:
    """Finite-difference Lie derivatives ``L_c h`` along directions ``c`` in the Lie algebra.

    With ``G_c = Σ_a c_a G_a`` (so ``L_c h = Σ_a c_a L_a h``) and the step ``ε``:

    - ``"forward"``: ``(h(f(exp(ε G_c) p)) − h(f(p))) / ε = L_c h + (ε/2) L_c² h + O(ε²)``;
    - ``"central"``: ``(h(f(exp(ε G_c) p)) − h(f(exp(−ε G_c) p))) / 2ε
      = L_c h + (ε²/6) L_c³ h + O(ε⁴)``.

    The function is called once, on ``p`` followed by every transformed copy: a batch of
    ``(1 + K) B`` jets for the forward scheme and ``(1 + 2K) B`` for the central one. The result
    is differentiable in the function's parameters through that single call, so training on it
    costs one ordinary backward pass of the enlarged batch and no double backward. The group
    parameter of a copy is ``ε |c|`` (``ε √A`` for :func:`random_directions`); the truncation
    error grows with it and with the curvature of the network, the round-off as ``1/ε``.

    Args:
        function: ``f(p4, mask) -> [B, C]`` or ``[B]``; jets must not interact inside it.
        p4: ``[B, N, 4]`` (E, px, py, pz) in GeV, zero where masked.
        mask: ``[B, N]`` bool.
        generators: ``[B, A, 4, 4]`` (see :meth:`Subgroup.matrices`).
        directions: ``[B, K, A]`` coefficients ``c`` of each direction.
        output: the output map, ``"logits"`` or ``"probabilities"``.
        step: ``ε``, dimensionless (radians for rotations, rapidity for boosts); None takes
            :data:`DEFAULT_DIFFERENCE_STEPS` of the scheme.
        scheme: ``"forward"`` or ``"central"``.

    Returns:
        :class:`LieDerivatives` with ``derivatives [B, K, C]`` along the ``K`` directions and the
        output on the untransformed jets.

    Limitation: under float16 or bfloat16 autocast the round-off, about ``10⁴`` times that of
    float32, dominates the truncation error at every usable step.
    """
    _choice("output", output, OUTPUTS)
    _choice("scheme", scheme, SCHEMES)
    step = DEFAULT_DIFFERENCE_STEPS[scheme] if step is None else step
    if not step > 0:
        raise ValueError(f"step must be positive; got {step}")
    batch, num_directions = p4.shape[0], directions.shape[1]

    algebra = step * torch.einsum("bka,bamn->bkmn", directions.double(), generators.double())
    if scheme == "central":
        algebra = torch.cat((algebra, -algebra), dim=1)
    elements = torch.linalg.matrix_exp(algebra).to(p4.dtype)
    moved = torch.einsum("bkmn,bin->kbim", elements, p4) * mask[:, :, None].to(p4.dtype)

    copies = moved.shape[0]
    value = function(torch.cat((p4.unsqueeze(0), moved)).flatten(0, 1), mask.repeat(1 + copies, 1))
    mapped = output_map(value, output).unflatten(0, (1 + copies, batch))

    if scheme == "forward":
        derivatives = (mapped[1:] - mapped[:1]) / step
    else:
        derivatives = (mapped[1 : 1 + num_directions] - mapped[1 + num_directions :]) / (2 * step)
    return LieDerivatives(value[:batch], derivatives.transpose(0, 1))


_DROPOUT = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def _active_dropout(network: JetFunction) -> list[str]:
    """Names of the dropout modules of ``network`` that drop anything in its current mode."""
    if not isinstance(network, nn.Module):
        return []
    return [
        name or type(module).__name__
        for name, module in network.named_modules()
        if isinstance(module, _DROPOUT) and module.training and module.p > 0
    ]


class SoftSymmetryPenalty(SymmetryPenalty):
    """Penalises the change of a classifier's output under a subgroup of the Lorentz group.

    ``mode="sampled"``: one group element ``Λ = exp(Σ_a c_a G_a)`` per jet, with each
    rotation angle ``c_a`` uniform in ``±max_angle`` and each rapidity uniform in
    ``±max_rapidity``; the penalty is the mean over jets of ``|h(f(Λ p)) − h(f(p))|²``, and the
    network sees ``p`` and ``Λ p`` in one forward pass over the concatenated batch (features are
    recomputed from the transformed four-momenta inside the network).

    ``mode="infinitesimal"``: the mean over jets of ``Σ_a |L_a h|²``, or with ``normalise`` of
    ``Σ_a |L_a h|² / |∇_p h|²`` (units GeV², since ``G_a p`` is a momentum). The Lie derivatives
    come from :func:`lie_derivatives`; ``implementation="auto"`` takes the measured faster one
    for the network class (:data:`MEASURED_IMPLEMENTATION`). Attention runs under the math
    scaled-dot-product kernel, which supports double backward and forward-mode derivatives.

    ``implementation="finite_difference"`` estimates the same penalty instead of computing it:
    per jet, ``K = num_directions`` random directions ``c_k`` in the Lie algebra of the selected
    generators (:meth:`sample_directions`, with ``E[c cᵀ] = I``) and the mean over ``k`` of
    ``|D_k|²``, where ``D_k`` is the finite difference of ``h`` along ``exp(ε G_{c_k})``
    (:func:`directional_differences`). Since ``E[(c·v)²] = |v|²``, the estimate of
    ``Σ_a |L_a h|²`` is unbiased up to the truncation error, ``O(ε)`` for the forward scheme and
    ``O(ε²)`` for the central one. Its variance per jet, for ``K ≤ A`` orthogonal directions and
    ``V = Σ_c v_c v_cᵀ`` with ``(v_c)_a = L_a h_c``, is
    ``2 (A − K)(A tr V² − (tr V)²) / (K (A − 1)(A + 2))``; it vanishes for ``K = A``, and for a
    binary classifier (``V`` of rank one) it is ``2 (A − K) / (K (A + 2))`` times the squared
    penalty. The network sees ``p`` and the transformed copies in one forward pass over a batch
    of ``(1 + K) B`` jets (``(1 + 2K) B`` for the central scheme) and is differentiated once, so
    the forward scheme with one direction costs about what the sampled mode costs. It runs with
    the default attention kernel, as the plain step does. ``"auto"`` never chooses it.

    The weight is zero before ``start_step`` and rises linearly to ``weight`` over
    ``warmup_steps`` optimisation steps; the classifier skips the penalty while it is zero.

    Args:
        weight: λ after the warm-up.
        group: a named subgroup (see :data:`~softsymlit.symmetry.generators.SUBGROUPS`):
            ``lorentz``, ``so3``, ``so2_z``, ``boost_z``, ``jet_axis_rotation``,
            ``jet_axis_boost``.
        generators: an explicit list of generator names (``Lx, Ly, Lz, Kx, Ky, Kz, L_jet,
            K_jet``); overrides ``group``.
        mode: ``"sampled"`` or ``"infinitesimal"``.
        output: ``"logits"`` (centred) or ``"probabilities"``.
        max_angle: half-width of sampled rotation angles, radians.
        max_rapidity: half-width of sampled rapidities.
        normalise: divide the infinitesimal penalty of each jet by ``|∇_p h|²``.
        implementation: ``"auto"``, ``"jvp"``, ``"input_gradient"`` or ``"finite_difference"``
            (infinitesimal mode).
        num_directions: random directions per jet for ``"finite_difference"``.
        difference_step: ``ε`` for ``"finite_difference"``, dimensionless; None takes
            :data:`DEFAULT_DIFFERENCE_STEPS` of the scheme.
        difference_scheme: ``"forward"`` or ``"central"`` for ``"finite_difference"``.
        warmup_steps: length of the linear ramp of the weight, in optimisation steps.
        start_step: first step of the ramp; the weight is zero before it.

    Raises:
        ValueError: for an unknown choice, a negative weight, range or step count, a
            non-positive ``difference_step`` or ``num_directions``, or ``normalise`` with
            ``"finite_difference"`` (the gradient norm needs the double backward the estimator
            avoids). The finite-difference penalty also raises when the network has dropout
            modules that are active: the copies of a jet would see different masks, and their
            difference divided by ``ε`` would be dominated by the dropout noise.

    Limitation: in sampled mode both copies of a jet go through one forward pass, so layers
    that couple the jets of a batch (batch normalisation) see a doubled batch, and dropout
    draws independent masks for the two copies.

    Limitation: on the CPU the exact infinitesimal penalty costs about 3.7 plain training steps
    on the transformer and 3 on the particle-flow network (``benchmarks/symmetry_step_time.py``):
    the double backward through attention, layer norm and GELU is several times dearer than
    their backward; the sampled penalty costs about 2, as does the finite-difference estimate with
    the forward scheme and one direction (3 with the central scheme), whatever the number of
    generators.

    Limitation: the finite-difference estimator sees only dropout modules; dropout applied
    functionally inside a module (``F.dropout``, attention dropout) is not detected.

    Example::

        penalty = SoftSymmetryPenalty(weight=0.1, group="lorentz", mode="infinitesimal")
        logits, value = penalty(network, p4, mask)
        loss = task_loss + penalty.weight_at(step) * value
    """

    def __init__(
        self,
        weight: float = 0.1,
        group: str = "lorentz",
        generators: list[str] | None = None,
        mode: str = "sampled",
        output: str = "logits",
        max_angle: float = math.pi,
        max_rapidity: float = 0.5,
        normalise: bool = False,
        implementation: str = "auto",
        warmup_steps: int = 0,
        start_step: int = 0,
        num_directions: int = 1,
        difference_step: float | None = None,
        difference_scheme: str = "forward",
    ) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be non-negative; got {weight}")
        if warmup_steps < 0 or start_step < 0:
            raise ValueError(
                f"warmup_steps and start_step must be non-negative; got {warmup_steps}, "
                f"{start_step}"
            )
        if max_angle < 0 or max_rapidity < 0:
            raise ValueError(
                f"max_angle and max_rapidity must be non-negative; got {max_angle}, {max_rapidity}"
            )
        self.weight = float(weight)
        self.subgroup = Subgroup(group, generators)
        self.mode = _choice("mode", mode, MODES)
        self.output = _choice("output", output, OUTPUTS)
        self.implementation = _choice(
            "implementation", implementation, ("auto", *IMPLEMENTATIONS, *ESTIMATORS)
        )
        if num_directions < 1:
            raise ValueError(f"num_directions must be at least 1; got {num_directions}")
        if difference_step is not None and not difference_step > 0:
            raise ValueError(f"difference_step must be positive; got {difference_step}")
        if normalise and implementation in ESTIMATORS:
            raise ValueError(
                f"normalise=True needs |∇_p h|², an input gradient differentiated twice, which "
                f"implementation {implementation!r} exists to avoid; use one of: "
                f"{', '.join(IMPLEMENTATIONS)}"
            )
        self.num_directions = int(num_directions)
        self.difference_scheme = _choice("difference_scheme", difference_scheme, SCHEMES)
        self.difference_step = float(
            DEFAULT_DIFFERENCE_STEPS[difference_scheme]
            if difference_step is None
            else difference_step
        )
        self.max_angle = float(max_angle)
        self.max_rapidity = float(max_rapidity)
        self.normalise = normalise
        self.warmup_steps = warmup_steps
        self.start_step = start_step
        self._announced: set[str] = set()

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, group={self.subgroup.label!r}, mode={self.mode!r}, "
            f"output={self.output!r}"
        )

    def weight_at(self, step: int) -> float:
        """λ at optimisation step ``step``: 0 before ``start_step``, then a linear ramp."""
        if self.weight == 0.0 or step < self.start_step:
            return 0.0
        if self.warmup_steps == 0:
            return self.weight
        return self.weight * min(1.0, (step - self.start_step) / self.warmup_steps)

    def resolve_implementation(self, network: JetFunction) -> str:
        """The Lie-derivative implementation used for ``network``."""
        if self.implementation != "auto":
            return self.implementation
        name = type(getattr(network, "module", network)).__name__
        chosen = MEASURED_IMPLEMENTATION.get(name, DEFAULT_IMPLEMENTATION)
        if name not in self._announced:
            self._announced.add(name)
            log.info("Lie derivatives of %s use the %s implementation", name, chosen)
        return chosen

    def sample_coefficients(self, p4: Tensor, mask: Tensor) -> Tensor:
        """Group parameters ``[B, A]`` (float64) for the sampled mode, from the global generator
        of random numbers; override to control the draws (a fixed seed per jet, say)."""
        return sample_coefficients(
            p4.shape[0], self.subgroup.kinds, self.max_angle, self.max_rapidity, device=p4.device
        )

    def sample_directions(self, p4: Tensor, mask: Tensor) -> Tensor:
        """Directions ``[B, K, A]`` (float64) for the finite-difference estimator, from the global
        generator of random numbers (see :func:`random_directions`); override to control the
        draws."""
        return random_directions(
            p4.shape[0], len(self.subgroup), self.num_directions, device=p4.device
        )

    def forward(self, network: JetFunction, p4: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(network(p4, mask), penalty)``.

        Args:
            network: ``network(p4, mask) -> logits [B, C]`` (or ``[B]``).
            p4: ``[B, N, 4]`` (E, px, py, pz) in GeV, zero where masked.
            mask: ``[B, N]`` bool.

        Returns:
            The logits on the untransformed batch and the unweighted scalar penalty.
        """
        generators = self.subgroup.matrices(p4, mask)
        if self.mode == "sampled":
            return self._sampled(network, p4, mask, generators)
        return self._infinitesimal(network, p4, mask, generators)

    def _sampled(self, network, p4, mask, generators):
        batch = p4.shape[0]
        elements = exponential(generators, self.sample_coefficients(p4, mask))
        transformed = apply(elements, p4, mask)

        output = network(torch.cat((p4, transformed)), torch.cat((mask, mask)))
        original, moved = output[:batch], output[batch:]

        difference = output_map(moved, self.output) - output_map(original, self.output)
        return original, difference.square().sum(dim=-1).mean()

    def _infinitesimal(self, network, p4, mask, generators):
        implementation = self.resolve_implementation(network)
        if implementation == "finite_difference":
            return self._finite_difference(network, p4, mask, generators)
        with sdpa_kernel(SDPBackend.MATH):
            result = lie_derivatives(
                network, p4, mask, generators, self.output, implementation, self.normalise
            )

        per_jet = result.derivatives.square().sum(dim=(1, 2))
        if self.normalise:
            # The floor only turns 0/0 (a locally constant output) into 0.
            floor = torch.finfo(per_jet.dtype).tiny
            per_jet = per_jet / result.gradient_norm_squared.clamp_min(floor)
        return result.output, per_jet.mean()

    def _finite_difference(self, network, p4, mask, generators):
        dropout = _active_dropout(network)
        if dropout:
            raise ValueError(
                f"the finite-difference penalty needs the same dropout mask for every copy of a "
                f"jet; found active dropout in {', '.join(dropout)}; set their probability to 0 "
                f"or use an exact implementation: {', '.join(IMPLEMENTATIONS)}"
            )
        result = directional_differences(
            network,
            p4,
            mask,
            generators,
            self.sample_directions(p4, mask),
            self.output,
            self.difference_step,
            self.difference_scheme,
        )
        per_jet = result.derivatives.square().sum(dim=-1).mean(dim=1)
        return result.output, per_jet.mean()


__all__ = [
    "DEFAULT_DIFFERENCE_STEPS",
    "DEFAULT_IMPLEMENTATION",
    "ESTIMATORS",
    "IMPLEMENTATIONS",
    "MEASURED_IMPLEMENTATION",
    "MODES",
    "OUTPUTS",
    "SCHEMES",
    "LieDerivatives",
    "SoftSymmetryPenalty",
    "directional_differences",
    "lie_derivatives",
    "output_map",
    "random_directions",
    "tangents",
]
