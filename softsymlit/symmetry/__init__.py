"""Lorentz-group generators, finite group elements and soft-symmetry penalties."""

from softsymlit.symmetry.base import JetFunction, SymmetryPenalty
from softsymlit.symmetry.elements import (
    apply,
    boost,
    exponential,
    invariant_mass_squared,
    minkowski_dot,
    rotation,
    sample_coefficients,
)
from softsymlit.symmetry.generators import (
    AVAILABLE,
    METRIC,
    SUBGROUPS,
    Subgroup,
    boost_generator,
    lorentz_generators,
    rotation_generator,
)
from softsymlit.symmetry.penalty import (
    LieDerivatives,
    SoftSymmetryPenalty,
    directional_differences,
    lie_derivatives,
    random_directions,
)
from softsymlit.symmetry.violation import SymmetryViolation, symmetry_violation

__all__ = [
    "AVAILABLE",
    "METRIC",
    "SUBGROUPS",
    "JetFunction",
    "LieDerivatives",
    "SoftSymmetryPenalty",
    "Subgroup",
    "SymmetryPenalty",
    "SymmetryViolation",
    "apply",
    "boost",
    "boost_generator",
    "directional_differences",
    "exponential",
    "invariant_mass_squared",
    "lie_derivatives",
    "lorentz_generators",
    "minkowski_dot",
    "random_directions",
    "rotation",
    "rotation_generator",
    "sample_coefficients",
    "symmetry_violation",
]
