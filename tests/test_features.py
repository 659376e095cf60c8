"""Constituent features against numpy, and padding invariance of the networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import make_random_jets

from softsymlit.models import ConstituentFeatures, ParticleFlowNetwork, ParticleTransformer


def _numpy_features(p4: np.ndarray, n: int) -> np.ndarray:
    """Features of one jet's first ``n`` constituents, written out directly."""
    e, px, py, pz = p4[:n].T
    jet_e, jet_px, jet_py, jet_pz = p4[:n].sum(axis=0)
    pt, jet_pt = np.hypot(px, py), np.hypot(jet_px, jet_py)
    eta, jet_eta = np.arcsinh(pz / pt), np.arcsinh(jet_pz / jet_pt)
    dphi = np.arctan2(py, px) - np.arctan2(jet_py, jet_px)
    dphi = (dphi + np.pi) % (2 * np.pi) - np.pi
    deta = eta - jet_eta
    return np.stack(
        [deta, dphi, np.log(pt), np.log(e), np.log(pt / jet_pt), np.log(e / jet_e),
         np.hypot(deta, dphi)], axis=-1,
    )  # fmt: skip


def test_raw_features_equal_numpy():
    p4, mask = make_random_jets(num_jets=5, seed=11)
    features = ConstituentFeatures().raw(p4, mask).numpy()
    for jet in range(5):
        n = int(mask[jet].sum())
        np.testing.assert_allclose(features[jet, :n], _numpy_features(p4[jet].numpy(), n),
                                   rtol=1e-9, atol=1e-9)  # fmt: skip


def test_standardised_features_are_shifted_scaled_and_zero_when_padded():
    p4, mask = make_random_jets(num_jets=4, seed=2)
    module = ConstituentFeatures(shift=[1, 2, 3, 4, 5, 6, 7], scale=[2] * 7)
    standard = module(p4, mask)
    raw = module.raw(p4, mask)
    np.testing.assert_allclose(standard[mask], (raw[mask] - torch.arange(1.0, 8.0)) * 2.0)
    assert torch.all(standard[~mask] == 0)


def test_features_wrap_delta_phi_across_pi():
    # Two constituents either side of φ = π: the jet axis is at π, both Δφ are small.
    phi = torch.tensor([3.1, -3.1], dtype=torch.float64)
    pt = torch.tensor([100.0, 100.0], dtype=torch.float64)
    p4 = torch.stack([pt, pt * torch.cos(phi), pt * torch.sin(phi), torch.zeros(2)], -1)[None]
    raw = ConstituentFeatures().raw(p4, torch.ones(1, 2, dtype=torch.bool))
    expected = np.pi - 3.1
    np.testing.assert_allclose(raw[0, :, 1].abs().numpy(), [expected, expected], rtol=1e-9)


@pytest.mark.parametrize("network", [ParticleFlowNetwork, ParticleTransformer])
def test_padding_never_changes_the_output(network):
    torch.manual_seed(0)
    model = network(num_classes=2).double().eval()
    p4, mask = make_random_jets(num_jets=6, max_particles=12, seed=4)
    padded_p4 = torch.cat([p4, torch.zeros(6, 20, 4, dtype=p4.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(6, 20, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded_p4, padded_mask), model(p4, mask))
        # Changing what sits in masked slots must not matter either.
        garbage = padded_p4 + 50.0 * (~padded_mask).unsqueeze(-1)
        torch.testing.assert_close(model(garbage, padded_mask), model(p4, mask))
