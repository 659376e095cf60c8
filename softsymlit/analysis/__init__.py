"""Loss geometry, robustness and their Lightning callbacks."""

from softsymlit.analysis.callbacks import (
    DEFAULT_STRENGTHS,
    HessianCallback,
    RobustnessCallback,
    analysis_batches,
    background_rejection,
)
from softsymlit.analysis.curvature import (
    EigenResult,
    HessianOperator,
    LanczosSpectrum,
    SpectralQuadrature,
    SymmetryCurvature,
    TraceEstimate,
    analysis_mode,
    extreme_eigenpairs,
    hutchinson_trace,
    hutchpp_trace,
    krylov_hutchpp_trace,
    lanczos_spectrum,
    projected_hutchinson_trace,
    rayleigh_quotients,
    spectral_density,
    symmetry_curvature,
    top_eigenvalues,
)
from softsymlit.analysis.perturbations import PERTURBATIONS, perturb
from softsymlit.analysis.pyhessian_backend import PyHessianBackend

__all__ = [
    "DEFAULT_STRENGTHS",
    "PERTURBATIONS",
    "EigenResult",
    "HessianCallback",
    "HessianOperator",
    "LanczosSpectrum",
    "PyHessianBackend",
    "RobustnessCallback",
    "SpectralQuadrature",
    "SymmetryCurvature",
    "TraceEstimate",
    "analysis_batches",
    "analysis_mode",
    "background_rejection",
    "extreme_eigenpairs",
    "hutchinson_trace",
    "hutchpp_trace",
    "krylov_hutchpp_trace",
    "lanczos_spectrum",
    "perturb",
    "projected_hutchinson_trace",
    "rayleigh_quotients",
    "spectral_density",
    "symmetry_curvature",
    "top_eigenvalues",
]
