"""PyHessian behind the same analysis contract, with its side effects contained.

PyHessian (Yao et al. 2020) works on ``model(inputs)`` and ``criterion(outputs, targets)``. It is
adapted here to the module contract ``loss_on_batch(batch)``: the "inputs" of a batch are a tensor
of ``n_b`` copies of its index (PyHessian weights batches by ``inputs.size(0)``), the adapted
model returns that batch's loss and the criterion passes it through, so PyHessian sees the same
objective ``L = Σ_b n_b L_b / Σ_b n_b`` as :class:`~softsymlit.analysis.curvature.HessianOperator`.

PyHessian 0.1 leaves marks that :class:`PyHessianBackend` removes: its constructor switches the
model to eval mode for good, ``backward(create_graph=True)`` leaves graph-carrying tensors in
every ``.grad``, its random vectors come from the global torch RNG, and ``density()`` calls the
removed ``torch.eig``. Every call here runs inside :func:`analysis_mode` (modes, ``requires_grad``,
``.grad`` and RNG states put back), with the torch RNG seeded for reproducibility and, for
``density()``, a ``torch.eig`` stand-in built on ``torch.linalg.eigh`` for the duration.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from softsymlit.analysis.curvature import (
    Batch,
    SpectralQuadrature,
    TraceEstimate,
    analysis_mode,
    select_parameters,
)

log = logging.getLogger(__name__)


class _IndexedLoss(nn.Module):
    """``forward(indices)`` is the loss of batch ``indices[0]`` (PyHessian's "model")."""

    def __init__(self, module: nn.Module, batches: Sequence[Batch], include_penalty: bool) -> None:
        super().__init__()
        self.module = module
        self.batches = list(batches)
        self.include_penalty = include_penalty

    def forward(self, indices: Tensor) -> Tensor:
        batch = self.batches[int(indices[0])]
        return self.module.loss_on_batch(batch, include_penalty=self.include_penalty)


def _pass_through(loss: Tensor, targets: Tensor) -> Tensor:
    return loss


def _eig_stand_in(matrix: Tensor, eigenvectors: bool = False):
    """``torch.eig`` as PyHessian calls it, for a symmetric matrix: eigenvalues as ``[n, 2]``
    (real, imaginary) and eigenvectors as columns."""
    values, vectors = torch.linalg.eigh(matrix)
    pairs = torch.stack((values, torch.zeros_like(values)), dim=1)
    return pairs, vectors


@contextlib.contextmanager
def _torch_eig_available() -> Iterator[None]:
    original = getattr(torch, "eig", None)
    torch.eig = _eig_stand_in
    try:
        yield
    finally:
        if original is None:
            del torch.eig
        else:
            torch.eig = original


class PyHessianBackend:
    """PyHessian's estimators on a module's loss over a fixed analysis set.

    Args:
        module: exposes ``loss_on_batch(batch, include_penalty) -> Tensor``.
        batches: the analysis set (on the module's device and in its dtype already).
        parameters: ``fnmatch`` patterns over parameter names; None for all trainable ones (the
            others are frozen for the duration of each call).
        include_penalty: differentiate the total loss rather than the task loss.
        seed: seed of the global torch RNG for each call (restored afterwards).

    Limitation: PyHessian draws its vectors in the default dtype and works in the parameters'
    own dtype; there is no separate analysis dtype, and one analysis batch keeps its graph while
    several batches recompute forward and backward for every product.

    Example::

        pyhessian = PyHessianBackend(model, batches)
        eigenvalues = pyhessian.top_eigenvalues(k=5)
    """

    def __init__(
        self,
        module: nn.Module,
        batches: Sequence[Batch],
        parameters: Sequence[str] | None = None,
        include_penalty: bool = False,
        seed: int = 0,
    ) -> None:
        from pyhessian import hessian  # imported here: only this backend needs it

        self._hessian_class = hessian
        self.module = module
        self.batches = list(batches)
        self.names = set(select_parameters(module, parameters))
        self.include_penalty = include_penalty
        self.seed = seed
        self.num_jets = sum(len(b["label"]) for b in self.batches)
        self.num_hvp = 0

    @contextlib.contextmanager
    def _session(self) -> Iterator:
        """A fresh PyHessian object inside :func:`analysis_mode`, selection frozen in place."""
        with analysis_mode(self.module), warnings.catch_warnings():
            # The reference cycle it warns about is broken: every .grad is put back on exit.
            warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle.*")
            for name, p in self.module.named_parameters():
                p.requires_grad_(name in self.names)
                p.grad = None
            torch.manual_seed(self.seed)
            adapted = _IndexedLoss(self.module, self.batches, self.include_penalty)
            data = [
                (torch.full((len(b["label"]),), i, dtype=torch.long), torch.zeros(1))
                for i, b in enumerate(self.batches)
            ]
            cuda = next(self.module.parameters()).is_cuda
            with self._counting_products():
                if len(data) == 1:
                    yield self._hessian_class(adapted, _pass_through, data=data[0], cuda=cuda)
                else:
                    yield self._hessian_class(adapted, _pass_through, dataloader=data, cuda=cuda)

    @contextlib.contextmanager
    def _counting_products(self) -> Iterator[None]:
        """Count PyHessian's Hessian-vector products in :attr:`num_hvp` (its two product
        functions are wrapped for the duration)."""
        engine_module = sys.modules[self._hessian_class.__module__]
        single = engine_module.hessian_vector_product
        several = engine_module.hessian.dataloader_hv_product

        def count_single(*args, **kwargs):
            self.num_hvp += 1
            return single(*args, **kwargs)

        def count_several(*args, **kwargs):
            self.num_hvp += 1
            return several(*args, **kwargs)

        engine_module.hessian_vector_product = count_single
        engine_module.hessian.dataloader_hv_product = count_several
        try:
            yield
        finally:
            engine_module.hessian_vector_product = single
            engine_module.hessian.dataloader_hv_product = several

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for n, p in self.module.named_parameters() if n in self.names)

    def hvp(self, vector: Tensor) -> Tensor:
        """``H v`` for a flat ``[n]`` vector (parameters in ``named_parameters`` order)."""
        with self._session() as engine:
            pieces, offset = [], 0
            for p in engine.params:
                pieces.append(vector[offset : offset + p.numel()].view_as(p).to(p))
                offset += p.numel()
            if engine.full_dataset:
                _, products = engine.dataloader_hv_product(pieces)
            else:
                products = torch.autograd.grad(engine.gradsH, engine.params, pieces)
            return torch.cat([t.detach().reshape(-1) for t in products])

    def top_eigenvalues(
        self, k: int = 5, max_iter: int = 100, tol: float = 1e-3, return_vectors: bool = False
    ):
        """PyHessian's ``eigenvalues(top_n=k)``: power iteration with deflation, each stopped
        when the eigenvalue changes by less than ``tol`` relative. It converges to the largest
        magnitudes, so a negative eigenvalue can appear among them.

        Returns:
            ``[k]`` eigenvalues, and with ``return_vectors`` also the flat ``[k, n]`` vectors.
        """
        with self._session() as engine:
            values, vectors = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
        values = np.asarray(values)
        if not return_vectors:
            return values
        flat = torch.stack([torch.cat([t.detach().reshape(-1) for t in v]) for v in vectors])
        return values, flat

    def trace(self, max_iter: int = 100, tol: float = 1e-3) -> TraceEstimate:
        """PyHessian's Hutchinson ``trace()``, with the standard error of its samples.

        PyHessian stops when ``|mean − previous| / (previous + 10⁻⁶) < tol``, which holds at once
        for a negative trace; ``tol=float("-inf")`` always runs ``max_iter`` probes."""
        start = time.perf_counter()
        with self._session() as engine:
            samples = np.asarray(engine.trace(maxIter=max_iter, tol=tol), dtype=float)
        error = float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else 0.0
        return TraceEstimate(
            float(samples.mean()), error, len(samples), time.perf_counter() - start, samples
        )

    def density(self, num_steps: int = 40, num_probes: int = 1) -> SpectralQuadrature:
        """PyHessian's stochastic Lanczos quadrature ``density(iter, n_v)`` as nodes and weights."""
        start = time.perf_counter()
        with self._session() as engine, _torch_eig_available():
            nodes, weights = engine.density(iter=num_steps, n_v=num_probes)
        return SpectralQuadrature(
            np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float),
            self.num_parameters, num_probes * num_steps, time.perf_counter() - start,
        )  # fmt: skip


__all__ = ["PyHessianBackend"]
