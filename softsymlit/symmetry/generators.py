"""Generators of the Lorentz group and of its subgroups, as 4×4 matrices on (E, px, py, pz).

Conventions used throughout :mod:`softsymlit.symmetry`:

- Four-momenta are column vectors ``p = (E, px, py, pz)`` in GeV; the beam is along z.
- The metric is ``η = diag(+1, −1, −1, −1)``, so ``p·q = E_p E_q − p⃗·q⃗`` and ``p·p = m²``.
- Group elements act actively, ``p ↦ Λ p``, with ``Λ = exp(Σ_a θ_a G_a)``.
- ``Lx, Ly, Lz`` generate right-handed rotations: ``exp(θ Lz)`` turns the x axis towards the y
  axis by the angle θ (radians). On the spatial block ``(L_i)_jk = −ε_ijk``.
- ``Kx, Ky, Kz`` generate boosts: ``exp(ζ Kz)`` boosts along +z with rapidity ζ, so
  ``E' = cosh ζ E + sinh ζ pz`` and ``pz' = sinh ζ E + cosh ζ pz``. ``(K_i)_0i = (K_i)_i0 = 1``.
- With these signs the algebra closes as ``[L_i, L_j] = ε_ijk L_k``, ``[L_i, K_j] = ε_ijk K_k``
  and ``[K_i, K_j] = −ε_ijk L_k``.

Every generator satisfies ``Gᵀ η + η G = 0``, which is what makes ``exp(θ G)`` preserve every
Minkowski product.

Two generators are built per jet from the jet momentum ``P = Σ_i p_i`` (unmasked constituents):
``L_jet = Σ_i n_i L_i`` (rotation about the jet axis ``n = P⃗/|P⃗|``) and
``K_jet = Σ_i n_i K_i`` (boost along it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

METRIC = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64))
"""The Minkowski metric ``diag(+1, −1, −1, −1)`` on (E, px, py, pz)."""

ROTATION = "rotation"
BOOST = "boost"

_AXES = ("x", "y", "z")
_PER_JET = {"L_jet": ROTATION, "K_jet": BOOST}

SUBGROUPS: dict[str, tuple[str, ...]] = {
    "lorentz": ("Lx", "Ly", "Lz", "Kx", "Ky", "Kz"),
    "so3": ("Lx", "Ly", "Lz"),
    "so2_z": ("Lz",),
    "boost_z": ("Kz",),
    "jet_axis_rotation": ("L_jet",),
    "jet_axis_boost": ("K_jet",),
}
"""Named subgroups and the generators that span them."""


def levi_civita(dtype: torch.dtype = torch.float64) -> Tensor:
    """The totally antisymmetric symbol ``ε_ijk`` with ``ε_xyz = +1``, ``[3, 3, 3]``."""
    epsilon = torch.zeros(3, 3, 3, dtype=dtype)
    for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        epsilon[i, j, k] = 1.0
        epsilon[i, k, j] = -1.0
    return epsilon


def rotation_generator(axis: Tensor) -> Tensor:
    """Generator of right-handed rotations about ``axis``.

    Args:
        axis: ``[..., 3]`` spatial direction; not normalised here, so the result is
            ``Σ_i axis_i L_i`` (a unit vector gives the rotation by one radian per unit θ).

    Returns:
        ``[..., 4, 4]`` with spatial block ``−Σ_i axis_i ε_ijk`` and zero time row and column.
    """
    epsilon = levi_civita(axis.dtype).to(axis.device)
    generator = axis.new_zeros(*axis.shape[:-1], 4, 4)
    # Adding zero turns the −0.0 entries of the negated symbol into +0.0.
    generator[..., 1:, 1:] = 0.0 - torch.einsum("...i,ijk->...jk", axis, epsilon)
    return generator


def boost_generator(direction: Tensor) -> Tensor:
    """Generator of boosts along ``direction``.

    Args:
        direction: ``[..., 3]``; the result is ``Σ_i direction_i K_i`` (a unit vector makes the
            group parameter the rapidity).

    Returns:
        ``[..., 4, 4]`` symmetric, non-zero only in the time row and column.
    """
    generator = direction.new_zeros(*direction.shape[:-1], 4, 4)
    generator[..., 0, 1:] = direction
    generator[..., 1:, 0] = direction
    return generator


def lorentz_generators(dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """The six fixed generators ``{"Lx", "Ly", "Lz", "Kx", "Ky", "Kz"}``, each ``[4, 4]``."""
    unit = torch.eye(3, dtype=dtype)
    generators = {f"L{a}": rotation_generator(unit[i]) for i, a in enumerate(_AXES)}
    generators.update({f"K{a}": boost_generator(unit[i]) for i, a in enumerate(_AXES)})
    return generators


def generator_kind(name: str) -> str:
    """``"rotation"`` or ``"boost"``: which range (angle or rapidity) a generator's parameter
    takes."""
    if name in _PER_JET:
        return _PER_JET[name]
    if name in lorentz_generators():
        return ROTATION if name.startswith("L") else BOOST
    raise ValueError(f"generator {name!r} is not available; use one of: {', '.join(AVAILABLE)}")


AVAILABLE: tuple[str, ...] = (*lorentz_generators(), *_PER_JET)
"""Every generator name a :class:`Subgroup` accepts."""


def jet_axis(p4: Tensor, mask: Tensor) -> Tensor:
    """Unit vector along the spatial momentum of each jet.

    Args:
        p4: ``[B, N, 4]`` (E, px, py, pz) in GeV.
        mask: ``[B, N]`` bool.

    Returns:
        ``[B, 3]``.
    """
    jet = (p4 * mask.unsqueeze(-1).to(p4.dtype)).sum(dim=1)
    momentum = jet[:, 1:]
    return momentum / momentum.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(p4.dtype).tiny)


class Subgroup:
    """The generators spanning a subgroup of the Lorentz group, selected by name.

    Fixed generators are the same for every jet; ``L_jet`` and ``K_jet`` are rebuilt for each jet
    from its own momentum (detached: the generator is a property of the untransformed jet, so a
    Lie derivative along it is taken at fixed generator).

    Args:
        group: one of :data:`SUBGROUPS` (``lorentz``, ``so3``, ``so2_z``, ``boost_z``,
            ``jet_axis_rotation``, ``jet_axis_boost``); ignored when ``generators`` is given.
        generators: an explicit list of generator names from :data:`AVAILABLE`.

    Raises:
        ValueError: for an unknown group or generator name, or an empty or repeated list.

    Example::

        subgroup = Subgroup("so3")
        matrices = subgroup.matrices(p4, mask)  # [B, 3, 4, 4]
    """

    def __init__(self, group: str = "lorentz", generators: Sequence[str] | None = None) -> None:
        if generators is None:
            if group not in SUBGROUPS:
                raise ValueError(
                    f"group {group!r} is not available; use one of: {', '.join(SUBGROUPS)}"
                )
            generators = SUBGROUPS[group]
            self.label = group
        else:
            generators = tuple(generators)
            self.label = "+".join(generators)
        if not generators:
            raise ValueError("a subgroup needs at least one generator; got an empty list")
        if len(set(generators)) != len(generators):
            raise ValueError(f"generators {list(generators)} contain a repeated name")
        self.kinds = tuple(generator_kind(name) for name in generators)
        self.names: tuple[str, ...] = tuple(generators)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Subgroup({self.label!r}, generators={list(self.names)})"

    @property
    def is_per_jet(self) -> bool:
        """Whether any generator depends on the jet."""
        return any(name in _PER_JET for name in self.names)

    def matrices(self, p4: Tensor, mask: Tensor) -> Tensor:
        """Generator matrices for every jet of a batch.

        Args:
            p4: ``[B, N, 4]`` (E, px, py, pz) in GeV, zero where masked.
            mask: ``[B, N]`` bool.

        Returns:
            ``[B, A, 4, 4]`` in the dtype of ``p4``, ``A = len(self)``, in the order of
            :attr:`names`; fixed generators are expanded views, not copies.
        """
        batch = p4.shape[0]
        fixed = lorentz_generators(p4.dtype)
        axis = jet_axis(p4.detach(), mask) if self.is_per_jet else None
        columns = []
        for name in self.names:
            if name == "L_jet":
                columns.append(rotation_generator(axis))
            elif name == "K_jet":
                columns.append(boost_generator(axis))
            else:
                columns.append(fixed[name].to(p4.device).expand(batch, 4, 4))
        return torch.stack(columns, dim=1)


def commutator(a: Tensor, b: Tensor) -> Tensor:
    """``[a, b] = a b − b a`` of ``[..., 4, 4]`` matrices."""
    return a @ b - b @ a


__all__ = [
    "AVAILABLE",
    "BOOST",
    "METRIC",
    "ROTATION",
    "SUBGROUPS",
    "Subgroup",
    "boost_generator",
    "commutator",
    "generator_kind",
    "jet_axis",
    "levi_civita",
    "lorentz_generators",
    "rotation_generator",
]
