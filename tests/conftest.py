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


@pytest.fixture(scope="session")
def generated_sample(tmp_path_factory):
    """A small real sample (Pythia 8 + FastJet), made once per test session.

    2400 jets in six shards of 400: four for training, one each for validation and test.
    """
    from softsymlit.data.generate import generate_sample

    output = tmp_path_factory.mktemp("sample") / "top_tagging"
    generate_sample(output, num_jets=2400, seed=7, shard_size=400, workers=2, progress=False)
    return output
