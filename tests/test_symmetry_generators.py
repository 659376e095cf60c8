"""Lorentz generators, subgroups and finite elements against the algebra and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import make_random_jets

from softsymlit.symmetry import (
    METRIC,
    SUBGROUPS,
    Subgroup,
    apply,
    boost,
    exponential,
    invariant_mass_squared,
    lorentz_generators,
    minkowski_dot,
    rotation,
    sample_coefficients,
)
from softsymlit.symmetry.generators import commutator, jet_axis, levi_civita


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True)


def test_lorentz_algebra_in_the_stated_sign_convention():
    generators = lorentz_generators()
    rotations = [generators[f"L{axis}"] for axis in "xyz"]
    boosts = [generators[f"K{axis}"] for axis in "xyz"]
    epsilon = levi_civita()

    for i in range(3):
        for j in range(3):
            rotation_sum = sum(epsilon[i, j, k] * rotations[k] for k in range(3))
            boost_sum = sum(epsilon[i, j, k] * boosts[k] for k in range(3))
            assert torch.equal(commutator(rotations[i], rotations[j]), rotation_sum)
            assert torch.equal(commutator(rotations[i], boosts[j]), boost_sum)
            assert torch.equal(commutator(boosts[i], boosts[j]), -rotation_sum)


def test_generators_are_antisymmetric_with_respect_to_the_metric():
    for name, generator in lorentz_generators().items():
        assert torch.equal(generator.T @ METRIC + METRIC @ generator, torch.zeros(4, 4)), name


def test_signs_of_rotation_and_boost():
    generators = lorentz_generators()
    x_axis = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    quarter_turn = torch.linalg.matrix_exp(math.pi / 2 * generators["Lz"]) @ x_axis
    torch.testing.assert_close(quarter_turn, torch.tensor([1.0, 0.0, 1.0, 0.0]).double())

    at_rest = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    boosted = torch.linalg.matrix_exp(0.7 * generators["Kz"]) @ at_rest
    expected = torch.tensor([2.0 * math.cosh(0.7), 0.0, 0.0, 2.0 * math.sinh(0.7)]).double()
    torch.testing.assert_close(boosted, expected)


def test_closed_forms_equal_the_matrix_exponential():
    generator = torch.Generator().manual_seed(3)
    axes = _unit(torch.randn(5, 3, dtype=torch.float64, generator=generator))
    angles = torch.randn(5, dtype=torch.float64, generator=generator) * 2.0
    rapidities = torch.randn(5, dtype=torch.float64, generator=generator)
    fixed = lorentz_generators()
    rotation_generators = sum(axes[:, i, None, None] * fixed[f"L{a}"] for i, a in enumerate("xyz"))
    boost_generators = sum(axes[:, i, None, None] * fixed[f"K{a}"] for i, a in enumerate("xyz"))

    torch.testing.assert_close(
        rotation(axes, angles), torch.linalg.matrix_exp(angles[:, None, None] * rotation_generators)
    )
    torch.testing.assert_close(
        boost(axes, rapidities),
        torch.linalg.matrix_exp(rapidities[:, None, None] * boost_generators),
    )
    torch.testing.assert_close(
        exponential(rotation_generators[:, None], angles[:, None]), rotation(axes, angles)
    )


def test_collinear_boosts_add_rapidities_not_velocities():
    direction = _unit(torch.tensor([[0.3, -0.4, 0.8]], dtype=torch.float64))
    first = torch.tensor([0.6], dtype=torch.float64)
    second = torch.tensor([0.9], dtype=torch.float64)

    composed = boost(direction, first) @ boost(direction, second)
    torch.testing.assert_close(composed, boost(direction, first + second))

    # The velocity of the composition is (β₁ + β₂)/(1 + β₁β₂), not β₁ + β₂.
    at_rest = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    moved = composed[0] @ at_rest
    velocity = moved[1:].norm() / moved[0]
    beta_1, beta_2 = math.tanh(0.6), math.tanh(0.9)
    assert velocity.item() == pytest.approx((beta_1 + beta_2) / (1 + beta_1 * beta_2), rel=1e-12)
    assert velocity.item() < beta_1 + beta_2 - 0.3


@pytest.mark.parametrize("group", sorted(SUBGROUPS))
def test_elements_preserve_minkowski_norms_and_jet_mass(group):
    p4, mask = make_random_jets(num_jets=12, max_particles=20, seed=1)
    subgroup = Subgroup(group)
    generator = torch.Generator().manual_seed(5)
    coefficients = sample_coefficients(12, subgroup.kinds, math.pi, 2.0, generator)
    elements = exponential(subgroup.matrices(p4, mask), coefficients)
    transformed = apply(elements, p4, mask)

    assert not torch.allclose(transformed, p4)
    torch.testing.assert_close(
        minkowski_dot(transformed, transformed), minkowski_dot(p4, p4), atol=1e-8, rtol=1e-10
    )
    torch.testing.assert_close(
        invariant_mass_squared(transformed, mask),
        invariant_mass_squared(p4, mask),
        rtol=1e-10,
        atol=1e-8,
    )
    assert torch.all(transformed[~mask] == 0)


def test_padded_slots_stay_zero_even_when_they_hold_garbage():
    p4, mask = make_random_jets(num_jets=4, max_particles=12, seed=2)
    dirty = torch.where(mask.unsqueeze(-1), p4, torch.full_like(p4, 7.0))
    subgroup = Subgroup("lorentz")
    coefficients = sample_coefficients(
        4, subgroup.kinds, 1.0, 1.0, torch.Generator().manual_seed(0)
    )
    elements = exponential(subgroup.matrices(p4, mask), coefficients)

    transformed = apply(elements, dirty, mask)

    assert torch.all(transformed[~mask] == 0)
    torch.testing.assert_close(transformed, apply(elements, p4, mask))


def test_jet_axis_rotation_fixes_the_axis_and_jet_axis_boost_moves_along_it():
    p4, mask = make_random_jets(num_jets=10, max_particles=15, seed=4)
    jet = (p4 * mask.unsqueeze(-1)).sum(dim=1)
    axis = jet_axis(p4, mask)
    rapidity = torch.linspace(-1.5, 1.5, 10, dtype=torch.float64)
    angle = torch.linspace(-3.0, 3.0, 10, dtype=torch.float64)

    rotation_generator = Subgroup("jet_axis_rotation").matrices(p4, mask)
    boost_generator = Subgroup("jet_axis_boost").matrices(p4, mask)
    annihilated = (rotation_generator[:, 0] @ jet.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(annihilated, torch.zeros_like(jet), atol=1e-12, rtol=0)

    rotated = apply(exponential(rotation_generator, angle[:, None]), p4, mask)
    torch.testing.assert_close((rotated * mask.unsqueeze(-1)).sum(dim=1), jet)
    assert not torch.allclose(rotated, p4)

    boosted_jet = (apply(exponential(boost_generator, rapidity[:, None]), p4, mask)).sum(dim=1)
    momentum = jet[:, 1:].norm(dim=-1)
    torch.testing.assert_close(jet_axis(boosted_jet[:, None], mask[:, :1]), axis)
    torch.testing.assert_close(
        boosted_jet[:, 0], torch.cosh(rapidity) * jet[:, 0] + torch.sinh(rapidity) * momentum
    )
    torch.testing.assert_close(
        boosted_jet[:, 1:].norm(dim=-1),
        torch.sinh(rapidity) * jet[:, 0] + torch.cosh(rapidity) * momentum,
    )


def test_explicit_generator_lists_and_errors():
    p4, mask = make_random_jets(num_jets=3, max_particles=6, seed=0)
    subgroup = Subgroup(generators=["Kz", "L_jet"])
    matrices = subgroup.matrices(p4, mask)

    assert subgroup.kinds == ("boost", "rotation")
    torch.testing.assert_close(matrices[:, 0], lorentz_generators()["Kz"].expand(3, 4, 4))
    with pytest.raises(ValueError, match="use one of: lorentz, so3"):
        Subgroup("poincare")
    with pytest.raises(ValueError, match="'Mx' is not available"):
        Subgroup(generators=["Lx", "Mx"])
    with pytest.raises(ValueError, match="repeated"):
        Subgroup(generators=["Lx", "Lx"])


def test_sampled_parameters_respect_their_ranges():
    kinds = ("rotation", "boost")
    coefficients = sample_coefficients(4000, kinds, 0.5, 0.2, torch.Generator().manual_seed(1))

    assert coefficients[:, 0].abs().max() <= 0.5
    assert coefficients[:, 1].abs().max() <= 0.2
    assert coefficients[:, 0].abs().max() > 0.49
    assert coefficients[:, 1].abs().max() > 0.195
