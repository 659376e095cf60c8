"""softsymlit: soft Lorentz-symmetry biases and functional complexity of jet taggers."""

__version__ = "0.1.0"
