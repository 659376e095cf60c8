"""The study report's statistics on fixed tables: Spearman ρ, bootstrap intervals, per-λ means,
the findings' verdicts; and the grid's expansion and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from softsymlit.study.grid import RunSpec, StudyConfig, expand_grid
from softsymlit.study.scan_report import (
    bootstrap_indices,
    correlations,
    findings,
    mean_and_error,
    per_lambda,
    spearman_bootstrap,
    spearman_rows,
)

# A fixed table of 12 runs with ties and one missing value.
X = [3.1, 2.0, 5.5, 4.4, 1.2, 2.0, 6.1, 3.3, None, 4.9, 0.7, 2.8]
Y = [0.81, 0.79, 0.86, 0.80, 0.74, 0.77, 0.88, 0.83, 0.90, 0.80, 0.75, 0.82]


def _pairs():
    keep = [i for i, x in enumerate(X) if x is not None]
    return np.array([X[i] for i in keep]), np.array([Y[i] for i in keep])


def test_spearman_and_bootstrap_interval_equal_scipy():
    x, y = _pairs()
    result = spearman_bootstrap(X, Y, resamples=3000, seed=7, level=0.9)
    assert result.n == 11
    assert result.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)

    # The same resamples through scipy's spearmanr, one at a time.
    indices = bootstrap_indices(len(x), 3000, 7)
    by_scipy = np.array([stats.spearmanr(x[i], y[i]).statistic for i in indices])
    by_rows = spearman_rows(x[indices], y[indices])
    np.testing.assert_allclose(by_rows, by_scipy, atol=1e-12, equal_nan=True)
    finite = by_scipy[np.isfinite(by_scipy)]
    assert result.resamples == len(finite)
    low, high = np.quantile(finite, [0.05, 0.95])
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)

    # scipy's own percentile bootstrap draws other resamples: the same interval within the
    # Monte Carlo noise of the tails (about 0.02 at 10000 resamples here).
    large = spearman_bootstrap(X, Y, resamples=10000, seed=7, level=0.9)
    reference = stats.bootstrap(
        (x, y), lambda a, b: stats.spearmanr(a, b).statistic, paired=True, vectorized=False,
        n_resamples=10000, confidence_level=0.9, method="percentile", random_state=7,
    ).confidence_interval  # fmt: skip
    assert large.low == pytest.approx(reference.low, abs=0.05)
    assert large.high == pytest.approx(reference.high, abs=0.05)


def test_bootstrap_is_reproducible_from_its_seed_and_undefined_below_three_runs():
    first = spearman_bootstrap(X, Y, resamples=500, seed=3)
    assert spearman_bootstrap(X, Y, resamples=500, seed=3) == first
    assert spearman_bootstrap(X, Y, resamples=500, seed=4).low != first.low
    few = spearman_bootstrap([1.0, 2.0], [2.0, 1.0])
    assert few.n == 2 and math.isnan(few.rho)


def _rows(complexity, gap, seeds=(0, 1, 2)):
    rows = []
    for index, (c, g) in enumerate(zip(complexity, gap, strict=True)):
        rows.append({"run_id": f"r{index}", "status": "finished", "weight": [0.0, 0.1, 1.0, 10.0][
            index % 4], "group": "lorentz", "mode": "sampled", "architecture": "pfn",
            "seed": seeds[index % len(seeds)], "hessian_top_eigenvalue": c, "gap_auc": g,
            "test_auc": 0.9})  # fmt: skip
    return rows


def test_per_lambda_mean_and_standard_error():
    rows = _rows([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [0.0] * 8, seeds=(0, 0, 0, 0, 1))
    rows.append({**rows[0], "run_id": "failed", "status": "failed", "hessian_top_eigenvalue": 99})
    table = {entry["weight"]: entry for entry in per_lambda(rows)}
    # λ = 0 holds runs 0 and 4 (complexity 1 and 5); the failed run is left out.
    assert table[0.0]["seeds"] == 2
    assert table[0.0]["hessian_top_eigenvalue_mean"] == pytest.approx(3.0)
    assert table[0.0]["hessian_top_eigenvalue_se"] == pytest.approx(np.std([1, 5], ddof=1) /
                                                                   math.sqrt(2))  # fmt: skip
    mean, error, count = mean_and_error([2.0, None, float("nan")])
    assert (mean, count) == (2.0, 1) and math.isnan(error)


def test_findings_state_support_only_where_intervals_exclude_zero():
    config = StudyConfig(name="fixed", weights=[0.0], seeds=[0], bootstrap_resamples=1000)
    complexity = list(np.linspace(1.0, 30.0, 30))
    rows = _rows(complexity, [0.01 * c for c in complexity])  # gap grows with complexity
    text = findings(rows, correlations(rows, config), config)
    generalisation = next(t for t in text if t.startswith("**generalisation**"))
    assert "supported, strongly" in generalisation and "1 have" in generalisation
    assert any(t.startswith("**distillation**") and "not measured" in t for t in text)

    rng = np.random.default_rng(0)
    noise = _rows(complexity[:6], list(rng.normal(size=6)), seeds=(0, 1))
    text = findings(noise, correlations(noise, config), config)
    assert "not supported by this data" in next(t for t in text if "generalisation" in t)
    assert "not as evidence" in text[-1]


def test_grid_plans_lambda_zero_once_and_names_runs():
    config = StudyConfig(name="g", weights=[0.0, 0.5], seeds=[1, 2], groups=["lorentz", "so3"],
                         modes=["sampled", "infinitesimal"])  # fmt: skip
    runs = expand_grid(config)
    assert len(runs) == 2 + 2 * 2 * 2
    assert runs[0] == RunSpec(0.0, "none", "none", "base", 1)
    assert runs[-1].run_id == "lam0.5_so3_infinitesimal_base_s2"


def test_config_errors_name_the_key_and_the_valid_choices():
    with pytest.raises(ValueError, match="unknown study keys lambdas.*valid keys: .*weights"):
        StudyConfig.from_dict({"name": "x", "weights": [0.0], "seeds": [0], "lambdas": [1]})
    with pytest.raises(ValueError, match="needs seeds"):
        StudyConfig.from_dict({"name": "x", "weights": [0.0]})
    with pytest.raises(ValueError, match="unknown keys pt_min in study key 'ood.high'"):
        StudyConfig.from_dict({"name": "x", "weights": [0.0], "seeds": [0],
                               "ood": {"high": {"num_jets": 10, "pt_min": 800}}})  # fmt: skip
