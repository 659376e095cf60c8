"""Perturbations keep the batch contract and do what their strength says."""

from __future__ import annotations

import pytest
import torch
from synthetic import make_random_jets

from softsymlit.analysis import PERTURBATIONS, perturb
from softsymlit.analysis.perturbations import _kinematics
from softsymlit.symmetry import invariant_mass_squared


@pytest.fixture
def jets():
    return make_random_jets(num_jets=32, max_particles=16, seed=3)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _assert_contract(p4, mask):
    assert torch.all(p4[~mask] == 0), "padded slots must be zero"
    assert torch.all(mask.sum(dim=1) >= 1), "no jet may be empty"
    counts = mask.sum(dim=1, keepdim=True)
    assert torch.equal(mask, torch.arange(mask.shape[1])[None] < counts), "real ones first"


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_strength_zero_is_the_identity(jets, name):
    p4, mask = jets
    state = torch.get_rng_state()
    out, out_mask = perturb(name, p4, mask, 0.0, _generator())
    assert torch.equal(out, p4) and torch.equal(out_mask, mask)
    assert out.data_ptr() != p4.data_ptr()
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_every_perturbation_keeps_the_contract(jets, name):
    strength = {"soft_drop": 30.0, "energy_scale": 0.1}.get(name, 0.3)
    out, mask = perturb(name, *jets, strength, _generator())
    _assert_contract(out, mask)
    assert out.dtype == jets[0].dtype
    again, _ = perturb(name, *jets, strength, _generator())
    assert torch.equal(out, again), "the generator alone decides the draw"


@pytest.mark.parametrize("name", ["pt_smear", "eta_smear", "phi_smear"])
def test_smearing_moves_only_its_variable(jets, name):
    p4, mask = jets
    out, out_mask = perturb(name, p4, mask, 0.1, _generator())
    assert torch.equal(out_mask, mask)
    before, after = _kinematics(p4), _kinematics(out)
    moved = {"pt_smear": 0, "eta_smear": 1, "phi_smear": 2}[name]
    for index, (a, b) in enumerate(zip(before, after, strict=True)):
        a, b = a[mask], b[mask]
        if index == moved:
            assert not torch.allclose(a, b, atol=1e-3)
        elif index == 2:  # azimuth: compare on the circle
            assert torch.allclose(torch.cos(a - b), torch.ones_like(a), atol=1e-9)
        elif index == 3:  # mass: recomputed as sqrt(E² − p²), a cancellation at m ≪ E
            assert torch.allclose(a, b, atol=1e-3)
        else:
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-6)
    tiny, _ = perturb(name, p4, mask, 1e-12, _generator())
    # The inputs were rounded to float32, so their masses are only known to ~1e-7 · E.
    assert torch.allclose(tiny, p4, rtol=1e-6, atol=1e-6)


def test_energy_scale_scales_every_momentum(jets):
    p4, mask = jets
    out, _ = perturb("energy_scale", p4, mask, -0.05, _generator())
    assert torch.allclose(out, 0.95 * p4)


def test_soft_drop_removes_exactly_the_soft_constituents_but_never_empties(jets):
    p4, mask = jets
    pt = torch.hypot(p4[..., 1], p4[..., 2])
    out, out_mask = perturb("soft_drop", p4, mask, 20.0, _generator())
    expected = ((pt >= 20.0) & mask).sum(1).clamp_min(1)
    assert torch.equal(out_mask.sum(1), expected)
    assert torch.all(torch.hypot(out[..., 1], out[..., 2])[out_mask & (expected[:, None] > 1)]
                     >= 20.0)  # fmt: skip

    everything, everything_mask = perturb("soft_drop", p4, mask, 1e6, _generator())
    assert torch.all(everything_mask.sum(1) == 1)
    hardest = pt.masked_fill(~mask, -1).max(dim=1).values
    assert torch.allclose(torch.hypot(everything[:, 0, 1], everything[:, 0, 2]), hardest)


def test_random_drop_at_full_strength_keeps_the_hardest(jets):
    p4, mask = jets
    out, out_mask = perturb("random_drop", p4, mask, 1.0, _generator())
    assert torch.all(out_mask.sum(1) == 1)
    _, half_mask = perturb("random_drop", p4, mask, 0.5, _generator())
    fraction = 1 - half_mask.sum() / mask.sum()
    assert 0.35 < float(fraction) < 0.65


def test_collinear_splitting_conserves_the_jet_and_adds_constituents(jets):
    p4, mask = jets
    out, out_mask = perturb("collinear_split", p4, mask, 1.0, _generator())
    assert torch.equal(out_mask.sum(1), 2 * mask.sum(1))
    jet = (p4 * mask[..., None]).sum(1)
    assert torch.allclose((out * out_mask[..., None]).sum(1), jet, rtol=1e-12, atol=1e-9)
    directions = torch.nn.functional.normalize(out[..., 1:][out_mask], dim=-1)
    originals = torch.nn.functional.normalize(p4[..., 1:][mask], dim=-1)
    assert all(torch.any((originals @ d).abs() > 1 - 1e-12) for d in directions)


def test_lorentz_transformation_keeps_masses(jets):
    p4, mask = jets
    out, out_mask = perturb("lorentz", p4, mask, 0.3, _generator())
    mass2 = lambda q: q[..., 0] ** 2 - (q[..., 1:] ** 2).sum(-1)  # noqa: E731
    assert torch.allclose(mass2(out)[mask], mass2(p4)[mask], atol=1e-8)
    assert torch.allclose(invariant_mass_squared(out, out_mask), invariant_mass_squared(p4, mask),
                          rtol=1e-9, atol=1e-7)  # fmt: skip
    assert not torch.allclose(out, p4)


def test_unknown_perturbation_lists_the_choices(jets):
    with pytest.raises(ValueError, match="pt_smear"):
        perturb("jet_energy", *jets, 0.1, _generator())
