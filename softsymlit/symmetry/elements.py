"""Finite Lorentz transformations: closed forms, the exponential map, sampling and application.

Conventions are those of :mod:`softsymlit.symmetry.generators`: (E, px, py, pz) in GeV, metric
``diag(+1, −1, −1, −1)``, active transformations, right-handed rotation angles in radians and
boosts parametrised by rapidity. Rapidities along one direction add,
``boost(n, ζ₁) boost(n, ζ₂) = boost(n, ζ₁ + ζ₂)``, whereas the velocities
``β = tanh ζ`` combine relativistically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from softsymlit.symmetry.generators import BOOST, METRIC, ROTATION


def minkowski_dot(a: Tensor, b: Tensor) -> Tensor:
    """``a·b = a₀b₀ − a⃗·b⃗`` over the last dimension of ``[..., 4]`` tensors."""
    return a[..., 0] * b[..., 0] - (a[..., 1:] * b[..., 1:]).sum(dim=-1)


def invariant_mass_squared(p4: Tensor, mask: Tensor) -> Tensor:
    """``M² = P·P`` of the jet ``P = Σ_i p_i`` over unmasked constituents; ``[B]`` in GeV²."""
    jet = (p4 * mask.unsqueeze(-1).to(p4.dtype)).sum(dim=1)
    return minkowski_dot(jet, jet)


def rotation(axis: Tensor, angle: Tensor) -> Tensor:
    """Right-handed rotation by ``angle`` about ``axis`` (Rodrigues' formula).

    Args:
        axis: ``[..., 3]`` unit vectors.
        angle: ``[...]`` in radians.

    Returns:
        ``[..., 4, 4]``, equal to ``exp(angle · Σ_i axis_i L_i)``.
    """
    cos, sin = torch.cos(angle)[..., None, None], torch.sin(angle)[..., None, None]
    cross = torch.zeros(*axis.shape[:-1], 3, 3, dtype=axis.dtype, device=axis.device)
    x, y, z = axis.unbind(-1)
    cross[..., 0, 1], cross[..., 0, 2], cross[..., 1, 2] = -z, y, -x
    cross[..., 1, 0], cross[..., 2, 0], cross[..., 2, 1] = z, -y, x
    outer = axis[..., :, None] * axis[..., None, :]
    spatial = cos * torch.eye(3, dtype=axis.dtype, device=axis.device) + sin * cross
    spatial = spatial + (1.0 - cos) * outer

    element = torch.zeros(*axis.shape[:-1], 4, 4, dtype=axis.dtype, device=axis.device)
    element[..., 0, 0] = 1.0
    element[..., 1:, 1:] = spatial
    return element


def boost(direction: Tensor, rapidity: Tensor) -> Tensor:
    """Boost with ``rapidity`` along ``direction``.

    Args:
        direction: ``[..., 3]`` unit vectors.
        rapidity: ``[...]``; the boost velocity is ``β = tanh(rapidity)``.

    Returns:
        ``[..., 4, 4]``, equal to ``exp(rapidity · Σ_i direction_i K_i)``:
        ``E' = cosh ζ E + sinh ζ n⃗·p⃗`` and ``p⃗' = p⃗ + ((cosh ζ − 1) n⃗·p⃗ + sinh ζ E) n⃗``.
    """
    cosh, sinh = torch.cosh(rapidity), torch.sinh(rapidity)
    outer = direction[..., :, None] * direction[..., None, :]
    shape = (*direction.shape[:-1], 4, 4)
    element = torch.zeros(shape, dtype=direction.dtype, device=direction.device)
    element[..., 0, 0] = cosh
    element[..., 0, 1:] = sinh[..., None] * direction
    element[..., 1:, 0] = sinh[..., None] * direction
    element[..., 1:, 1:] = torch.eye(3, dtype=direction.dtype, device=direction.device)
    element[..., 1:, 1:] += (cosh - 1.0)[..., None, None] * outer
    return element


def exponential(generators: Tensor, coefficients: Tensor) -> Tensor:
    """The group element ``exp(Σ_a c_a G_a)``.

    The matrix exponential is evaluated in float64 and cast back, so that elements keep the
    metric to float32 round-off even for large parameters.

    Args:
        generators: ``[..., A, 4, 4]``.
        coefficients: ``[..., A]``: rotation angles in radians and rapidities.

    Returns:
        ``[..., 4, 4]`` in the dtype of ``generators``.
    """
    algebra = torch.einsum("...a,...amn->...mn", coefficients.double(), generators.double())
    return torch.linalg.matrix_exp(algebra).to(generators.dtype)


def apply(elements: Tensor, p4: Tensor, mask: Tensor) -> Tensor:
    """Transform every constituent of every jet, ``p_i ↦ Λ p_i``, keeping padded slots zero.

    Args:
        elements: ``[B, 4, 4]``, one element per jet.
        p4: ``[B, N, 4]`` (E, px, py, pz) in GeV.
        mask: ``[B, N]`` bool.

    Returns:
        ``[B, N, 4]``, exactly zero where ``mask`` is False.
    """
    transformed = torch.einsum("bmn,bin->bim", elements.to(p4.dtype), p4)
    return transformed * mask.unsqueeze(-1).to(p4.dtype)


def parameter_ranges(kinds: Sequence[str], max_angle: float, max_rapidity: float) -> Tensor:
    """Per-generator half-width of the parameter range: ``max_angle`` for rotations and
    ``max_rapidity`` for boosts; ``[A]`` float64."""
    ranges = {ROTATION: max_angle, BOOST: max_rapidity}
    return torch.tensor([ranges[kind] for kind in kinds], dtype=torch.float64)


def sample_coefficients(
    num_jets: int,
    kinds: Sequence[str],
    max_angle: float = math.pi,
    max_rapidity: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw group parameters uniformly in ``[−range, range]``, independently per jet and
    generator.

    Args:
        num_jets: ``B``.
        kinds: ``"rotation"`` or ``"boost"`` per generator (see :class:`Subgroup.kinds`).
        max_angle: half-width of every rotation angle, radians.
        max_rapidity: half-width of every rapidity.
        generator: random-number generator on the CPU; the global one when None.
        device: where the result goes.

    Returns:
        ``[B, A]`` float64.
    """
    ranges = parameter_ranges(kinds, max_angle, max_rapidity)
    uniform = torch.rand(num_jets, len(kinds), dtype=torch.float64, generator=generator)
    return ((2.0 * uniform - 1.0) * ranges).to(device)


def is_lorentz(elements: Tensor, atol: float = 1e-9) -> bool:
    """Whether ``Λᵀ η Λ = η`` for every ``[..., 4, 4]`` element."""
    metric = METRIC.to(elements)
    preserved = elements.mT @ metric @ elements
    return bool(torch.allclose(preserved, metric.expand_as(elements), atol=atol))


__all__ = [
    "apply",
    "boost",
    "exponential",
    "invariant_mass_squared",
    "is_lorentz",
    "minkowski_dot",
    "parameter_ranges",
    "rotation",
    "sample_coefficients",
]
