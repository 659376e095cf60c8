"""Sampled and infinitesimal soft-symmetry penalties against closed forms and finite differences."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from symmetry_helpers import (
    FixedDrawPenalty,
    central_difference,
    jet_mass,
    jet_px,
    small_network,
    trained_network,
)
from synthetic import make_random_jets
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader

from softsymlit.models import ConstituentFeatures, JetClassifier
from softsymlit.symmetry import SoftSymmetryPenalty, Subgroup, apply, boost, lie_derivatives
from softsymlit.symmetry.penalty import output_map

IMPLEMENTATIONS = ("jvp", "input_gradient")


@pytest.fixture(scope="module")
def trained():
    return {kind: trained_network(kind) for kind in ("pfn", "transformer")}


@pytest.mark.parametrize("mode", ["sampled", "infinitesimal"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_invariant_function_has_zero_penalty(random_jets, mode, implementation):
    p4, mask = random_jets
    penalty = SoftSymmetryPenalty(mode=mode, implementation=implementation, max_rapidity=1.0)

    value, result = penalty(jet_mass, p4, mask)

    torch.testing.assert_close(value, jet_mass(p4, mask))
    assert result.item() < 1e-18
    lie = lie_derivatives(
        jet_mass, p4, mask, Subgroup("lorentz").matrices(p4, mask), implementation=implementation
    )
    assert lie.derivatives.abs().max().item() < 1e-12


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_lie_derivatives_of_jet_px_have_their_closed_form(random_jets, implementation):
    p4, mask = random_jets
    jet = (p4 * mask.unsqueeze(-1)).sum(dim=1) / 100.0
    energy, _, py, pz = jet.unbind(-1)
    zero = torch.zeros_like(energy)
    # d/dε of (e^{εG} P)_x for G = Lx, Ly, Lz, Kx, Ky, Kz.
    expected = torch.stack((zero, pz, -py, energy, zero, zero), dim=1)

    lie = lie_derivatives(
        jet_px, p4, mask, Subgroup("lorentz").matrices(p4, mask), implementation=implementation
    )
    torch.testing.assert_close(lie.derivatives[..., 0], expected)

    penalty = SoftSymmetryPenalty(mode="infinitesimal", implementation=implementation)
    _, value = penalty(jet_px, p4, mask)
    torch.testing.assert_close(value, (energy**2 + py**2 + pz**2).mean())


@pytest.mark.parametrize(
    "generator, closed_form",
    [
        ("Lz", lambda t, e, px, py: (torch.cos(t) - 1) * px - torch.sin(t) * py),
        ("Kx", lambda z, e, px, py: (torch.cosh(z) - 1) * px + torch.sinh(z) * e),
    ],
)
def test_sampled_penalty_of_jet_px_has_its_closed_form(random_jets, generator, closed_form):
    p4, mask = random_jets
    parameters = torch.linspace(-0.8, 1.1, p4.shape[0], dtype=torch.float64)[:, None]
    penalty = FixedDrawPenalty(generators=[generator], parameters=parameters)
    energy, px, py, _ = ((p4 * mask.unsqueeze(-1)).sum(dim=1) / 100.0).unbind(-1)

    _, value = penalty(jet_px, p4, mask)

    torch.testing.assert_close(value, closed_form(parameters[:, 0], energy, px, py).square().mean())


@pytest.mark.parametrize("kind", ["pfn", "transformer"])
@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_lie_derivatives_equal_central_differences_for_trained_networks(trained, kind, output):
    network = trained[kind]
    p4, mask = make_random_jets(num_jets=6, max_particles=10, seed=3)
    generators = Subgroup(generators=["Lx", "Ly", "Lz", "Kx", "Ky", "Kz", "L_jet", "K_jet"])
    matrices = generators.matrices(p4, mask)

    with sdpa_kernel(SDPBackend.MATH):
        reference = central_difference(network, p4, mask, matrices, output)
        for implementation in IMPLEMENTATIONS:
            lie = lie_derivatives(network, p4, mask, matrices, output, implementation)
            scale = reference.abs().max().item()
            assert scale > 1e-3
            torch.testing.assert_close(lie.derivatives, reference, atol=1e-7 * scale, rtol=1e-6)


@pytest.mark.parametrize("kind", ["pfn", "transformer"])
@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_implementations_agree_on_values_norms_and_parameter_gradients(kind, output):
    torch.manual_seed(1)
    network = small_network(kind, num_classes=3).double()
    p4, mask = make_random_jets(num_jets=5, max_particles=9, seed=6)
    matrices = Subgroup("lorentz").matrices(p4, mask)
    parameters = [p for p in network.parameters()]

    results, gradients = {}, {}
    with sdpa_kernel(SDPBackend.MATH):
        for implementation in IMPLEMENTATIONS:
            lie = lie_derivatives(network, p4, mask, matrices, output, implementation, True)
            objective = lie.derivatives.square().sum() + lie.gradient_norm_squared.sum()
            results[implementation] = lie
            gradients[implementation] = torch.autograd.grad(
                objective, parameters, allow_unused=True, materialize_grads=True
            )

    jvp, gradient = results["jvp"], results["input_gradient"]
    torch.testing.assert_close(jvp.derivatives, gradient.derivatives)
    torch.testing.assert_close(jvp.gradient_norm_squared, gradient.gradient_norm_squared)
    for a, b in zip(gradients["jvp"], gradients["input_gradient"], strict=True):
        torch.testing.assert_close(a, b)


def test_parameter_gradient_of_the_jvp_penalty_through_layer_norm_equals_finite_difference():
    torch.manual_seed(2)
    network = small_network("transformer").double()
    p4, mask = make_random_jets(num_jets=4, max_particles=8, seed=7)
    matrices = Subgroup("lorentz").matrices(p4, mask)
    weight = network.blocks[0].norm1.weight

    def penalty() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            lie = lie_derivatives(network, p4, mask, matrices, implementation="jvp")
        return lie.derivatives.square().sum()

    (gradient,) = torch.autograd.grad(penalty(), weight)
    step = 1e-6
    with torch.no_grad():
        weight[3] += step
    plus = penalty().item()
    with torch.no_grad():
        weight[3] -= 2 * step
    minus = penalty().item()
    assert gradient[3].item() == pytest.approx((plus - minus) / (2 * step), rel=1e-6)


def test_normalised_penalty_equals_dense_jacobian_computation():
    torch.manual_seed(3)
    network = small_network("pfn").double()
    p4, mask = make_random_jets(num_jets=4, max_particles=7, seed=8)
    penalty = SoftSymmetryPenalty(
        mode="infinitesimal", group="so3", normalise=True, output="probabilities"
    )

    _, value = penalty(network, p4, mask)

    expected = []
    generators = Subgroup("so3").matrices(p4, mask)
    for b in range(4):

        def probabilities(p, b=b):
            return output_map(network(p[None], mask[b : b + 1]), "probabilities")[0]

        jacobian = torch.autograd.functional.jacobian(probabilities, p4[b])  # [C, N, 4]
        tangents = torch.einsum("amn,in->aim", generators[b], p4[b])
        lie = torch.einsum("cim,aim->ac", jacobian, tangents)
        expected.append(lie.square().sum() / jacobian.square().sum())
    torch.testing.assert_close(value, torch.stack(expected).mean())


@pytest.mark.parametrize("mode", ["sampled", "infinitesimal"])
def test_penalty_ignores_extra_padding(mode):
    torch.manual_seed(4)
    network = small_network("transformer").double()
    p4, mask = make_random_jets(num_jets=5, max_particles=8, seed=9)
    padded_p4 = torch.cat((p4, torch.zeros(5, 4, 4, dtype=p4.dtype)), dim=1)
    padded_mask = torch.cat((mask, torch.zeros(5, 4, dtype=torch.bool)), dim=1)
    penalty = FixedDrawPenalty(mode=mode, group="lorentz")

    logits, value = penalty(network, p4, mask)
    padded_logits, padded_value = penalty(network, padded_p4, padded_mask)

    assert value.item() > 1e-6
    torch.testing.assert_close(padded_value, value)
    torch.testing.assert_close(padded_logits, logits)


def test_sampled_mode_makes_one_forward_pass_on_the_concatenated_batch(random_jets):
    p4, mask = random_jets
    network = small_network("pfn").double()
    batch_sizes = []
    network.register_forward_hook(lambda module, args, out: batch_sizes.append(args[0].shape[0]))
    penalty = SoftSymmetryPenalty(mode="sampled", group="boost_z")

    logits, _ = penalty(network, p4, mask)

    assert batch_sizes == [2 * p4.shape[0]]
    torch.testing.assert_close(logits, network(p4, mask))


def _numpy_features(p4: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Raw constituent features computed from scratch with numpy (padded slots are nan)."""
    p4 = np.where(mask[..., None], p4, np.nan)
    jet = np.nansum(p4 * mask[..., None], axis=1)
    jet_pt = np.hypot(jet[:, 1], jet[:, 2])
    jet_eta, jet_phi = np.arcsinh(jet[:, 3] / jet_pt), np.arctan2(jet[:, 2], jet[:, 1])
    pt = np.hypot(p4[..., 1], p4[..., 2])
    eta, phi = np.arcsinh(p4[..., 3] / pt), np.arctan2(p4[..., 2], p4[..., 1])
    delta_eta = eta - jet_eta[:, None]
    delta_phi = np.angle(np.exp(1j * (phi - jet_phi[:, None])))
    return np.stack(
        (
            delta_eta,
            delta_phi,
            np.log(pt),
            np.log(p4[..., 0]),
            np.log(pt / jet_pt[:, None]),
            np.log(p4[..., 0] / jet[:, None, 0]),
            np.sqrt(delta_eta**2 + delta_phi**2),
        ),
        axis=-1,
    )


