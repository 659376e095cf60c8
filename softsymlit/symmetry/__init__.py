"""Lorentz-group generators, finite group elements and soft-symmetry penalties."""

from softsymlit.symmetry.base import JetFunction, SymmetryPenalty

__all__ = ["JetFunction", "SymmetryPenalty"]
