"""Perturbations of jet constituents, for measuring how a tagger's output reacts to its inputs.

Each perturbation maps a batch ``(p4, mask)`` — ``p4 [B, N, 4]`` (E, px, py, pz) in GeV, zero
where masked, ``mask [B, N]`` bool — and a strength to a new ``(p4, mask)`` with the same
conventions: padded slots exactly zero, real constituents first in every jet, and never an empty
jet. Strength 0 returns the inputs unchanged (the same values, new tensors). Randomness comes
only from the ``generator`` argument, never from the global RNG.

Kinematics use the transverse momentum pT, the pseudorapidity η (beam along z), the azimuth φ
and the mass m of each constituent; a perturbation of pT, η or φ keeps the others and the mass.

=====================  ========================================================================
name                   strength
=====================  ========================================================================
``pt_smear``           relative Gaussian width: ``pT → pT · max(1 + s·g, 10⁻³)``
``eta_smear``          absolute Gaussian width: ``η → η + s·g``
``phi_smear``          absolute Gaussian width: ``φ → φ + s·g``
``energy_scale``       overall scale shift: ``p → (1 + s) · p`` for every constituent
``soft_drop``          pT threshold in GeV: constituents below it are removed
``random_drop``        probability of removing each constituent
``collinear_split``    probability of splitting each constituent into ``z p`` and ``(1 − z) p``,
                       ``z ~ U(0.1, 0.5)`` (the jet four-momentum is unchanged)
``lorentz``            per jet, a rotation by ``U(−s, s)`` rad about a random axis followed by
                       a boost of rapidity ``U(−s, s)`` along a random direction
=====================  ========================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from softsymlit.symmetry import apply, boost, rotation

Perturbation = Callable[[Tensor, Tensor, float, torch.Generator], tuple[Tensor, Tensor]]


def _kinematics(p4: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """pT, η, φ and m of ``[..., 4]`` momenta (finite placeholders where pT = 0)."""
    energy, px, py, pz = p4.unbind(-1)
    pt = torch.sqrt(px.square() + py.square())
    safe_pt = torch.where(pt > 0, pt, torch.ones_like(pt))
    eta = torch.asinh(pz / safe_pt)
    phi = torch.atan2(py, px)
    mass = torch.sqrt((energy.square() - px.square() - py.square() - pz.square()).clamp_min(0))
    return pt, eta, phi, mass


def _four_momentum(pt: Tensor, eta: Tensor, phi: Tensor, mass: Tensor) -> Tensor:
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)
    energy = torch.sqrt(px.square() + py.square() + pz.square() + mass.square())
    return torch.stack((energy, px, py, pz), dim=-1)


def _gaussian(like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(like.shape, generator=generator, dtype=torch.float64).to(like)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(like)


def _masked(p4: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.unsqueeze(-1), p4, torch.zeros_like(p4))


def _compact(p4: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move real constituents to the front of each jet (stable), zero the rest."""
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    mask = torch.gather(mask, 1, order)
    p4 = torch.gather(p4, 1, order.unsqueeze(-1).expand_as(p4))
    return _masked(p4, mask), mask


def _keep_hardest(drop: Tensor, p4: Tensor, mask: Tensor) -> Tensor:
    """``drop`` [B, N] with the hardest constituent of every jet that would be emptied kept."""
    pt = torch.where(mask, torch.hypot(p4[..., 1], p4[..., 2]), torch.full_like(p4[..., 0], -1))
    hardest = torch.nn.functional.one_hot(pt.argmax(dim=1), mask.shape[1]).bool()
    emptied = (mask & ~drop).sum(dim=1) == 0
    return drop & ~(hardest & emptied.unsqueeze(1))


def smear_pt(p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator):
    """Relative Gaussian smearing of every constituent's pT (η, φ, m kept)."""
    if strength == 0:
        return p4.clone(), mask.clone()
    pt, eta, phi, mass = _kinematics(p4)
    factor = (1.0 + strength * _gaussian(pt, generator)).clamp_min(1e-3)
    return _masked(_four_momentum(pt * factor, eta, phi, mass), mask), mask.clone()


def smear_eta(p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator):
    """Absolute Gaussian smearing of every constituent's η (pT, φ, m kept)."""
    if strength == 0:
        return p4.clone(), mask.clone()
    pt, eta, phi, mass = _kinematics(p4)
    eta = eta + strength * _gaussian(eta, generator)
    return _masked(_four_momentum(pt, eta, phi, mass), mask), mask.clone()


def smear_phi(p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator):
    """Absolute Gaussian smearing of every constituent's φ (pT, η, m kept)."""
    if strength == 0:
        return p4.clone(), mask.clone()
    pt, eta, phi, mass = _kinematics(p4)
    phi = phi + strength * _gaussian(phi, generator)
    return _masked(_four_momentum(pt, eta, phi, mass), mask), mask.clone()