def test_features_are_recomputed_from_transformed_momenta():
    p4, mask = make_random_jets(num_jets=6, max_particles=10, seed=12)
    rapidity = torch.full((6,), 0.8, dtype=torch.float64)
    beam = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).expand(6, 3)
    boosted = apply(boost(beam, rapidity), p4, mask)
    features = ConstituentFeatures()

    recomputed = features.raw(boosted, mask)
    expected = _numpy_features(boosted.numpy(), mask.numpy())
    np.testing.assert_allclose(recomputed[mask].numpy(), expected[mask.numpy()], rtol=1e-10)

    # Transforming only the constituents and keeping the jet energy of the untransformed jet
    # (what transforming precomputed features amounts to) is off by log(E_J'/E_J).
    jet = (p4 * mask.unsqueeze(-1)).sum(dim=1)
    boosted_energy = torch.cosh(rapidity) * jet[:, 0] + torch.sinh(rapidity) * jet[:, 3]
    stale = torch.log(boosted[..., 0]) - torch.log(jet[:, 0]).unsqueeze(1)
    shift = (stale - recomputed[..., 5])[mask]
    torch.testing.assert_close(
        shift, torch.log(boosted_energy / jet[:, 0]).unsqueeze(1).expand(6, 10)[mask]
    )
    assert shift.abs().min() > 0.1


