"""The finite-difference estimator of the infinitesimal penalty against closed forms, the exact
Lie derivatives and its own sampling distribution."""

from __future__ import annotations

import math

import pytest
import torch
from symmetry_helpers import jet_mass, jet_px, small_network, trained_network
from synthetic import make_random_jets
from torch.nn.attention import SDPBackend, sdpa_kernel

from softsymlit.models import JetClassifier, ParticleTransformer
from softsymlit.symmetry import (
    SoftSymmetryPenalty,
    Subgroup,
    directional_differences,
    lie_derivatives,
    random_directions,
)

SCHEMES = ("forward", "central")


def _fixed_directions(num_jets: int, num_generators: int, num_directions: int = 1, seed: int = 0):
    return random_directions(
        num_jets, num_generators, num_directions, generator=torch.Generator().manual_seed(seed)
    )


def _exact_along(function, p4, mask, generators, directions, output="logits"):
    """``L_c h = Σ_a c_a L_a h`` from the exact input-gradient implementation: ``[B, K, C]``."""
    with sdpa_kernel(SDPBackend.MATH):
        lie = lie_derivatives(function, p4, mask, generators, output, "input_gradient")
    return torch.einsum("bka,bac->bkc", directions.to(lie.derivatives.dtype), lie.derivatives)


class _PerJetDirections(SoftSymmetryPenalty):
    """Finite-difference directions that are a fixed function of each jet, so that a jet gets the
    same directions whichever batch or process it is in."""

    def sample_directions(self, p4, mask):
        energy = (p4[..., 0] * mask).sum(dim=1).double()
        phases = torch.arange(1, self.num_directions * len(self.subgroup) + 1, dtype=torch.float64)
        raw = torch.sin(energy[:, None] * phases).view(p4.shape[0], self.num_directions, -1)
        return math.sqrt(len(self.subgroup)) * raw / raw.norm(dim=-1, keepdim=True)


def test_directions_are_orthogonal_frames_of_radius_root_a():
    directions = _fixed_directions(num_jets=5, num_generators=6, num_directions=8)

    gram = torch.einsum("bka,bla->bkl", directions[:, :6], directions[:, :6])
    torch.testing.assert_close(gram, 6.0 * torch.eye(6, dtype=torch.float64).expand(5, 6, 6))
    torch.testing.assert_close(
        directions.norm(dim=-1), torch.full((5, 8), math.sqrt(6.0), dtype=torch.float64)
    )
    assert _fixed_directions(50, 1).abs().eq(1.0).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_jet_px_differences_have_their_closed_form_and_leading_bias(random_jets, scheme):
    p4, mask = random_jets
    generators = Subgroup("lorentz").matrices(p4, mask)
    directions = _fixed_directions(p4.shape[0], 6, num_directions=2)
    jet = (p4 * mask.unsqueeze(-1)).sum(dim=1) / 100.0
    energy, _, py, pz = jet.unbind(-1)
    zero = torch.zeros_like(energy)
    # d/dε of (e^{εG} P)_x for G = Lx, Ly, Lz, Kx, Ky, Kz.
    gradient = torch.stack((zero, pz, -py, energy, zero, zero), dim=1)
    derivative = torch.einsum("bka,ba->bk", directions, gradient)
    algebra = torch.einsum("bka,bamn->bkmn", directions, generators)
    # Taylor series of px(e^{εG_c} P): the first neglected term is G_c² P / 2 (forward) or
    # G_c³ P / 6 (central).
    power, order, coefficient = (2, 1, 0.5) if scheme == "forward" else (3, 2, 1.0 / 6.0)
    leading = torch.einsum("bkmn,bn->bkm", torch.linalg.matrix_power(algebra, power), jet)[..., 1]

    for step in (1e-3, 1e-2):
        result = directional_differences(
            jet_px, p4, mask, generators, directions, step=step, scheme=scheme
        )
        error = result.derivatives[..., 0] - derivative
        predicted = coefficient * step**order * leading
        tolerance = 50 * step ** (order + 1)
        assert predicted.abs().max() > 10 * tolerance
        torch.testing.assert_close(error, predicted, rtol=0, atol=tolerance)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_invariant_function_has_zero_difference(random_jets, scheme):
    p4, mask = random_jets
    generators = Subgroup(generators=["Lx", "Ly", "Lz", "Kx", "Ky", "Kz", "L_jet", "K_jet"])
    directions = _fixed_directions(p4.shape[0], 8, num_directions=3)

    result = directional_differences(
        jet_mass, p4, mask, generators.matrices(p4, mask), directions, step=1e-2, scheme=scheme
    )

    assert result.derivatives.abs().max().item() < 1e-11
    penalty = SoftSymmetryPenalty(mode="infinitesimal", implementation="finite_difference")
    assert penalty(jet_mass, p4, mask)[1].item() < 1e-20


