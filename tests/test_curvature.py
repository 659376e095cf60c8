"""Curvature estimators against dense Hessians, a finite-difference check and the transformer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import SummaryModel, dense_hessian, jet_batches, total_loss
from synthetic import make_random_jets

from softsymlit.analysis import (
    HessianOperator,
    analysis_mode,
    extreme_eigenpairs,
    hutchinson_trace,
    hutchpp_trace,
    krylov_hutchpp_trace,
    lanczos_spectrum,
    projected_hutchinson_trace,
    spectral_density,
    symmetry_curvature,
    top_eigenvalues,
)
from softsymlit.analysis.curvature import BACKENDS, _generator, lanczos, rademacher
from softsymlit.models import JetClassifier, ParticleFlowNetwork, ParticleTransformer

RTOL = 1e-4


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(params=[0, 3], ids=["logistic", "mlp"])
def problem(request):
    torch.manual_seed(7)
    model = SummaryModel(hidden=request.param, penalty_weight=0.5).double()
    batches = jet_batches(num_batches=3, batch_size=24)
    dense = dense_hessian(model, batches)
    with analysis_mode(model):
        yield model, batches, dense, HessianOperator(model, batches, dtype=torch.float64)


@pytest.mark.parametrize("objective", ["task", "total"])
def test_operator_equals_dense_hessian_for_every_backend(problem, objective):
    model, batches, _, operator = problem
    assert operator.num_jets == 72
    dense = dense_hessian(model, batches, include_penalty=objective == "total")
    for backend in BACKENDS:
        hessian = HessianOperator(
            model, batches, objective=objective, dtype=torch.float64, backend=backend
        )
        assert torch.allclose(hessian.dense(), dense, rtol=1e-9, atol=1e-11), backend


def test_linearized_backend_reports_what_it_cannot_trace():
    class Untraceable(SummaryModel):
        """Refuses to run under a :mod:`torch.func` transform, like an objective that calls
        :func:`torch.autograd.grad` itself."""

        def loss_on_batch(self, batch, include_penalty=False):
            if torch._C._functorch.is_functorch_wrapped_tensor(self.net[0].weight):
                raise RuntimeError("no tracing here")
            return super().loss_on_batch(batch, include_penalty)

    torch.manual_seed(3)
    model = Untraceable(hidden=3).double()
    batches = jet_batches(num_batches=2, batch_size=12)
    with analysis_mode(model):
        traced = HessianOperator(model, batches, dtype=torch.float64, backend="linearized")
        with pytest.raises(RuntimeError, match="no tracing here"):
            traced.matvec(torch.ones(traced.num_parameters))
        plain = HessianOperator(model, batches, dtype=torch.float64)
        assert torch.allclose(plain.dense(), dense_hessian(model, batches), rtol=1e-9)


def test_total_objective_includes_the_weighted_penalty(problem):
    model, batches, _, _ = problem
    dense_total = dense_hessian(model, batches, include_penalty=True)
    operator = HessianOperator(model, batches, objective="total", dtype=torch.float64)
    assert torch.allclose(operator.dense(), dense_total, rtol=1e-9, atol=1e-11)
    assert not torch.allclose(dense_total, dense_hessian(model, batches), atol=1e-6)


def test_extreme_eigenvalues_match_dense(problem):
    _, _, dense, operator = problem
    exact = np.linalg.eigvalsh(dense.numpy())
    top, bottom = extreme_eigenpairs(operator, k=3, k_smallest=2, tol=1e-9, max_steps=60)
    assert _relative(top.eigenvalues, exact[::-1][:3]) < RTOL
    # A Krylov method finds a multiple eigenvalue once (the softmax shift symmetry of the
    # logistic model gives a fivefold zero), so compare with the distinct eigenvalues.
    scale = np.abs(exact).max()
    distinct = exact[np.concatenate([[True], np.diff(exact) > 1e-8 * scale])]
    assert np.abs(bottom.eigenvalues - distinct[:2]).max() < RTOL * scale
    assert top.residuals.max() < 1e-6
    for result in (top, bottom):
        vectors = result.eigenvectors.numpy()
        misfit = dense.numpy() @ vectors.T - vectors.T * result.eigenvalues
        denominator = np.maximum(np.abs(result.eigenvalues), 1e-6 * top.eigenvalues[0])
        residuals = np.linalg.norm(misfit, axis=0) / denominator
        assert np.allclose(residuals, result.residuals, atol=1e-8)

    arpack = top_eigenvalues(operator, k=3, tol=1e-10)
    assert _relative(arpack.eigenvalues, exact[::-1][:3]) < RTOL
    assert arpack.residuals.max() < 1e-6


def test_traces_match_dense(problem):
    _, _, dense, operator = problem
    n, exact = operator.num_parameters, float(torch.trace(dense))
    exact_pp = hutchpp_trace(operator, num_matvecs=3 * n, seed=3)
    assert abs(exact_pp.trace - exact) < RTOL * abs(exact) and exact_pp.standard_error == 0.0

    plain = hutchinson_trace(operator, num_probes=40, seed=5)
    probes = rademacher(40, n, _generator(5))
    expected = ((probes @ dense) * probes).sum(dim=1).numpy()
    assert np.allclose(plain.samples, expected, rtol=1e-9, atol=1e-10)
    assert abs(plain.trace - exact) < 5 * plain.standard_error + 1e-9

    partial = hutchpp_trace(operator, num_matvecs=n, seed=3)
    assert abs(partial.trace - exact) < 5 * partial.standard_error + 1e-6 * abs(exact)

    krylov_exact = krylov_hutchpp_trace(operator, num_matvecs=n + 5, krylov_steps=n, seed=2)
    assert abs(krylov_exact.trace - exact) < RTOL * abs(exact)
    assert krylov_exact.standard_error == 0.0 and krylov_exact.num_hvp <= n
    krylov = krylov_hutchpp_trace(operator, num_matvecs=3 + 100, krylov_steps=3, seed=2)
    assert krylov.num_hvp == 103
    assert abs(krylov.trace - exact) < 5 * krylov.standard_error + 1e-6 * abs(exact)
    generator = _generator(2)
    basis = lanczos(operator, rademacher(1, n, generator)[0], 3, keep_basis=True).basis
    probes = rademacher(100, n, generator)
    probes = probes - (probes @ basis.T) @ basis
    expected = ((probes @ dense) * probes).sum(dim=1).numpy()
    assert np.allclose(krylov.samples, expected, rtol=1e-8, atol=1e-12)
    low_rank = float(torch.trace(basis @ dense @ basis.T))
    assert abs(krylov.trace - (low_rank + expected.mean())) < 1e-10 * abs(exact)


def test_slq_moments_and_derived_measures_match_dense(problem):
    _, _, dense, operator = problem
    n = operator.num_parameters
    eigenvalues = np.linalg.eigvalsh(dense.numpy())

    # With the rows of the identity as probes, the quadrature is exact.
    exact = spectral_density(operator, num_steps=n, probes=torch.eye(n, dtype=torch.float64))
    for order in (1, 2, 3):
        assert abs(exact.moment(order) - np.mean(eigenvalues**order)) < RTOL * np.mean(
            np.abs(eigenvalues) ** order
        )
    positive = np.clip(eigenvalues, 0, None)
    assert abs(exact.effective_dimension(0.1) - np.sum(positive / (positive + 0.1))) < RTOL * n
    lambda_max = eigenvalues.max()
    for epsilon in (0.01, 0.1, 0.5):
        count = np.sum(np.abs(eigenvalues) < epsilon * lambda_max)
        assert abs(exact.near_zero_count(epsilon, lambda_max) - count) < 1e-6

    # With random probes, m Lanczos steps integrate polynomials of degree < 2m exactly.
    steps = min(4, n)
    quadrature = spectral_density(operator, num_probes=3, num_steps=steps, seed=11)
    probes = rademacher(3, n, _generator(11))
    for order in (1, 2, 3):
        power = torch.linalg.matrix_power(dense, order)
        expected = float(((probes @ power) * probes).sum() / (3 * n))
        assert abs(quadrature.moment(order) - expected) < RTOL * abs(expected)

    # The broadened density integrates to one, keeps the mean and adds σ² to the variance.
    sigma = quadrature.default_broadening(0.05)
    low, high = quadrature.support
    grid = np.linspace(low - 10 * sigma, high + 10 * sigma, 20001)
    density = quadrature.density(grid, sigma)
    assert abs(np.trapezoid(density, grid) - 1.0) < 1e-6
    assert abs(np.trapezoid(grid * density, grid) - quadrature.moment(1)) < 1e-6 * (high - low)
    second = np.trapezoid(grid**2 * density, grid)
    assert abs(second - quadrature.moment(2) - sigma**2) < 1e-6 * (high - low) ** 2


def test_one_lanczos_run_serves_eigenpairs_density_and_trace(problem):
    _, _, dense, operator = problem
    n = operator.num_parameters
    exact = np.linalg.eigvalsh(dense.numpy())
    scale = np.abs(exact).max()
    distinct = exact[np.concatenate([[True], np.diff(exact) > 1e-8 * scale])]

    # Stopped at residual 1e-3 by the Lanczos relation alone, no explicit products.
    spectrum = lanczos_spectrum(operator, k=2, k_smallest=1, tol=1e-3, max_steps=n, min_steps=3,
                                seed=4)  # fmt: skip
    steps = len(spectrum.run.alphas)
    assert spectrum.converged and spectrum.largest.num_hvp == steps
    assert np.abs(spectrum.largest.eigenvalues - distinct[::-1][:2]).max() < RTOL * scale
    assert abs(spectrum.smallest.eigenvalues[0] - distinct[0]) < RTOL * scale
    for result in (spectrum.largest, spectrum.smallest):
        vectors = result.eigenvectors.numpy()
        misfit = dense.numpy() @ vectors.T - vectors.T * result.eigenvalues
        denominator = np.maximum(np.abs(result.eigenvalues), 1e-6 * scale)
        explicit = np.linalg.norm(misfit, axis=0) / denominator
        assert np.allclose(result.residuals, explicit, atol=1e-8)
        assert explicit.max() <= 1e-3

    # The run is a Gauss quadrature of the normalised Rademacher start: exact below degree 2m.
    start = rademacher(1, n, _generator(4))[0] / np.sqrt(n)
    one_probe = spectrum.quadrature()
    for order in range(1, 2 * steps):
        power = torch.linalg.matrix_power(dense, order)
        expected = float(start @ power @ start)
        assert abs(one_probe.moment(order) - expected) < RTOL * float(start.abs() @ power.abs()
                                                                       @ start.abs())  # fmt: skip

    # With two further probes it is the first of three rows, at no extra product.
    before = operator.num_hvp
    quadrature = spectral_density(operator, num_probes=2, num_steps=3, seed=11,
                                  runs=[spectrum.run])  # fmt: skip
    assert quadrature.num_hvp == operator.num_hvp - before == 6
    probes = torch.cat([start[None], rademacher(2, n, _generator(11)) / np.sqrt(n)])
    for order in (1, 2, 3):
        power = torch.linalg.matrix_power(dense, order)
        expected = float(((probes @ power) * probes).sum() / 3)
        assert abs(quadrature.moment(order) - expected) < RTOL * abs(expected)

    # Its basis is the exact part of Krylov-aware Hutch++; only the probes cost products. The
    # logistic Hessian has a repeated zero eigenvalue only, so an exhausted run is exact.
    basis = spectrum.run.basis
    trace = projected_hutchinson_trace(operator, spectrum.run, num_probes=60, seed=6)
    exact_trace = float(torch.trace(dense))
    if spectrum.run.last_beta == 0.0:
        assert trace.num_hvp == 0 and trace.standard_error == 0.0
        assert abs(trace.trace - exact_trace) < RTOL * abs(exact_trace)
        return
    assert trace.num_hvp == 60
    assert abs(spectrum.run.alphas.sum() - float(torch.trace(basis @ dense @ basis.T))) < (
        1e-10 * scale * steps
    )
    projected = rademacher(60, n, _generator(6))
    projected = projected - (projected @ basis.T) @ basis
    expected = ((projected @ dense) * projected).sum(dim=1).numpy()
    assert np.allclose(trace.samples, expected, rtol=1e-8, atol=1e-12)
    assert abs(trace.trace - exact_trace) < 5 * trace.standard_error + 1e-6 * abs(exact_trace)


def test_curvature_along_the_symmetry_gradient(problem):
    model, batches, dense, operator = problem
    params = list(model.parameters())
    num = sum(len(b["label"]) for b in batches)
    penalty = sum(model.symmetry_loss_on_batch(b) * len(b["label"]) / num for b in batches)
    direction = torch.cat([g.reshape(-1) for g in torch.autograd.grad(penalty, params)])
    expected = float(direction @ dense @ direction / (direction @ direction))

    curvature = symmetry_curvature(operator, num_random=200, seed=2)
    assert abs(curvature.symmetry - expected) < 1e-8 * abs(expected) + 1e-12
    mean_rayleigh = float(torch.trace(dense)) / operator.num_parameters
    assert abs(curvature.random_mean - mean_rayleigh) < 5 * curvature.random_std / np.sqrt(200)


def test_parameter_subset_is_the_dense_sub_block():
    torch.manual_seed(0)
    model = SummaryModel(hidden=3).double()
    batches = jet_batches(num_batches=2)
    dense = dense_hessian(model, batches)
    with analysis_mode(model):
        operator = HessianOperator(model, batches, parameters=["net.2.*"], dtype=torch.float64)
        assert operator.names == ["net.2.weight", "net.2.bias"]
        block = operator.dense()
    assert torch.allclose(block, dense[-8:, -8:], rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        HessianOperator(model, batches, parameters=["nothing*"])


def test_float32_operator_of_a_float32_module_matches_float64():
    torch.manual_seed(0)
    model = JetClassifier(ParticleFlowNetwork(phi_sizes=(8, 8), f_sizes=(8,)))
    batches = jet_batches(num_batches=2, dtype=torch.float32)
    with analysis_mode(model):
        single = HessianOperator(model, batches)
        double = HessianOperator(model, batches, dtype=torch.float64)
        v = torch.randn(single.num_parameters, dtype=torch.float64)
        hv64 = double.matvec(v)
        assert hv64.dtype == torch.float64
        assert _relative(single.matvec(v).double(), hv64) < 1e-4
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _finite_difference_hvp(operator: HessianOperator, vector: torch.Tensor, eps=1e-5):
    point = operator.parameter_vector()

    def gradient_at(theta):
        operator._point = operator.unflatten(theta)
        return operator.gradient()

    result = (gradient_at(point + eps * vector) - gradient_at(point - eps * vector)) / (2 * eps)
    operator._point = operator.unflatten(point)
    return result


def test_transformer_hessian_on_cpu_matches_finite_differences():
    torch.manual_seed(0)
    network = ParticleTransformer(embed_dim=8, num_heads=2, num_layers=1, mlp_ratio=1.0)
    model = JetClassifier(network).double()
    p4, mask = make_random_jets(12, 10, seed=4)
    batches = [{"p4": p4, "mask": mask, "label": (mask.sum(1) > 6).long()}]
    with analysis_mode(model):
        for backend in BACKENDS:
            operator = HessianOperator(model, batches, dtype=torch.float64, backend=backend)
            vector = torch.randn(operator.num_parameters, dtype=torch.float64)
            expected = _finite_difference_hvp(operator, vector)
            assert _relative(operator.matvec(vector), expected) < 1e-5
        top, _ = extreme_eigenpairs(operator, k=2, tol=1e-6, max_steps=100)
        assert top.residuals.max() < 1e-5


def test_penalty_sampling_gives_one_fixed_matrix():
    """A stochastic penalty sees the same draws in every product, for every backend."""

    class Noisy(SummaryModel):
        def loss_on_batch(self, batch, include_penalty=False):
            scale = 1.0 + 0.1 * torch.rand(())
            return super().loss_on_batch({**batch, "p4": batch["p4"] * scale}, include_penalty)

    torch.manual_seed(0)
    model = Noisy(hidden=3).double()
    batches = jet_batches(num_batches=2)
    state = torch.get_rng_state()
    with analysis_mode(model):
        autograd = HessianOperator(model, batches, dtype=torch.float64).dense()
        func = HessianOperator(model, batches, dtype=torch.float64, backend="func").dense()
        traced = HessianOperator(model, batches, dtype=torch.float64, backend="linearized")
        linearized = traced.dense()
    assert torch.allclose(autograd, autograd.T, atol=1e-10)
    assert torch.allclose(autograd, func, rtol=1e-9, atol=1e-11)
    assert torch.allclose(autograd, linearized, rtol=1e-9, atol=1e-11)
    assert torch.equal(torch.get_rng_state(), state)
    assert total_loss(model, batches).requires_grad
