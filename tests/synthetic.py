"""Synthetic jets for tests that need no generated sample."""

from __future__ import annotations

import torch


def make_random_jets(
    num_jets: int = 8, max_particles: int = 16, seed: int = 0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Massive-ish constituents around a random jet axis, with a random number of padded slots.

    Returns ``p4 [B, N, 4]`` (E, px, py, pz) in GeV, zero where padded, and ``mask [B, N]``.
    """
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(3, max_particles + 1, (num_jets,), generator=generator)
    mask = torch.arange(max_particles)[None, :] < counts[:, None]
    jet_eta = torch.empty(num_jets, 1).uniform_(-1.5, 1.5, generator=generator)
    jet_phi = torch.empty(num_jets, 1).uniform_(-3.0, 3.0, generator=generator)
    eta = jet_eta + 0.3 * torch.randn(num_jets, max_particles, generator=generator)
    phi = jet_phi + 0.3 * torch.randn(num_jets, max_particles, generator=generator)
    pt = 5.0 + 60.0 * torch.rand(num_jets, max_particles, generator=generator)
    mass = 0.14 * torch.rand(num_jets, max_particles, generator=generator)
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)
    energy = torch.sqrt(px**2 + py**2 + pz**2 + mass**2)
    p4 = torch.stack((energy, px, py, pz), dim=-1).to(dtype)
    return p4 * mask.unsqueeze(-1), mask
