"""Data-parallel gradients with a symmetry penalty equal single-process gradients."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from symmetry_helpers import FixedDrawPenalty, small_network
from synthetic import make_random_jets
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from softsymlit.models import JetClassifier

CONFIGURATIONS = (
    {"mode": "sampled", "group": "lorentz"},
    {"mode": "infinitesimal", "group": "lorentz", "implementation": "input_gradient"},
    {"mode": "infinitesimal", "group": "jet_axis_boost", "implementation": "jvp"},
    {
        "mode": "infinitesimal",
        "group": "so3",
        "implementation": "input_gradient",
        "normalise": True,
    },
)
NUM_JETS = 8


class _Objective(nn.Module):
    """The classifier's training objective as a module, which is what data parallelism wraps."""

    def __init__(self, classifier: JetClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier.compute_losses(batch).loss


def _batch() -> dict[str, torch.Tensor]:
    p4, mask = make_random_jets(num_jets=NUM_JETS, max_particles=10, seed=21)
    label = torch.arange(NUM_JETS) % 2
    return {"p4": p4, "mask": mask, "label": label, "weight": torch.ones(NUM_JETS).double()}


def _gradients(kind: str, options: dict, batch: dict, parallel: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    classifier = JetClassifier(
        small_network(kind).double(), FixedDrawPenalty(weight=0.7, **options)
    )
    objective = (
        DistributedDataParallel(_Objective(classifier)) if parallel else _Objective(classifier)
    )
    objective(batch).backward()
    return [parameter.grad.clone() for parameter in classifier.network.parameters()]


def _worker(rank: int, world_size: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        batch = _batch()
        shard = {key: value.chunk(world_size)[rank] for key, value in batch.items()}
        results = {
            (kind, i): _gradients(kind, options, shard, parallel=True)
            for kind in ("pfn", "transformer")
            for i, options in enumerate(CONFIGURATIONS)
        }
        if rank == 0:
            torch.save(results, path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ddp
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gradients_equal_single_process_gradients(tmp_path, monkeypatch):
    path = str(tmp_path / "gradients.pt")
    # Spawned workers import this module by name, so its directory must be importable there.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    parallel = torch.load(path)

    batch = _batch()
    for kind in ("pfn", "transformer"):
        for i, options in enumerate(CONFIGURATIONS):
            single = _gradients(kind, options, batch, parallel=False)
            assert any(gradient.abs().max() > 0 for gradient in single)
            for a, b in zip(parallel[kind, i], single, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{kind} {options}")
