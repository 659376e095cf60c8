"""Small networks and reference computations shared by the symmetry tests."""

from __future__ import annotations

import torch
from synthetic import make_random_jets

from softsymlit.models import ParticleFlowNetwork, ParticleTransformer
from softsymlit.symmetry import SoftSymmetryPenalty, apply, exponential, invariant_mass_squared
from softsymlit.symmetry.penalty import output_map


def jet_mass(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A Lorentz-invariant jet function: the jet mass in units of 100 GeV, ``[B]``."""
    return invariant_mass_squared(p4, mask).clamp_min(0.0).sqrt() / 100.0


def jet_px(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A non-invariant jet function: the jet px in units of 100 GeV, ``[B]``."""
    return (p4[..., 1] * mask).sum(dim=1) / 100.0


def small_network(kind: str, num_classes: int = 2) -> torch.nn.Module:
    if kind == "pfn":
        return ParticleFlowNetwork(num_classes, phi_sizes=(16, 16), f_sizes=(16,))
    return ParticleTransformer(num_classes, embed_dim=16, num_heads=2, num_layers=2)


def trained_network(kind: str, steps: int = 30, num_classes: int = 2) -> torch.nn.Module:
    """A small float64 network trained for a few Adam steps to separate heavy from light
    synthetic jets (so that its Lie derivatives are not those of a random initialisation)."""
    torch.manual_seed(0)
    network = small_network(kind, num_classes).double()
    p4, mask = make_random_jets(num_jets=64, max_particles=12, seed=11)
    mass = jet_mass(p4, mask)
    label = (mass > mass.median()).long()
    if num_classes > 2:
        label = torch.bucketize(mass, mass.quantile(torch.tensor([0.33, 0.66]).double()))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(network(p4, mask), label).backward()
        optimizer.step()
    return network.eval()


def central_difference(function, p4, mask, generators, output="logits", step=1e-5):
    """``(h(f(e^{εG_a} p)) − h(f(e^{−εG_a} p))) / 2ε`` for every generator: ``[B, A, C]``."""
    columns = []
    for a in range(generators.shape[1]):
        single = generators[:, a : a + 1]
        coefficient = torch.full((p4.shape[0], 1), step, dtype=torch.float64)
        plus = apply(exponential(single, coefficient), p4, mask)
        minus = apply(exponential(single, -coefficient), p4, mask)
        with torch.no_grad():
            difference = output_map(function(plus, mask), output) - output_map(
                function(minus, mask), output
            )
        columns.append(difference / (2 * step))
    return torch.stack(columns, dim=1)


class FixedDrawPenalty(SoftSymmetryPenalty):
    """A sampled penalty whose group parameters are a fixed function of each jet, so that a jet
    gets the same element whichever batch or process it is in."""

    def __init__(self, *args, parameters: torch.Tensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.parameters_per_jet = parameters

    def sample_coefficients(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.parameters_per_jet is not None:
            return self.parameters_per_jet.to(torch.float64)
        energy = (p4[..., 0] * mask).sum(dim=1, keepdim=True).double()
        phases = torch.arange(1, len(self.subgroup) + 1, dtype=torch.float64)
        return 0.4 * torch.sin(energy * phases)