def test_full_frame_of_directions_gives_the_closed_form_penalty_of_jet_px(random_jets):
    p4, mask = random_jets
    energy, _, py, pz = ((p4 * mask.unsqueeze(-1)).sum(dim=1) / 100.0).unbind(-1)
    penalty = SoftSymmetryPenalty(
        mode="infinitesimal",
        implementation="finite_difference",
        num_directions=6,
        difference_scheme="central",
        difference_step=1e-4,
    )

    _, value = penalty(jet_px, p4, mask)

    torch.testing.assert_close(value, (energy**2 + py**2 + pz**2).mean(), rtol=1e-7, atol=0)


def test_estimate_over_random_directions_is_unbiased_with_its_stated_variance():
    network = trained_network("pfn")
    p4, mask = make_random_jets(num_jets=6, max_particles=10, seed=3)
    replicas = 500
    generators = Subgroup("lorentz").matrices(p4, mask)
    exact = _exact_along(network, p4, mask, generators, torch.eye(6, dtype=torch.float64)[None])
    exact = exact.square().sum(dim=(1, 2)).detach()  # Σ_a |L_a h|² per jet

    # Every jet repeated, each copy with its own direction: [replicas * 6] estimates.
    many_p4, many_mask = p4.repeat(replicas, 1, 1), mask.repeat(replicas, 1)
    directions = _fixed_directions(6 * replicas, 6, seed=1)
    with torch.no_grad():
        result = directional_differences(
            network, many_p4, many_mask, generators.repeat(replicas, 1, 1, 1), directions,
            step=1e-4, scheme="central",
        )  # fmt: skip
    estimates = result.derivatives.square().sum(dim=(1, 2)).view(replicas, 6)

    mean, error = estimates.mean(dim=0), estimates.std(dim=0) / math.sqrt(replicas)
    assert (exact > 1e-3).all()
    assert ((mean - exact).abs() < 4 * error).all(), ((mean - exact) / error).tolist()

    # A binary classifier's centred logits have a rank-one V, so the variance of one estimate
    # is 2 (A − 1) / (A + 2) = 5/4 of the squared penalty (it would be 2 for Gaussian c).
    normalised = (estimates / exact - 1.0).flatten()
    variance = normalised.square().mean()
    variance_error = ((normalised**4).mean() - variance**2).sqrt() / math.sqrt(normalised.numel())
    assert abs(variance.item() - 1.25) < 4 * variance_error.item()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bias_shrinks_linearly_forward_and_quadratically_central(scheme):
    network = trained_network("transformer")
    p4, mask = make_random_jets(num_jets=6, max_particles=10, seed=4)
    generators = Subgroup("lorentz").matrices(p4, mask)
    directions = _fixed_directions(6, 6, num_directions=2, seed=2)
    exact = _exact_along(network, p4, mask, generators, directions).detach()

    errors = []
    for step in (1e-3, 5e-4, 2.5e-4):
        with torch.no_grad():
            result = directional_differences(
                network, p4, mask, generators, directions, step=step, scheme=scheme
            )
        errors.append((result.derivatives - exact).norm().item())

    expected = 2.0 if scheme == "forward" else 4.0
    assert errors[2] < 1e-2 * exact.norm().item()
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert coarse / fine == pytest.approx(expected, rel=0.1)


