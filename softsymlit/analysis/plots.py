"""Figures of the analysis callbacks, drawn without pyplot's global state and saved as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from softsymlit.analysis.curvature import SpectralQuadrature


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_spectral_density(
    quadrature: SpectralQuadrature,
    path: str | Path,
    sigma: float,
    top_eigenvalues: Sequence[float] = (),
    near_zero_width: float | None = None,
    title: str = "",
) -> Path:
    """Draw the Gaussian-broadened Hessian spectral density ``ρ_σ(λ)`` (log scale) with the top
    eigenvalues as ticks and the near-zero window ``|λ| < ε λ_max`` shaded; returns the path."""
    low, high = quadrature.support
    for value in top_eigenvalues:
        low, high = min(low, value), max(high, value)
    margin = 5 * sigma
    grid = np.linspace(low - margin, high + margin, 800)
    density = quadrature.density(grid, sigma)

    figure = Figure(figsize=(6.0, 4.0))
    axes = figure.add_subplot()
    axes.semilogy(grid, np.clip(density, 1e-12, None), color="tab:blue", label=r"$\rho_\sigma$")
    for index, value in enumerate(top_eigenvalues):
        axes.axvline(value, color="tab:red", lw=0.8, alpha=0.7,
                     label="top eigenvalues" if index == 0 else None)  # fmt: skip
    if near_zero_width:
        axes.axvspan(-near_zero_width, near_zero_width, color="tab:green", alpha=0.2,
                     label=r"$|\lambda| < \epsilon\lambda_{max}$")  # fmt: skip
    axes.set_xlabel(r"eigenvalue $\lambda$")
    axes.set_ylabel(r"spectral density $\rho(\lambda)$")
    axes.set_ylim(bottom=max(1e-8, density[density > 0].min() if np.any(density > 0) else 1e-8))
    axes.set_title(title or f"Hessian spectrum (n = {quadrature.num_parameters})")
    axes.legend(frameon=False, fontsize="small")
    return _save(figure, path)


def plot_robustness_curves(
    results: Mapping[str, Mapping[float, Mapping[str, float]]], path: str | Path, title: str = ""
) -> Path:
    """One panel per perturbation: AUC (left axis) and mean ``|Δ output|`` (right axis) against
    strength. ``results[name][strength]`` holds ``auc`` and ``mean_abs_delta``."""
    names = list(results)
    columns = min(4, max(1, len(names)))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(3.4 * columns, 2.8 * rows), layout="constrained")
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        strengths = sorted(results[name])
        auc = [results[name][s]["auc"] for s in strengths]
        delta = [results[name][s]["mean_abs_delta"] for s in strengths]
        axes.plot(strengths, auc, "o-", color="tab:blue")
        axes.set_xlabel("strength")
        axes.set_ylabel("AUC", color="tab:blue")
        twin = axes.twinx()
        twin.plot(strengths, delta, "s--", color="tab:orange")
        twin.set_ylabel(r"mean $|\Delta$ output$|$", color="tab:orange")
        axes.set_title(name)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


__all__ = ["plot_robustness_curves", "plot_spectral_density"]