def scale_energy(p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator):
    """Scale every four-momentum by ``1 + strength`` (a jet energy-scale shift)."""
    if strength == 0:
        return p4.clone(), mask.clone()
    return _masked(p4 * (1.0 + strength), mask), mask.clone()


def drop_soft(p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator):
    """Remove constituents with pT below ``strength`` GeV, keeping the hardest one of a jet that
    would otherwise be emptied."""
    if strength == 0:
        return p4.clone(), mask.clone()
    drop = mask & (torch.hypot(p4[..., 1], p4[..., 2]) < strength)
    return _compact(p4, mask & ~_keep_hardest(drop, p4, mask))


def drop_random(p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator):
    """Remove each constituent with probability ``strength``, keeping the hardest one of a jet
    that would otherwise be emptied."""
    if strength == 0:
        return p4.clone(), mask.clone()
    drop = mask & (_uniform(tuple(mask.shape), generator, p4) < strength)
    return _compact(p4, mask & ~_keep_hardest(drop, p4, mask))


def split_collinear(p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator):
    """Split each constituent with probability ``strength`` into ``z p`` (in place) and
    ``(1 − z) p`` (appended after the jet's constituents), ``z ~ U(0.1, 0.5)``; the tensors grow
    along N when a jet needs more slots."""
    if strength == 0:
        return p4.clone(), mask.clone()
    batch, length = mask.shape
    split = mask & (_uniform((batch, length), generator, p4) < strength)
    z = 0.1 + 0.4 * _uniform((batch, length), generator, p4)
    counts, extra = mask.sum(dim=1), split.sum(dim=1)
    new_length = max(length, int((counts + extra).max()))

    kept = torch.where(split.unsqueeze(-1), p4 * z.unsqueeze(-1), p4)
    out = p4.new_zeros(batch, new_length, 4)
    out[:, :length] = kept
    new_mask = torch.zeros(batch, new_length, dtype=torch.bool, device=mask.device)
    new_mask[:, :length] = mask

    # The partner of the j-th split constituent of a jet goes to slot count + j of that jet.
    slot = counts.unsqueeze(1) + torch.cumsum(split.long(), dim=1) - 1
    jets, sources = split.nonzero(as_tuple=True)
    targets = slot[jets, sources]
    out[jets, targets] = p4[jets, sources] * (1.0 - z[jets, sources]).unsqueeze(-1)
    new_mask[jets, targets] = True
    return out, new_mask


def _random_unit_vectors(num: int, generator: torch.Generator) -> Tensor:
    vectors = torch.randn(num, 3, generator=generator, dtype=torch.float64)
    return vectors / vectors.norm(dim=1, keepdim=True)


def lorentz_transform(p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator):
    """Apply a sampled Lorentz transformation per jet: a rotation by an angle ``U(−s, s)`` about
    a random axis, then a boost of rapidity ``U(−s, s)`` along a random direction."""
    if strength == 0:
        return p4.clone(), mask.clone()
    num = p4.shape[0]
    angle = (2 * torch.rand(num, generator=generator, dtype=torch.float64) - 1) * strength
    rapidity = (2 * torch.rand(num, generator=generator, dtype=torch.float64) - 1) * strength
    elements = boost(_random_unit_vectors(num, generator), rapidity) @ rotation(
        _random_unit_vectors(num, generator), angle
    )
    return apply(elements.to(p4.device), p4, mask), mask.clone()


PERTURBATIONS: dict[str, Perturbation] = {
    "pt_smear": smear_pt,
    "eta_smear": smear_eta,
    "phi_smear": smear_phi,
    "energy_scale": scale_energy,
    "soft_drop": drop_soft,
    "random_drop": drop_random,
    "collinear_split": split_collinear,
    "lorentz": lorentz_transform,
}


def perturb(
    name: str, p4: Tensor, mask: Tensor, strength: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Apply the perturbation called ``name`` (a key of :data:`PERTURBATIONS`).

    Raises:
        ValueError: ``name`` is not a known perturbation.
    """
    try:
        function = PERTURBATIONS[name]
    except KeyError:
        raise ValueError(
            f"perturbation {name!r} is not available; use one of: {', '.join(PERTURBATIONS)}"
        ) from None
    return function(p4, mask, float(strength), generator)


__all__ = [
    "PERTURBATIONS",
    "Perturbation",
    "drop_random",
    "drop_soft",
    "lorentz_transform",
    "perturb",
    "scale_energy",
    "smear_eta",
    "smear_phi",
    "smear_pt",
    "split_collinear",
]
