"""Curvature of the training objective: Hessian–vector products and spectral estimators.

The object of study is the Hessian with respect to the parameters θ (all, or a named subset)

    H = ∇²_θ L(θ),   L(θ) = Σ_b n_b L_b(θ) / Σ_b n_b,

of the loss over a fixed analysis set split into batches b of ``n_b`` jets, where ``L_b`` is the
module's ``loss_on_batch(batch)`` (the task loss by default, or the total loss with the weighted
soft-symmetry penalty). ``H`` is never formed: :class:`HessianOperator` applies it to vectors,
and the estimators below need only those products:

- :func:`top_eigenvalues`: extreme eigenpairs by implicitly restarted Lanczos (ARPACK through
  :func:`scipy.sparse.linalg.eigsh`), with the relative residual ``‖Hu − λu‖ / |λ|`` of each;
- :func:`hutchinson_trace` and :func:`hutchpp_trace`: ``tr H`` with a standard error;
- :func:`spectral_density`: stochastic Lanczos quadrature of the spectral density
  ``ρ(λ) = (1/n) Σ_i δ(λ − λ_i)``, from which :class:`SpectralQuadrature` derives a
  Gaussian-broadened density, moments, the effective dimension and the near-zero mode count;
- :func:`symmetry_curvature`: Rayleigh quotients ``dᵀHd / dᵀd`` along the gradient of the soft
  symmetry penalty, against random directions.

Vectors are flat ``[n]`` tensors over the selected parameters in ``named_parameters`` order;
blocks of vectors are ``[k, n]``.

The module is evaluated in whatever mode it is in; :func:`analysis_mode` puts it in eval mode and
puts everything back afterwards (mode, ``requires_grad``, ``.grad`` and RNG states), which the
callbacks rely on.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]

OBJECTIVES = ("task", "total", "symmetry")
BACKENDS = ("autograd", "func", "linearized")

_FLOAT_BATCH_KEYS = ("p4", "weight")


# --------------------------------------------------------------------------------------------
# State that analysis must leave untouched
# --------------------------------------------------------------------------------------------


@dataclass
class RNGState:
    """The states of every random number generator a training run draws from."""

    torch_cpu: Tensor
    torch_cuda: list[Tensor] | None
    numpy: tuple
    python: tuple

    @classmethod
    def capture(cls) -> RNGState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


@contextlib.contextmanager
def analysis_mode(module: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Evaluate ``module`` for analysis and leave no trace.

    Inside the block the module is in eval mode (when ``eval_mode``) and attention runs through
    the math kernel of ``scaled_dot_product_attention``, the one CPU kernel with double backward.
    On exit the train/eval flag of every submodule, every parameter's ``requires_grad`` and
    ``.grad`` (the same tensor object), and the torch (CPU and CUDA), numpy and Python RNG states
    are what they were on entry, whatever happened inside.
    """
    modes = [(m, m.training) for m in module.modules()]
    parameters = list(module.parameters())
    requires_grad = [p.requires_grad for p in parameters]
    grads = [p.grad for p in parameters]
    rng = RNGState.capture()
    try:
        if eval_mode:
            module.eval()
        with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
            yield module
    finally:
        for submodule, training in modes:
            submodule.training = training
        for p, flag, grad in zip(parameters, requires_grad, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        rng.restore()


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fix the global torch RNG for one evaluation (so that a penalty sampling group elements
    sees the same elements in every product) and put the previous state back afterwards."""
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    torch.default_generator.manual_seed(seed)
    if cuda_state is not None:
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


# --------------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------------


class _Objective(nn.Module):
    """``forward(batch)`` is one batch's scalar objective of the wrapped module, so that
    :func:`torch.func.functional_call` can evaluate it at substituted parameters."""

    def __init__(self, module: nn.Module, objective: str) -> None:
        super().__init__()
        self.module = module
        self.objective = objective

    def forward(self, batch: Batch) -> Tensor:
        if self.objective == "symmetry":
            return self.module.symmetry_loss_on_batch(batch)
        return self.module.loss_on_batch(batch, include_penalty=self.objective == "total")


def select_parameters(module: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """Names of the trainable parameters matching any of the ``fnmatch`` ``patterns`` (all
    trainable parameters when None), in ``named_parameters`` order.

    Raises:
        ValueError: a pattern matches no trainable parameter.
    """
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    if patterns is None:
        return names
    selected = []
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise ValueError(
                f"parameter pattern {pattern!r} matches no trainable parameter; "
                f"use names or globs over: {', '.join(names)}"
            )
        selected.extend(matched)
    return [name for name in names if name in set(selected)]


class HessianOperator:
    """The Hessian ``H = ∇²_θ L`` of a module's loss over a fixed analysis set, as a linear map.

    ``L = Σ_b n_b L_b / Σ_b n_b`` with ``L_b`` the module's objective on batch ``b`` of ``n_b``
    jets (``len(batch["label"])``), evaluated in the module's current mode (see
    :func:`analysis_mode`) at the module's current parameters, in ``dtype``. The module is never
    modified: parameters enter as detached copies through :func:`torch.func.functional_call`, so
    no ``.grad`` is written. Every evaluation runs with the torch RNG seeded by the batch index,
    so a stochastic penalty defines one fixed matrix.

    Three ways of applying ``H`` give the same numbers:

    - ``"autograd"``: the gradient graph of every batch is built once with ``create_graph`` and
      kept; each product is one backward pass through it (double backward), which recomputes the
      second derivatives of the activations every time. Also works for objectives that call
      :func:`torch.autograd.grad` themselves (an input-gradient symmetry penalty).
    - ``"linearized"``: forward-over-reverse ``jvp(grad(L_b))`` traced once per batch by
      :func:`torch.func.linearize`, which evaluates every intermediate that does not depend on
      the vector once and keeps it; a product then runs only the part linear in the vector. On
      a 67k-parameter PFN on one CPU thread a product costs 0.22 s per 1024 jets against 0.31 s
      for ``"autograd"``, after a tracing of about 2.7 s (0.05 s against 0.075 s after 1.3 s per
      256 jets), so it pays from about 25 (52) products per operator on.
    - ``"func"``: forward-over-reverse recomputing the batch every product. Memory of one batch.

    Under ``torch.distributed`` (``distributed=True``, or ``None`` = whenever a process group
    with more than one rank is initialised) every rank takes the batches ``rank::world_size`` of
    the same analysis set and the products are summed over ranks with ``all_reduce``; every rank
    then holds the same product, so the estimators take the same path on every rank and return
    the same numbers as one process would. Every rank must make the same calls.

    Args:
        module: exposes ``loss_on_batch(batch, include_penalty) -> Tensor`` and, for the
            ``"symmetry"`` objective and :meth:`gradient`, ``symmetry_loss_on_batch(batch)``.
        batches: the analysis set, dicts with at least ``p4``, ``mask``, ``label``; moved to the
            module's device, ``p4``/``weight`` cast to ``dtype``.
        parameters: ``fnmatch`` patterns over parameter names; None for all trainable ones.
        objective: ``"task"`` (task loss), ``"total"`` (with the weighted penalty) or
            ``"symmetry"`` (the unweighted penalty alone).
        dtype: float32 or float64 (parameters, floating buffers and inputs are cast).
        backend: ``"autograd"``, ``"linearized"`` or ``"func"``.
        seed: base seed of the per-batch RNG.
        distributed: shard over ranks and all-reduce; None decides from the process group.

    Example::

        with analysis_mode(model):
            hessian = HessianOperator(model, batches, dtype=torch.float64)
            top = top_eigenvalues(hessian, k=5)
    """

    def __init__(
        self,
        module: nn.Module,
        batches: Sequence[Batch],
        parameters: Sequence[str] | None = None,
        objective: str = "task",
        dtype: torch.dtype = torch.float32,
        backend: str = "autograd",
        seed: int = 0,
        distributed: bool | None = None,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r} is not available; use one of: {OBJECTIVES}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not available; use one of: {BACKENDS}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype {dtype} is not available; use torch.float32 or torch.float64")
        if not batches:
            raise ValueError("the analysis set is empty; pass at least one batch")

        self.module = module
        self.objective = objective
        self.dtype = dtype
        self.backend = backend
        self.seed = seed
        self.names = select_parameters(module, parameters)
        named = dict(module.named_parameters())
        self.shapes = [named[name].shape for name in self.names]
        self.numels = [named[name].numel() for name in self.names]
        self.num_parameters = sum(self.numels)
        self.device = next(iter(named.values())).device
        self.num_hvp = 0

        self.world_size, self.rank = 1, 0
        if distributed is None:
            distributed = (
                dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            )
        self.distributed = bool(distributed)
        if self.distributed:
            self.world_size, self.rank = dist.get_world_size(), dist.get_rank()

        indexed = list(enumerate(batches))[self.rank :: self.world_size]
        self._batches = [(index, self._prepare(batch)) for index, batch in indexed]
        self.num_jets = int(self._all_reduce(torch.tensor(
            [float(sum(len(b["label"]) for _, b in self._batches))], dtype=torch.float64,
            device=self.device,
        )).item())  # fmt: skip
        if self.num_jets == 0:
            raise ValueError("the analysis set holds no jets")

        self._constants = self._constant_tensors(module)
        self._point = [named[name].detach().to(dtype) for name in self.names]
        self._graphs: list[tuple[int, tuple[Tensor, ...], list[Tensor]]] | None = None
        self._linearized: list[tuple[int, Callable]] | None = None

    # ---------------------------------------------------------------- set-up

    def _prepare(self, batch: Batch) -> Batch:
        """Move to the device, cast, and drop trailing slots padded in every jet (exact, since
        padded slots never change the output)."""
        prepared = {}
        if "mask" in batch and batch["mask"].dim() == 2 and batch["mask"].shape[1] > 0:
            occupied = batch["mask"].any(dim=0).nonzero()
            length = int(occupied.max()) + 1 if len(occupied) else 1
            batch = {
                key: value[:, :length] if key in ("p4", "mask") else value
                for key, value in batch.items()
            }
        for key, value in batch.items():
            if not isinstance(value, Tensor):
                continue
            value = value.to(self.device)
            if key in _FLOAT_BATCH_KEYS:
                value = value.to(self.dtype)
            prepared[key] = value
        return prepared

    def _constant_tensors(self, module: nn.Module) -> dict[str, Tensor]:
        """Parameters outside the selection (detached) and floating buffers, in ``dtype``."""
        selected = set(self.names)
        constants = {
            f"module.{name}": p.detach().to(self.dtype)
            for name, p in module.named_parameters()
            if name not in selected
        }
        if self.dtype != torch.float32:
            for name, buffer in module.named_buffers():
                if buffer.is_floating_point():
                    constants[f"module.{name}"] = buffer.to(self.dtype)
        return constants

    def _batch_loss(self, params: Sequence[Tensor], index: int, batch: Batch, objective: str):
        tensors = dict(self._constants)
        tensors.update({f"module.{n}": p for n, p in zip(self.names, params, strict=True)})
        with _seeded(self.seed + index, self.device):
            loss = torch.func.functional_call(
                _Objective(self.module, objective), tensors, (batch,), strict=False
            )
        return loss * (len(batch["label"]) / self.num_jets)

    def _all_reduce(self, tensor: Tensor) -> Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    # ---------------------------------------------------------------- vectors

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """``[n]`` from per-parameter tensors (a leading block dimension is kept: ``[k, n]``)."""
        lead = tensors[0].shape[: tensors[0].dim() - len(self.shapes[0])]
        return torch.cat([t.reshape(*lead, -1) for t in tensors], dim=-1)

    def unflatten(self, vector: Tensor) -> list[Tensor]:
        """Per-parameter tensors from ``[n]`` (or ``[k, n]``)."""
        lead = vector.shape[:-1]
        chunks = vector.split(self.numels, dim=-1)
        return [c.reshape(*lead, *s) for c, s in zip(chunks, self.shapes, strict=True)]

    def parameter_vector(self) -> Tensor:
        """θ, flat ``[n]``."""
        return self.flatten(self._point)

    # ---------------------------------------------------------------- products

    def _leaf_point(self) -> list[Tensor]:
        return [p.clone().requires_grad_(True) for p in self._point]

    def _build_graphs(self) -> None:
        self._graphs = []
        for index, batch in self._batches:
            params = self._leaf_point()
            loss = self._batch_loss(params, index, batch, self.objective)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            self._graphs.append((index, grads, params))

    def _hvp_autograd(self, block: Tensor) -> Tensor:
        if self._graphs is None:
            self._build_graphs()
        # One backward per vector: a batched (vmapped) backward measured slower on CPU.
        result = block.new_zeros(block.shape)
        for _, grads, params in self._graphs:
            for row in range(block.shape[0]):
                pieces = self.unflatten(block[row])
                products = torch.autograd.grad(grads, params, pieces, retain_graph=True)
                result[row] += self.flatten(products)
        return result

    def _build_linearized(self) -> None:
        linearized = []
        point = tuple(self._point)
        for index, batch in self._batches:

            def gradient(params, index=index, batch=batch):
                return torch.func.grad(lambda p: self._batch_loss(p, index, batch, self.objective))(
                    params
                )

            with warnings.catch_warnings():
                # torch's constant folding warns about its own internal attributes.
                warnings.filterwarnings("ignore", message="Attempted to insert a get_attr")
                _, product = torch.func.linearize(gradient, point)
            linearized.append((index, product))
        self._linearized = linearized

    def _hvp_linearized(self, block: Tensor) -> Tensor:
        if self._linearized is None:
            self._build_linearized()
        result = block.new_zeros(block.shape)
        for index, product in self._linearized:
            for row in range(block.shape[0]):
                # Random operations the trace could not fold are drawn again at every call.
                with _seeded(self.seed + index, self.device):
                    pieces = product(tuple(self.unflatten(block[row])))
                result[row] += self.flatten(list(pieces))
        return result

    def _hvp_func(self, block: Tensor) -> Tensor:
        result = block.new_zeros(block.shape)
        point = tuple(self._point)
        for index, batch in self._batches:

            def gradient(params, index=index, batch=batch):
                return torch.func.grad(lambda p: self._batch_loss(p, index, batch, self.objective))(
                    params
                )

            for row in range(block.shape[0]):
                tangent = tuple(self.unflatten(block[row]))
                _, product = torch.func.jvp(gradient, (point,), (tangent,))
                result[row] += self.flatten(list(product))
        return result

    def matmat(self, block: Tensor) -> Tensor:
        """``H Vᵀ`` row by row: ``[k, n] -> [k, n]`` (k Hessian-vector products)."""
        block = block.to(device=self.device, dtype=self.dtype)
        if block.dim() != 2 or block.shape[1] != self.num_parameters:
            raise ValueError(
                f"expected a block [k, {self.num_parameters}]; got {list(block.shape)}"
            )
        with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
            if self.backend == "linearized":
                result = self._hvp_linearized(block)
            elif self.backend == "autograd":
                result = self._hvp_autograd(block)
            else:
                result = self._hvp_func(block)
        self.num_hvp += block.shape[0]
        return self._all_reduce(result.detach())

    def matvec(self, vector: Tensor) -> Tensor:
        """``H v``: ``[n] -> [n]``."""
        return self.matmat(vector.reshape(1, -1))[0]

    def gradient(self, objective: str | None = None) -> Tensor:
        """``∇_θ`` of the analysis-set objective (``objective`` defaults to the operator's), flat
        ``[n]``, summed over ranks like the products."""
        objective = objective or self.objective
        total = torch.zeros(self.num_parameters, dtype=self.dtype, device=self.device)
        with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
            for index, batch in self._batches:
                params = self._leaf_point()
                loss = self._batch_loss(params, index, batch, objective)
                if loss.requires_grad:
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    total += self.flatten(
                        [
                            torch.zeros_like(p) if g is None else g
                            for g, p in zip(grads, params, strict=True)
                        ]
                    )
        return self._all_reduce(total)

    def as_linear_operator(self) -> LinearOperator:
        """A float64 :class:`scipy.sparse.linalg.LinearOperator` applying ``H``."""

        def matvec(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self.matvec(v).to(device="cpu", dtype=torch.float64).numpy()

        def matmat(x: np.ndarray) -> np.ndarray:
            block = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float64).T))
            return self.matmat(block).to(device="cpu", dtype=torch.float64).numpy().T

        n = self.num_parameters
        return LinearOperator((n, n), matvec=matvec, matmat=matmat, dtype=np.float64)

    def release(self) -> None:
        """Drop the kept gradient graphs and traces (they are rebuilt on the next product)."""
        self._graphs = None
        self._linearized = None

    def dense(self) -> Tensor:
        """The full ``[n, n]`` matrix, by ``n`` products; for tests and small problems only."""
        return self.matmat(torch.eye(self.num_parameters, dtype=self.dtype, device=self.device))


# --------------------------------------------------------------------------------------------
# Random vectors shared by every rank
# --------------------------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rademacher(num: int, n: int, generator: torch.Generator, dtype=torch.float64) -> Tensor:
    """``[num, n]`` independent ±1 entries (drawn on CPU, so every device and rank agrees)."""
    return torch.randint(0, 2, (num, n), generator=generator).to(dtype).mul_(2).sub_(1)


def _to_operator(operator: HessianOperator, block: Tensor) -> Tensor:
    return block.to(device=operator.device, dtype=operator.dtype)


def _chunked_matmat(operator: HessianOperator, block: Tensor, chunk: int) -> Tensor:
    return torch.cat([operator.matmat(part) for part in block.split(chunk)], dim=0)


# --------------------------------------------------------------------------------------------
# Extreme eigenvalues
# --------------------------------------------------------------------------------------------


@dataclass
class EigenResult:
    """Eigenpairs ``H u_i = λ_i u_i`` from the top (``which="largest"``, λ descending) or the
    bottom (``"smallest"``, λ ascending) of the spectrum.

    Attributes:
        eigenvalues: ``[k]``.
        eigenvectors: ``[k, n]`` unit vectors, on the operator's device and dtype.
        residuals: ``[k]`` relative residuals ``‖H u_i − λ_i u_i‖ / |λ_i|``, from explicit
            products, or from the Lanczos relation where the caller asked for no check.
        num_hvp: Hessian-vector products spent, residual check included.
        seconds: wall time.
        converged: whether every pair met the tolerance.
    """

    eigenvalues: np.ndarray
    eigenvectors: Tensor
    residuals: np.ndarray
    num_hvp: int
    seconds: float
    converged: bool = True


def top_eigenvalues(
    operator: HessianOperator,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-4,
    max_restarts: int | None = None,
    num_lanczos_vectors: int | None = None,
    seed: int = 0,
) -> EigenResult:
    """The ``k`` largest algebraic (or smallest algebraic) eigenvalues of ``H`` by implicitly
    restarted Lanczos (:func:`scipy.sparse.linalg.eigsh` over ``H`` as a ``LinearOperator``).

    ARPACK stops when every Ritz pair satisfies ``‖H u − λ u‖ ≤ tol · |λ|``; the residuals are
    then recomputed with ``k`` more products and returned. The start vector is drawn from a
    generator seeded with ``seed``, identical on every rank.

    Args:
        operator: the Hessian.
        k: number of eigenpairs, ``1 ≤ k < n``.
        which: ``"largest"`` or ``"smallest"`` (the most negative end for an indefinite ``H``).
        tol: relative residual tolerance.
        max_restarts: ARPACK's ``maxiter`` (None: its default ``10 n``).
        num_lanczos_vectors: ARPACK's ``ncv`` (None: ``max(2k + 1, 20)`` capped at ``n``).
        seed: seed of the start vector.

    Limitation: the smallest end of a network Hessian sits next to a dense bulk near zero, so it
    converges slowly; cap ``max_restarts`` and read the residuals, or take the best Ritz values
    ARPACK reached when it does not converge (``converged`` is then False).
    """
    modes = {"largest": "LA", "smallest": "SA"}
    if which not in modes:
        raise ValueError(f"which={which!r} is not available; use one of: {', '.join(modes)}")
    n = operator.num_parameters
    if not 1 <= k < n:
        raise ValueError(f"k={k} must satisfy 1 <= k < n = {n}")
    ncv = min(n, num_lanczos_vectors or max(2 * k + 1, 20))

    start = time.perf_counter()
    hvp_before = operator.num_hvp
    v0 = torch.randn(n, generator=_generator(seed), dtype=torch.float64).numpy()
    converged = True
    try:
        values, vectors = eigsh(
            operator.as_linear_operator(), k=k, which=modes[which], tol=tol, v0=v0, ncv=ncv,
            maxiter=max_restarts, return_eigenvectors=True,
        )  # fmt: skip
    except ArpackNoConvergence as error:
        converged = False
        values, vectors = error.eigenvalues, error.eigenvectors
        rank_zero_log(logging.WARNING, f"eigsh({which}) did not converge: {len(values)}/{k} pairs")

    order = np.argsort(-values if which == "largest" else values)
    values, vectors = values[order], vectors[:, order]
    eigenvectors = torch.from_numpy(np.ascontiguousarray(vectors.T))
    products = operator.matmat(_to_operator(operator, eigenvectors)).to(torch.float64).cpu()
    residual = products - torch.from_numpy(values)[:, None] * eigenvectors
    residuals = residual.norm(dim=1).numpy() / np.maximum(np.abs(values), 1e-300)
    seconds = time.perf_counter() - start
    log.info(
        "eigsh(%s, k=%d): %s in %d HVPs, %.1f s, max residual %.1e",
        which, k, np.array2string(values, precision=4), operator.num_hvp - hvp_before, seconds,
        residuals.max() if len(residuals) else float("nan"),
    )  # fmt: skip
    return EigenResult(
        values, _to_operator(operator, eigenvectors), residuals, operator.num_hvp - hvp_before,
        seconds, converged,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Trace
# --------------------------------------------------------------------------------------------


@dataclass
class TraceEstimate:
    """An estimate of ``tr H``.

    Attributes:
        trace: the estimate.
        standard_error: its Monte-Carlo standard error (sample standard deviation of the random
            part over the square root of its sample count; 0 when the estimate is exact).
        num_hvp: Hessian-vector products spent.
        seconds: wall time.
        samples: the random quadratic forms that were averaged.
    """

    trace: float
    standard_error: float
    num_hvp: int
    seconds: float
    samples: np.ndarray = field(repr=False)


def _standard_error(samples: np.ndarray) -> float:
    if len(samples) < 2:
        return float("nan")
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples)))


def hutchinson_trace(
    operator: HessianOperator, num_probes: int = 60, seed: int = 0, chunk: int = 16
) -> TraceEstimate:
    """Hutchinson's estimator ``tr H ≈ (1/m) Σ_j z_jᵀ H z_j`` with Rademacher probes ``z_j``.

    Args:
        operator: the Hessian.
        num_probes: ``m``, one product each.
        seed: seed of the probes (identical on every rank).
        chunk: probes per block product.
    """
    start, hvp_before = time.perf_counter(), operator.num_hvp
    probes = rademacher(num_probes, operator.num_parameters, _generator(seed))
    products = _chunked_matmat(operator, _to_operator(operator, probes), chunk)
    samples = (products.to(torch.float64).cpu() * probes).sum(dim=1).numpy()
    return TraceEstimate(
        float(samples.mean()), _standard_error(samples), operator.num_hvp - hvp_before,
        time.perf_counter() - start, samples,
    )  # fmt: skip


def hutchpp_trace(
    operator: HessianOperator, num_matvecs: int = 60, seed: int = 0, chunk: int = 16
) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021):
    ``tr H = tr(QᵀHQ) + tr((I − QQᵀ) H (I − QQᵀ))`` with ``Q`` an orthonormal basis of ``H S``
    for ``s`` Rademacher columns ``S``; the first term is exact, the second is Hutchinson's
    estimate with ``g`` probes projected off ``Q``.

    ``num_matvecs`` is split as ``s = g = ⌊m/3⌋`` (``s`` capped at ``n``; ``m − 2s`` go to
    ``g``). The standard error is that of the projected Hutchinson term, the only random one;
    once ``s = n`` the estimate is exact.

    Args:
        operator: the Hessian.
        num_matvecs: ``m`` ≥ 3 products in total.
        seed: seed of the probes (identical on every rank).
        chunk: vectors per block product.
    """
    if num_matvecs < 3:
        raise ValueError(f"Hutch++ needs at least 3 products; got num_matvecs={num_matvecs}")
    start, hvp_before = time.perf_counter(), operator.num_hvp
    n = operator.num_parameters
    generator = _generator(seed)
    sketch_size = min(num_matvecs // 3, n)
    num_probes = num_matvecs - 2 * sketch_size

    sketch = rademacher(sketch_size, n, generator)
    range_basis = _chunked_matmat(operator, _to_operator(operator, sketch), chunk)
    basis = torch.linalg.qr(range_basis.to(torch.float64).cpu().T).Q.T  # [s, n] orthonormal
    low_rank = float(
        (_chunked_matmat(operator, _to_operator(operator, basis), chunk).to(torch.float64).cpu()
         * basis).sum()
    )  # fmt: skip

    samples = np.zeros(0)
    if num_probes > 0 and sketch_size < n:
        probes = rademacher(num_probes, n, generator)
        probes = probes - (probes @ basis.T) @ basis
        products = _chunked_matmat(operator, _to_operator(operator, probes), chunk)
        samples = (products.to(torch.float64).cpu() * probes).sum(dim=1).numpy()
    residual = float(samples.mean()) if len(samples) else 0.0
    error = _standard_error(samples) if sketch_size < n else 0.0
    return TraceEstimate(
        low_rank + residual, error, operator.num_hvp - hvp_before, time.perf_counter() - start,
        samples,
    )  # fmt: skip


def krylov_hutchpp_trace(
    operator: HessianOperator,
    num_matvecs: int = 60,
    krylov_steps: int | None = None,
    seed: int = 0,
    chunk: int = 16,
) -> TraceEstimate:
    """Hutch++ with a Krylov basis: ``tr H = tr(QᵀHQ) + tr((I − QQᵀ) H (I − QQᵀ))`` with ``Q``
    the orthonormal basis of ``m_K`` Lanczos steps from a Rademacher start (after Chen & Hallman,
    "Krylov-aware stochastic trace estimation", 2023).

    ``tr(QᵀHQ) = Σ α_i`` comes with the Lanczos recurrence, so the exact part costs ``m_K``
    products rather than Hutch++'s ``2s``, and a Krylov space captures the dominant eigenvectors
    of a network Hessian far better than one sketch ``H S``; the remaining ``m − m_K`` products
    go to Rademacher probes projected off ``Q`` (:func:`projected_hutchinson_trace`).

    Args:
        operator: the Hessian.
        num_matvecs: ``m`` products in total.
        krylov_steps: ``m_K`` (None: ``m // 2``).
        seed: seed of the start vector and probes (identical on every rank).
        chunk: probes per block product.
    """
    start, hvp_before = time.perf_counter(), operator.num_hvp
    n = operator.num_parameters
    generator = _generator(seed)
    steps = min(n, krylov_steps if krylov_steps is not None else num_matvecs // 2)
    run = lanczos(operator, rademacher(1, n, generator)[0], steps, keep_basis=True)
    estimate = projected_hutchinson_trace(
        operator, run, num_matvecs - len(run.alphas), generator=generator, chunk=chunk
    )
    estimate.num_hvp = operator.num_hvp - hvp_before
    estimate.seconds = time.perf_counter() - start
    return estimate


def projected_hutchinson_trace(
    operator: HessianOperator,
    run: LanczosRun,
    num_probes: int,
    seed: int = 0,
    chunk: int = 16,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """``tr H = Σ_i α_i + tr((I − QQᵀ) H (I − QQᵀ))`` for the orthonormal basis ``Q [m, n]`` of a
    finished Lanczos run (``tr QᵀHQ = tr T = Σ α_i``), the second term by Hutchinson's estimator
    with ``num_probes`` Rademacher probes ``z`` projected off ``Q``: the mean of
    ``zᵀ(I − QQᵀ) H (I − QQᵀ)z``.

    For any ``Q`` drawn independently of the probes the estimate is unbiased; its standard error
    is the sample standard deviation of the projected quadratic forms over ``√num_probes``. Only
    the probes cost products, so the run may be one already spent on eigenvalues. A run that
    exhausted its Krylov space (``last_beta == 0``) or spans all ``n`` dimensions is read as
    exact: no probes, standard error 0.

    Args:
        operator: the Hessian.
        run: a Lanczos run with its basis kept.
        num_probes: projected probes, one product each.
        seed: seed of the probes (identical on every rank) when no ``generator`` is given.
        chunk: probes per block product.
        generator: draw the probes from this generator instead.

    Limitation: an exhausted Krylov space holds one direction per distinct eigenvalue, so reading
    it as exact misses ``Σ (multiplicity − 1) λ`` over repeated non-zero eigenvalues.
    """
    if run.basis is None:
        raise ValueError("the Lanczos run kept no basis; run it with keep_basis=True")
    start, hvp_before = time.perf_counter(), operator.num_hvp
    n = operator.num_parameters
    generator = generator if generator is not None else _generator(seed)
    exact = float(run.alphas.sum())
    complete = run.last_beta == 0.0 or len(run.alphas) == n
    samples = np.zeros(0)
    if num_probes > 0 and not complete:
        basis = run.basis.cpu()
        probes = rademacher(num_probes, n, generator)
        probes = probes - (probes @ basis.T) @ basis
        products = _chunked_matmat(operator, _to_operator(operator, probes), chunk)
        samples = (products.to(torch.float64).cpu() * probes).sum(dim=1).numpy()
    residual = float(samples.mean()) if len(samples) else 0.0
    error = 0.0 if complete else _standard_error(samples)
    return TraceEstimate(
        exact + residual, error, operator.num_hvp - hvp_before, time.perf_counter() - start,
        samples,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Spectral density
# --------------------------------------------------------------------------------------------


@dataclass
class SpectralQuadrature:
    """Stochastic Lanczos quadrature of the spectral density ``ρ(λ) = (1/n) Σ_i δ(λ − λ_i)``.

    For a unit probe ``v`` and ``m`` Lanczos steps, the Ritz values ``θ_j`` and the squared first
    components ``τ_j²`` of the tridiagonal matrix's eigenvectors form a Gauss quadrature with
    ``Σ_j τ_j² f(θ_j) = vᵀ f(H) v`` exactly for polynomials ``f`` of degree ``< 2m``. Averaged
    over probes with ``E[v vᵀ] = I / n`` this estimates ``∫ f ρ = tr f(H) / n``.

    Attributes:
        nodes: ``[p, m]`` Ritz values per probe.
        weights: ``[p, m]`` quadrature weights per probe (each row sums to 1; rows of a Lanczos
            run that ended early are padded with zero weight).
        num_parameters: ``n``.
        num_hvp: products spent.
        seconds: wall time.
    """

    nodes: np.ndarray
    weights: np.ndarray
    num_parameters: int
    num_hvp: int = 0
    seconds: float = 0.0

    def expectation(self, function: Callable[[np.ndarray], np.ndarray]) -> float:
        """``∫ f(λ) ρ(λ) dλ`` by the quadrature (``f`` vectorised)."""
        return float((self.weights * function(self.nodes)).sum() / self.nodes.shape[0])

    def moment(self, order: int) -> float:
        """``∫ λ^order ρ(λ) dλ``, estimating ``tr(H^order) / n``."""
        return self.expectation(lambda x: x**order)

    @property
    def support(self) -> tuple[float, float]:
        """Smallest and largest Ritz value with non-zero weight."""
        nodes = self.nodes[self.weights > 0]
        return float(nodes.min()), float(nodes.max())

    def default_broadening(self, fraction: float = 0.01) -> float:
        """A Gaussian width ``fraction · (θ_max − θ_min)``."""
        low, high = self.support
        return fraction * max(high - low, 1e-12)

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """The Gaussian-broadened density ``ρ_σ(λ) = (1/p) Σ τ_j² N(λ; θ_j, σ²)`` on ``grid``;
        it integrates to one and its mean is the quadrature mean (variance larger by ``σ²``)."""
        z = (np.asarray(grid)[:, None, None] - self.nodes[None]) / sigma
        kernel = np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
        return (kernel * self.weights[None]).sum(axis=(1, 2)) / self.nodes.shape[0]

    def mass_in(self, low: float, high: float, sigma: float = 0.0) -> float:
        """``∫_low^high ρ_σ`` (the plain quadrature mass of nodes in ``[low, high)`` at σ = 0)."""
        if sigma <= 0:
            inside = (self.nodes >= low) & (self.nodes < high)
            return float((self.weights * inside).sum() / self.nodes.shape[0])
        from scipy.special import ndtr

        cdf = ndtr((high - self.nodes) / sigma) - ndtr((low - self.nodes) / sigma)
        return float((self.weights * cdf).sum() / self.nodes.shape[0])

    def effective_dimension(self, z: float) -> float:
        """``N_eff(z) = Σ_i λ_i⁺ / (λ_i⁺ + z)`` with ``λ⁺ = max(λ, 0)``, i.e. ``n ∫ f ρ``."""
        return self.num_parameters * self.expectation(
            lambda x: np.clip(x, 0, None) / (np.clip(x, 0, None) + z)
        )

    def near_zero_count(self, epsilon: float, lambda_max: float, sigma: float = 0.0) -> float:
        """The number of eigenvalues with ``|λ| < ε λ_max``: ``n ∫_{|λ|<ελ_max} ρ_σ``, the
        approximate degeneracies (pseudo-Goldstone modes)."""
        width = epsilon * abs(lambda_max)
        return self.num_parameters * self.mass_in(-width, width, sigma)


@dataclass
class LanczosRun:
    """The outcome of :func:`lanczos`: ``H Q = Q T + β_m q_{m+1} e_mᵀ`` with ``Q [m, n]``
    orthonormal rows and ``T`` tridiagonal (diagonal ``alphas [m]``, off-diagonal ``betas
    [m − 1]``); ``last_beta`` is ``β_m`` (0 when the Krylov space is exhausted)."""

    alphas: np.ndarray
    betas: np.ndarray
    last_beta: float
    basis: Tensor | None

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values ``θ [m]`` (ascending), eigenvectors ``S [m, m]`` of ``T`` (columns) and
        residual norms ``β_m |S[m−1, j]| = ‖H Q s_j − θ_j Q s_j‖``."""
        if len(self.alphas) == 1:
            theta, vectors = self.alphas.copy(), np.ones((1, 1))
        else:
            theta, vectors = eigh_tridiagonal(self.alphas, self.betas)
        return theta, vectors, self.last_beta * np.abs(vectors[-1])


def lanczos(
    operator: HessianOperator,
    start: Tensor,
    num_steps: int,
    keep_basis: bool = False,
    should_stop: Callable[[LanczosRun], bool] | None = None,
    check_every: int = 1,
) -> LanczosRun:
    """Up to ``num_steps`` Lanczos steps with full reorthogonalisation from ``start`` ``[n]``.

    Stops early when the Krylov space is exhausted (``H`` restricted to it is then exact) or when
    ``should_stop`` (called every ``check_every`` steps with the run so far) says so. The basis
    is kept in float64 on the operator's device, ``num_steps × n`` values.
    """
    device = operator.device
    num_steps = min(num_steps, operator.num_parameters)
    basis = torch.zeros(num_steps, operator.num_parameters, dtype=torch.float64, device=device)
    v = start.to(device=device, dtype=torch.float64)
    basis[0] = v / v.norm()
    alphas: list[float] = []
    betas: list[float] = []
    last_beta = 0.0
    for step in range(num_steps):
        w = operator.matvec(basis[step]).to(torch.float64)
        alphas.append(float(torch.dot(w, basis[step])))
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - basis[: step + 1].T @ (basis[: step + 1] @ w)
        last_beta = float(w.norm())
        exhausted = last_beta <= 1e-10 * max(abs(a) for a in alphas)
        if exhausted:
            last_beta = 0.0
        run = LanczosRun(np.array(alphas), np.array(betas), last_beta, basis[: step + 1])
        if exhausted or step + 1 == num_steps:
            break
        if should_stop is not None and (step + 1) % check_every == 0 and should_stop(run):
            break
        betas.append(last_beta)
        basis[step + 1] = w / last_beta
    if not keep_basis:
        run.basis = None
    return run


def _residual_scale(theta: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``max(|θ_j|, 10⁻⁶ max_i |θ_i|)``: relative residuals of eigenvalues that are zero to
    working precision are taken relative to the spectrum's scale instead."""
    return np.maximum(np.abs(theta[chosen]), 1e-6 * np.abs(theta).max())


@dataclass
class LanczosSpectrum:
    """One Lanczos run from a unit start vector ``q_1`` read three ways.

    - Extreme eigenpairs: the Ritz pairs ``(θ_j, Q s_j)`` of the tridiagonal ``T``.
    - One probe of stochastic Lanczos quadrature: nodes ``θ_j`` and weights ``(s_j)_1²``, the
      Gauss quadrature of ``q_1ᵀ f(H) q_1`` (exact for polynomials of degree ``< 2m``).
    - The exact part of Krylov-aware Hutch++: ``tr QᵀHQ = Σ α_i``.

    Attributes:
        largest: the ``k`` largest Ritz pairs (descending).
        smallest: the ``k_smallest`` smallest Ritz pairs (ascending), None if none were asked.
        run: the run, basis kept.
        converged: every requested pair met the tolerance (or the Krylov space was exhausted).
    """

    largest: EigenResult
    smallest: EigenResult | None
    run: LanczosRun
    converged: bool

    def quadrature(self) -> SpectralQuadrature:
        """The run as one probe of :class:`SpectralQuadrature` (no products spent)."""
        theta, vectors, _ = self.run.ritz()
        return SpectralQuadrature(
            theta[None].copy(), vectors[0][None] ** 2, self.run.basis.shape[1], 0, 0.0
        )


def lanczos_spectrum(
    operator: HessianOperator,
    k: int = 5,
    k_smallest: int = 0,
    tol: float = 1e-3,
    max_steps: int = 100,
    min_steps: int = 0,
    seed: int = 0,
    start: str = "rademacher",
    verify: bool = False,
) -> LanczosSpectrum:
    """The ``k`` largest and ``k_smallest`` smallest algebraic eigenpairs of ``H`` from one
    unrestarted Lanczos run with full reorthogonalisation, kept for density and trace too.

    The run stops after the first step ``m ≥ min_steps`` at which every requested Ritz pair has
    ``β_m |(s_j)_m| ≤ tol · max(|θ_j|, 10⁻⁶ max |θ_i|)`` (checked every step on the ``m × m``
    tridiagonal, no products), or after ``max_steps`` products (``converged`` is then False).
    ``β_m |(s_j)_m|`` is ``‖H u_j − θ_j u_j‖`` for ``u_j = Q s_j`` by the Lanczos relation
    ``H Q = Q T + β_m q_{m+1} e_mᵀ``, which full reorthogonalisation keeps to working
    precision; these are the reported relative residuals unless ``verify``, which recomputes
    them with ``k + k_smallest`` explicit products.

    Args:
        operator: the Hessian.
        k: number of largest eigenpairs (descending).
        k_smallest: number of smallest eigenpairs (ascending), 0 for none.
        tol: relative residual tolerance.
        max_steps: cap on Lanczos steps (and on the ``max_steps × n`` float64 basis).
        min_steps: steps to take even when the eigenpairs converged sooner (for the density).
        seed: seed of the start vector (identical on every rank).
        start: ``"rademacher"`` (±1 entries, so the run is a valid quadrature probe with
            ``E[q_1 q_1ᵀ] = I / n``) or ``"gaussian"``.
        verify: recompute the residuals with explicit products.

    Limitation: a single-vector Krylov method finds a multiple eigenvalue once (the k values
    returned are distinct eigenvalues), and one whose eigenspace is numerically orthogonal to the
    start vector not at all.
    """
    n = operator.num_parameters
    if not 1 <= k < n or not 0 <= k_smallest < n:
        raise ValueError(f"need 1 <= k < n and 0 <= k_smallest < n = {n}; got {k}, {k_smallest}")
    if start not in ("rademacher", "gaussian"):
        raise ValueError(f"start {start!r} is not available; use one of: rademacher, gaussian")
    start_time, hvp_before = time.perf_counter(), operator.num_hvp

    def wanted(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.arange(len(theta))
        return order[::-1][:k], order[:k_smallest]

    def converged(run: LanczosRun) -> bool:
        theta, _, residual = run.ritz()
        if len(theta) < k + k_smallest:
            return False
        top, bottom = wanted(theta)
        chosen = np.concatenate([top, bottom])
        return bool(np.all(residual[chosen] <= tol * _residual_scale(theta, chosen)))

    def should_stop(run: LanczosRun) -> bool:
        return len(run.alphas) >= min_steps and converged(run)

    generator = _generator(seed)
    if start == "rademacher":
        vector = rademacher(1, n, generator)[0]
    else:
        vector = torch.randn(n, generator=generator, dtype=torch.float64)
    run = lanczos(operator, vector, max_steps, keep_basis=True, should_stop=should_stop)
    done = converged(run) or run.last_beta == 0.0
    theta, vectors, residual = run.ritz()
    top, bottom = wanted(theta)
    rank_zero_log(logging.INFO if done else logging.WARNING, (
        f"Lanczos: {len(theta)} steps, largest {np.array2string(theta[top], precision=4)}, "
        f"smallest {np.array2string(theta[bottom], precision=4)}"
        + ("" if done else f" (not converged to {tol:g} within {max_steps} steps)")
    ))  # fmt: skip

    results = []
    for chosen in (top, bottom):
        if len(chosen) == 0:
            results.append(None)
            continue
        eigenvectors = torch.from_numpy(vectors[:, chosen].T.copy()).to(run.basis) @ run.basis
        relative = residual[chosen] / _residual_scale(theta, chosen)
        if verify:
            products = operator.matmat(_to_operator(operator, eigenvectors)).to(torch.float64)
            misfit = products - torch.from_numpy(theta[chosen]).to(products)[:, None] * eigenvectors
            relative = misfit.norm(dim=1).cpu().numpy() / _residual_scale(theta, chosen)
        results.append(EigenResult(
            theta[chosen].copy(), _to_operator(operator, eigenvectors), relative, 0, 0.0,
            bool(np.all(relative <= tol)) or run.last_beta == 0.0,
        ))  # fmt: skip
    for result in results:
        if result is not None:
            result.num_hvp = operator.num_hvp - hvp_before
            result.seconds = time.perf_counter() - start_time
    return LanczosSpectrum(results[0], results[1], run, done)


def extreme_eigenpairs(
    operator: HessianOperator,
    k: int = 5,
    k_smallest: int = 0,
    tol: float = 1e-3,
    max_steps: int = 100,
    seed: int = 0,
    verify: bool = True,
) -> tuple[EigenResult, EigenResult | None]:
    """The ``k`` largest and ``k_smallest`` smallest algebraic eigenpairs of ``H`` from one
    unrestarted Lanczos run with full reorthogonalisation from a Gaussian start
    (:func:`lanczos_spectrum`, which also keeps the run for density and trace).

    Relative residuals are ``‖H u − θ u‖ / max(|θ|, 10⁻⁶ max |θ_i|)``.

    Every Lanczos step is one product and nothing is thrown away by restarts, so for the few
    extreme eigenvalues of a network Hessian this needs fewer products than implicitly restarted
    Lanczos (ARPACK). The run stops once every requested Ritz pair has ``‖H u − θ u‖ ≤ tol · |θ|``
    by the Lanczos relation, or after ``max_steps`` products (``converged`` is then False).
    With ``verify`` the residuals are recomputed with explicit products and reported; otherwise
    the Lanczos-relation residuals are.

    Args:
        operator: the Hessian.
        k: number of largest eigenpairs (descending).
        k_smallest: number of smallest eigenpairs (ascending), 0 for none.
        tol: relative residual tolerance.
        max_steps: cap on Lanczos steps (and on the ``max_steps × n`` float64 basis).
        seed: seed of the Gaussian start vector (identical on every rank).
        verify: recompute residuals with ``k + k_smallest`` more products.

    Returns:
        ``(largest, smallest)``; ``smallest`` is None when ``k_smallest == 0``.

    Limitation: a single-vector Krylov method finds a multiple eigenvalue once (the k values
    returned are distinct eigenvalues), and one whose eigenspace is numerically orthogonal to the
    start vector not at all.
    """
    spectrum = lanczos_spectrum(
        operator, k, k_smallest, tol, max_steps, seed=seed, start="gaussian", verify=verify
    )
    return spectrum.largest, spectrum.smallest


def spectral_density(
    operator: HessianOperator,
    num_probes: int = 4,
    num_steps: int = 40,
    seed: int = 0,
    probes: Tensor | None = None,
    runs: Sequence[LanczosRun] = (),
) -> SpectralQuadrature:
    """Stochastic Lanczos quadrature of ``H``'s spectral density.

    Args:
        operator: the Hessian.
        num_probes: ``p`` Rademacher probes (ignored when ``probes`` is given).
        num_steps: ``m`` Lanczos steps per probe (capped at ``n``); ``p · m`` products.
        seed: seed of the probes (identical on every rank).
        probes: explicit ``[p, n]`` probes; each is normalised, and the average over probes is
            read as ``tr(·) / n``, as for Rademacher probes (the rows of an orthogonal matrix
            make the quadrature exact).
        runs: Lanczos runs already made from unit probes with ``E[q qᵀ] = I / n`` (e.g. the run
            of :func:`lanczos_spectrum`), drawn independently of ``seed``; each is one more
            probe, first in the rows, at no cost in products, whatever its length.
    """
    start, hvp_before = time.perf_counter(), operator.num_hvp
    n = operator.num_parameters
    num_steps = min(num_steps, n)
    if probes is None:
        probes = rademacher(num_probes, n, _generator(seed))
    quadratures = [run.ritz()[:2] for run in runs]
    for row, probe in enumerate(probes):
        quadratures.append(lanczos(operator, probe, num_steps).ritz()[:2])
        steps = len(quadratures[-1][0])
        rank_zero_log(logging.INFO, f"SLQ probe {row + 1}/{len(probes)}: {steps} steps")
    width = max([num_steps, *(len(theta) for theta, _ in quadratures)])
    nodes = np.zeros((len(quadratures), width))
    weights = np.zeros((len(quadratures), width))
    for row, (theta, vectors) in enumerate(quadratures):
        nodes[row, : len(theta)] = theta
        weights[row, : len(theta)] = vectors[0] ** 2
    return SpectralQuadrature(
        nodes, weights, n, operator.num_hvp - hvp_before, time.perf_counter() - start
    )


# --------------------------------------------------------------------------------------------
# Curvature along directions
# --------------------------------------------------------------------------------------------


def rayleigh_quotients(operator: HessianOperator, directions: Tensor) -> np.ndarray:
    """``dᵀ H d / dᵀ d`` for each row ``d`` of ``directions`` ``[k, n]``."""
    directions = _to_operator(operator, directions)
    products = operator.matmat(directions).to(torch.float64)
    directions = directions.to(torch.float64)
    return ((products * directions).sum(1) / (directions * directions).sum(1)).cpu().numpy()


@dataclass
class SymmetryCurvature:
    """Curvature along the soft-symmetry gradient against random directions.

    Attributes:
        symmetry: ``dᵀHd / dᵀd`` along ``d = ∇_θ S`` of the unweighted penalty ``S``
            (nan when ``S`` has no gradient, e.g. no penalty).
        random_mean: mean Rayleigh quotient over isotropic Gaussian directions (its expectation
            is ``tr H / n``).
        random_std: their standard deviation.
        ratio: ``symmetry / random_mean``.
        penalty_gradient_norm: ``‖∇_θ S‖``.
    """

    symmetry: float
    random_mean: float
    random_std: float
    ratio: float
    penalty_gradient_norm: float


def symmetry_curvature(
    operator: HessianOperator, num_random: int = 8, seed: int = 0
) -> SymmetryCurvature:
    """Rayleigh quotient of ``H`` along the gradient of the module's unweighted symmetry penalty
    (``symmetry_loss_on_batch``), compared with ``num_random`` Gaussian directions."""
    gradient = torch.zeros(operator.num_parameters, dtype=operator.dtype, device=operator.device)
    if hasattr(operator.module, "symmetry_loss_on_batch"):
        gradient = operator.gradient("symmetry")
    norm = float(gradient.norm())

    directions = torch.randn(
        num_random, operator.num_parameters, generator=_generator(seed), dtype=torch.float64
    )
    if norm > 0:
        directions = torch.cat([gradient.to(torch.float64).cpu()[None], directions])
    quotients = rayleigh_quotients(operator, directions)
    symmetry, random_quotients = (quotients[0], quotients[1:]) if norm > 0 else (np.nan, quotients)
    random_mean = float(random_quotients.mean()) if len(random_quotients) else float("nan")
    random_std = float(random_quotients.std(ddof=1)) if len(random_quotients) > 1 else 0.0
    return SymmetryCurvature(
        float(symmetry), random_mean, random_std, float(symmetry) / random_mean, norm
    )


def rank_zero_log(level: int, message: str) -> None:
    """Log on global rank zero only (every rank runs the same estimators)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        log.log(level, message)


__all__ = [
    "BACKENDS",
    "OBJECTIVES",
    "EigenResult",
    "HessianOperator",
    "RNGState",
    "SpectralQuadrature",
    "SymmetryCurvature",
    "TraceEstimate",
    "analysis_mode",
    "hutchinson_trace",
    "hutchpp_trace",
    "krylov_hutchpp_trace",
    "LanczosRun",
    "LanczosSpectrum",
    "extreme_eigenpairs",
    "lanczos",
    "lanczos_spectrum",
    "projected_hutchinson_trace",
    "rademacher",
    "rayleigh_quotients",
    "select_parameters",
    "spectral_density",
    "symmetry_curvature",
    "top_eigenvalues",
]