def test_weight_schedule():
    penalty = SoftSymmetryPenalty(weight=0.5, warmup_steps=10, start_step=4)

    assert [penalty.weight_at(step) for step in (0, 3, 4, 9, 14, 100)] == pytest.approx(
        [0.0, 0.0, 0.0, 0.25, 0.5, 0.5]
    )
    assert SoftSymmetryPenalty(weight=0.0).weight_at(1000) == 0.0
    assert SoftSymmetryPenalty(weight=2.0).weight_at(0) == 2.0
    with pytest.raises(ValueError, match="mode 'finite' is not available; use one of: sampled"):
        SoftSymmetryPenalty(mode="finite")


class _CountingPenalty(SoftSymmetryPenalty):
    calls = 0

    def forward(self, network, p4, mask):
        type(self).calls += 1
        return super().forward(network, p4, mask)


def _fit(symmetry) -> dict[str, torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    p4, mask = make_random_jets(num_jets=32, max_particles=10, seed=13, dtype=torch.float32)
    label = (jet_mass(p4, mask) > jet_mass(p4, mask).median()).long()
    rows = [
        {"p4": p4[i], "mask": mask[i], "label": label[i], "weight": torch.tensor(1.0)}
        for i in range(32)
    ]
    model = JetClassifier(small_network("pfn"), symmetry=symmetry)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(rows, batch_size=8, shuffle=True))
    return {key: value.clone() for key, value in model.network.state_dict().items()}


def test_zero_weight_training_is_bit_identical_to_training_without_penalty():
    plain = _fit(None)
    zero = _fit(_CountingPenalty(weight=0.0, mode="infinitesimal"))
    not_started = _fit(_CountingPenalty(weight=1.0, mode="sampled", start_step=1000))
    penalised = _fit(SoftSymmetryPenalty(weight=1.0, mode="sampled"))

    assert _CountingPenalty.calls == 0
    for key, value in plain.items():
        assert torch.equal(zero[key], value), key
        assert torch.equal(not_started[key], value), key
    assert any(not torch.equal(penalised[key], value) for key, value in plain.items())


def test_penalty_is_built_from_yaml():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(JetClassifier, "model")
    config = parser.parse_string(
        """
        model:
          network:
            class_path: softsymlit.models.ParticleFlowNetwork
          symmetry:
            class_path: softsymlit.symmetry.SoftSymmetryPenalty
            init_args:
              weight: 0.3
              generators: [Lz, K_jet]
              mode: infinitesimal
              implementation: jvp
              warmup_steps: 5
        """
    )
    model = parser.instantiate_classes(config).model

    assert isinstance(model.symmetry, SoftSymmetryPenalty)
    assert model.symmetry.subgroup.names == ("Lz", "K_jet")
    assert model.symmetry.weight_at(5) == pytest.approx(0.3)
    assert model.symmetry.resolve_implementation(model.network) == "jvp"
    assert SoftSymmetryPenalty().resolve_implementation(model.network) == "input_gradient"
    assert math.isclose(model.symmetry.max_angle, math.pi)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_validation_logs_the_infinitesimal_penalty_under_inference_mode(implementation):
    torch.manual_seed(5)
    penalty = SoftSymmetryPenalty(weight=0.5, mode="infinitesimal", implementation=implementation)
    model = JetClassifier(small_network("transformer"), symmetry=penalty)
    p4, mask = make_random_jets(num_jets=8, max_particles=10, seed=14, dtype=torch.float32)
    rows = [
        {"p4": p4[i], "mask": mask[i], "label": torch.tensor(i % 2), "weight": torch.tensor(1.0)}
        for i in range(8)
    ]
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )

    (metrics,) = trainer.validate(model, DataLoader(rows, batch_size=8), verbose=False)

    with sdpa_kernel(SDPBackend.MATH):
        lie = lie_derivatives(model.network, p4, mask, Subgroup("lorentz").matrices(p4, mask))
    expected = lie.derivatives.square().sum(dim=(1, 2)).mean()
    assert metrics["val/symmetry_loss"] == pytest.approx(expected.item(), rel=1e-4)
    assert expected.item() > 0
