"""Loss geometry, robustness and their Lightning callbacks."""
