"""PyHessian behind its wrapper against this project's operator, and two gloo ranks against one."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from analysis_helpers import jet_batches

from softsymlit.analysis import (
    HessianOperator,
    PyHessianBackend,
    analysis_mode,
    extreme_eigenpairs,
    hutchpp_trace,
)
from softsymlit.models import JetClassifier, ParticleFlowNetwork


def _small_pfn(seed: int = 0) -> JetClassifier:
    torch.manual_seed(seed)
    return JetClassifier(ParticleFlowNetwork(phi_sizes=(6, 6), f_sizes=(6,))).double()


@pytest.mark.parametrize("num_batches", [1, 2], ids=["one_batch", "two_batches"])
def test_pyhessian_agrees_with_own_backend_and_leaves_no_trace(num_batches):
    model = _small_pfn()
    model.train()
    model.network.f.eval()
    batches = jet_batches(num_batches=num_batches, batch_size=16)
    pyhessian = PyHessianBackend(model, batches, seed=3)
    original_eig = torch.eig
    with analysis_mode(model):
        operator = HessianOperator(model, batches, dtype=torch.float64)
        dense = operator.dense()
    exact = np.linalg.eigvalsh(dense.numpy())

    vector = torch.randn(operator.num_parameters, dtype=torch.float64)
    assert torch.allclose(pyhessian.hvp(vector), dense @ vector, rtol=1e-9, atol=1e-11)

    if num_batches == 1:  # several batches recompute every product: slow, same code path
        top = pyhessian.top_eigenvalues(k=1, max_iter=2000, tol=1e-10)
        assert abs(top[0] - exact[np.argmax(np.abs(exact))]) < 1e-4 * np.abs(exact).max()

    trace = pyhessian.trace(max_iter=30, tol=float("-inf"))
    assert trace.num_hvp == 30
    assert abs(trace.trace - exact.sum()) < 5 * trace.standard_error

    density = pyhessian.density(num_steps=operator.num_parameters, num_probes=1)
    assert np.allclose(density.weights.sum(axis=1), 1.0)
    assert exact.min() - 1e-6 <= density.nodes.min() and density.nodes.max() <= exact.max() + 1e-6

    assert model.training and not model.network.f.training and model.network.phi.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.eig is original_eig


def test_pyhessian_restores_grads_and_rng():
    model = _small_pfn()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad for p in model.parameters()]
    state = torch.get_rng_state()
    PyHessianBackend(model, jet_batches(num_batches=1)).top_eigenvalues(k=2, max_iter=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(
        p.grad is g and torch.all(g == 0.5) for p, g in zip(model.parameters(), grads, strict=True)
    )


def _estimates(model, batches):
    with analysis_mode(model):
        operator = HessianOperator(model, batches, dtype=torch.float64)
        top, bottom = extreme_eigenpairs(operator, k=3, k_smallest=1, tol=1e-8, max_steps=150)
        trace = hutchpp_trace(operator, num_matvecs=30, seed=4)
    return np.concatenate([top.eigenvalues, bottom.eigenvalues, [trace.trace]]), operator.num_hvp


def _rank_main(rank: int, world_size: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        values, num_hvp = _estimates(_small_pfn(), jet_batches(num_batches=3, batch_size=16))
        if rank == 0:
            np.save(path, np.concatenate([values, [num_hvp]]))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_two_gloo_ranks_give_the_numbers_of_one_process(tmp_path):
    single, single_hvp = _estimates(_small_pfn(), jet_batches(num_batches=3, batch_size=16))
    path = str(tmp_path / "ranks.npy")
    mp.spawn(_rank_main, args=(2, _free_port(), path), nprocs=2, join=True)
    shared = np.load(path)
    assert shared[-1] == single_hvp
    assert np.allclose(shared[:-1], single, rtol=1e-9, atol=1e-12)
