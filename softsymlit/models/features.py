"""Per-constituent features computed from raw four-momenta, differentiably, inside the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

FEATURE_NAMES: tuple[str, ...] = (
    "delta_eta",
    "delta_phi",
    "log_pt",
    "log_energy",
    "log_pt_rel",
    "log_energy_rel",
    "delta_r",
)

# Centre and scale for jets of a few hundred GeV; they put every feature at O(1).
DEFAULT_SHIFT: tuple[float, ...] = (0.0, 0.0, 1.7, 2.0, -4.7, -4.7, 0.2)
DEFAULT_SCALE: tuple[float, ...] = (2.0, 2.0, 0.7, 0.7, 0.7, 0.7, 4.0)


def jet_four_momentum(p4: Tensor, mask: Tensor) -> Tensor:
    """Sum of the unmasked constituent four-momenta.

    Args:
        p4: ``[B, N, 4]`` (E, px, py, pz) in GeV.
        mask: ``[B, N]`` bool, True for real constituents.

    Returns:
        ``[B, 4]`` (E, px, py, pz) of the jet.
    """
    return (p4 * mask.unsqueeze(-1).to(p4.dtype)).sum(dim=1)


def _kinematics(p4: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Transverse momentum, pseudorapidity, azimuth and energy of ``[..., 4]`` momenta."""
    energy, px, py, pz = p4.unbind(-1)
    pt = torch.sqrt(px.square() + py.square())
    eta = torch.asinh(pz / pt)
    phi = torch.atan2(py, px)
    return pt, eta, phi, energy


class ConstituentFeatures(nn.Module):
    """Standardised constituent features relative to the jet axis.

    For every constituent ``i`` of a jet ``J = Σ_i p_i`` (sum over unmasked constituents of
    *this* ``p4``, so the axis and energy follow any transformation applied to ``p4``):

    ``Δη = η_i − η_J``, ``Δφ = φ_i − φ_J`` wrapped to (−π, π], ``log pT_i``, ``log E_i``,
    ``log pT_i/pT_J``, ``log E_i/E_J`` and ``ΔR = sqrt(Δη² + Δφ²)``, in that order
    (:data:`FEATURE_NAMES`). η is the pseudorapidity with the beam along z; momenta in GeV.
    Each feature is standardised as ``(x − shift) · scale``; padded slots are exactly zero.

    Every operation is smooth where the constituents are physical (pT > 0), so gradients and
    forward-mode derivatives with respect to ``p4`` are well defined.

    Args:
        shift: per-feature offsets, in :data:`FEATURE_NAMES` order.
        scale: per-feature multipliers, in :data:`FEATURE_NAMES` order.

    Example::

        features = ConstituentFeatures()
        x = features(p4, mask)  # [B, N, 7]
    """

    def __init__(
        self,
        shift: Sequence[float] = DEFAULT_SHIFT,
        scale: Sequence[float] = DEFAULT_SCALE,
    ) -> None:
        super().__init__()
        if len(shift) != len(FEATURE_NAMES) or len(scale) != len(FEATURE_NAMES):
            raise ValueError(
                f"shift and scale need {len(FEATURE_NAMES)} entries ({', '.join(FEATURE_NAMES)}); "
                f"got {len(shift)} and {len(scale)}"
            )
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)

    @property
    def num_features(self) -> int:
        return len(FEATURE_NAMES)

    def raw(self, p4: Tensor, mask: Tensor) -> Tensor:
        """Unstandardised features ``[B, N, 7]``; padded slots hold finite placeholders."""
        safe = torch.where(mask.unsqueeze(-1), p4, _placeholder(p4))
        pt, eta, phi, energy = _kinematics(safe)
        jet_pt, jet_eta, jet_phi, jet_energy = _kinematics(jet_four_momentum(p4, mask))

        delta_eta = eta - jet_eta.unsqueeze(1)
        delta_phi = _wrap_angle(phi - jet_phi.unsqueeze(1))
        # The tiny offset keeps the gradient of ΔR finite for a constituent on the axis.
        delta_r = torch.sqrt(delta_eta.square() + delta_phi.square() + 1e-12)
        log_pt = torch.log(pt)
        log_energy = torch.log(energy)
        log_pt_rel = log_pt - torch.log(jet_pt).unsqueeze(1)
        log_energy_rel = log_energy - torch.log(jet_energy).unsqueeze(1)

        return torch.stack(
            (delta_eta, delta_phi, log_pt, log_energy, log_pt_rel, log_energy_rel, delta_r), dim=-1
        )

    def forward(self, p4: Tensor, mask: Tensor) -> Tensor:
        """Features for a batch.

        Args:
            p4: ``[B, N, 4]`` (E, px, py, pz) in GeV, zero where masked.
            mask: ``[B, N]`` bool.

        Returns:
            ``[B, N, 7]`` standardised features, zero where masked.
        """
        features = (self.raw(p4, mask) - self.shift.to(p4.dtype)) * self.scale.to(p4.dtype)
        return features * mask.unsqueeze(-1).to(p4.dtype)


def _placeholder(p4: Tensor) -> Tensor:
    """A massless 1 GeV momentum along x, used where slots are padded so logs stay finite."""
    return torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=p4.dtype, device=p4.device).expand_as(p4)


def _wrap_angle(angle: Tensor) -> Tensor:
    """Map an angle to (−π, π] smoothly (no discontinuity in the gradient)."""
    return torch.atan2(torch.sin(angle), torch.cos(angle))
