"""Shared fixtures: every test is small, on CPU, with no external logger."""

from __future__ import annotations

import os

import pytest
from synthetic import make_random_jets

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def random_jets():
    """A small batch of synthetic jets, float64: ``(p4, mask)``."""
    return make_random_jets()