def test_full_frame_estimate_and_its_parameter_gradient_equal_the_exact_penalty():
    torch.manual_seed(1)
    network = small_network("transformer", num_classes=3).double()
    p4, mask = make_random_jets(num_jets=5, max_particles=9, seed=5)
    parameters = list(network.parameters())
    exact = SoftSymmetryPenalty(mode="infinitesimal", output="probabilities")
    estimate = SoftSymmetryPenalty(
        mode="infinitesimal",
        output="probabilities",
        implementation="finite_difference",
        num_directions=6,
        difference_scheme="central",
        difference_step=1e-5,
    )

    values, gradients = {}, {}
    for name, penalty in (("exact", exact), ("estimate", estimate)):
        logits, values[name] = penalty(network, p4, mask)
        gradients[name] = torch.autograd.grad(
            values[name], parameters, allow_unused=True, materialize_grads=True
        )

    torch.testing.assert_close(logits, network(p4, mask))
    assert values["exact"].item() > 1e-4
    torch.testing.assert_close(values["estimate"], values["exact"], rtol=1e-6, atol=0)
    for a, b in zip(gradients["estimate"], gradients["exact"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9 * values["exact"].item())


@pytest.mark.parametrize("scheme, copies", [("forward", 3), ("central", 2 * 3)])
def test_one_forward_pass_on_the_enlarged_batch(random_jets, scheme, copies):
    p4, mask = random_jets
    network = small_network("pfn").double()
    batch_sizes = []
    network.register_forward_hook(lambda module, args, out: batch_sizes.append(args[0].shape[0]))
    penalty = SoftSymmetryPenalty(
        mode="infinitesimal",
        group="so3",
        implementation="finite_difference",
        num_directions=3,
        difference_scheme=scheme,
    )

    logits, _ = penalty(network, p4, mask)

    assert batch_sizes == [(1 + copies) * p4.shape[0]]
    torch.testing.assert_close(logits, network(p4, mask))


def test_penalty_gradient_of_the_batch_is_the_mean_over_its_halves():
    torch.manual_seed(2)
    network = small_network("transformer").double()
    p4, mask = make_random_jets(num_jets=8, max_particles=9, seed=6)
    penalty = _PerJetDirections(
        mode="infinitesimal", implementation="finite_difference", num_directions=2
    )
    parameters = list(network.parameters())

    def gradient(p, m):
        value = penalty(network, p, m)[1]
        return torch.autograd.grad(value, parameters, allow_unused=True, materialize_grads=True)

    whole = gradient(p4, mask)
    halves = [gradient(p, m) for p, m in zip(p4.chunk(2), mask.chunk(2), strict=True)]

    assert any(g.abs().max() > 0 for g in whole)
    for combined, first, second in zip(whole, *halves, strict=True):
        torch.testing.assert_close(combined, (first + second) / 2, rtol=1e-10, atol=1e-14)


def test_active_dropout_and_normalisation_are_refused():
    p4, mask = make_random_jets(num_jets=4, max_particles=8, seed=7, dtype=torch.float32)
    penalty = SoftSymmetryPenalty(mode="infinitesimal", implementation="finite_difference")
    network = ParticleTransformer(embed_dim=16, num_heads=2, num_layers=1, dropout=0.1)

    with pytest.raises(ValueError, match=r"active dropout in blocks\.0\.mlp\.2, blocks\.0\.drop"):
        penalty(network, p4, mask)
    logits, value = penalty(network.eval(), p4, mask)
    assert value.item() > 0
    with pytest.raises(ValueError, match="normalise=True needs"):
        SoftSymmetryPenalty(normalise=True, implementation="finite_difference")
    with pytest.raises(ValueError, match="difference_scheme 'backward' is not available"):
        SoftSymmetryPenalty(difference_scheme="backward")
    with pytest.raises(ValueError, match="num_directions must be at least 1"):
        SoftSymmetryPenalty(num_directions=0)
    with pytest.raises(ValueError, match="difference_step must be positive"):
        SoftSymmetryPenalty(difference_step=0.0)


def test_estimator_is_built_from_yaml_and_trains_a_classifier():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(JetClassifier, "model")
    config = parser.parse_string(
        """
        model:
          network:
            class_path: softsymlit.models.ParticleTransformer
            init_args: {embed_dim: 16, num_heads: 2, num_layers: 1}
          symmetry:
            class_path: softsymlit.symmetry.SoftSymmetryPenalty
            init_args:
              weight: 0.1
              group: lorentz
              mode: infinitesimal
              implementation: finite_difference
              num_directions: 2
              difference_scheme: central
        """
    )
    model = parser.instantiate_classes(config).model
    p4, mask = make_random_jets(num_jets=4, max_particles=8, seed=8, dtype=torch.float32)
    batch = {"p4": p4, "mask": mask, "label": torch.tensor([0, 1, 0, 1]), "weight": torch.ones(4)}

    terms = model.compute_losses(batch)
    terms.loss.backward()

    assert model.symmetry.resolve_implementation(model.network) == "finite_difference"
    assert model.symmetry.difference_step == pytest.approx(5e-3)
    assert SoftSymmetryPenalty().resolve_implementation(model.network) == "input_gradient"
    assert terms.symmetry_loss.item() > 0
    assert model.network.blocks[0].qkv.weight.grad.abs().max() > 0
