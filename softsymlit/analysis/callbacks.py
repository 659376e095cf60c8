"""Lightning callbacks measuring loss geometry and input robustness during training.

Both callbacks run at the end of every ``every_n_epochs``-th training epoch and/or when fitting
ends, on a fixed, deterministic analysis set, and never change the training they observe: the
module's train/eval modes, ``requires_grad`` flags, ``.grad`` tensors and every RNG state (torch
CPU and CUDA, numpy, Python) are put back afterwards, and nothing draws from the training
dataloaders' iterators. They skip the sanity check. Results go to every logger (``hessian/…``,
``robustness/…``), into a PNG under ``<log_dir>/analysis/`` (also sent to a ``WandbLogger`` as an
image) and into the callback's ``state_dict``, so a resumed run keeps its history.

The analysis set is ``trainer.datamodule.analysis_batches(split, num_jets, batch_size)`` when the
datamodule offers it; otherwise the first ``num_jets`` jets of the split's dataloader dataset, in
order, batched afresh without shuffling.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc, binary_roc
from typing_extensions import override

from softsymlit.analysis.curvature import (
    Batch,
    HessianOperator,
    LanczosSpectrum,
    analysis_mode,
    hutchinson_trace,
    hutchpp_trace,
    krylov_hutchpp_trace,
    lanczos_spectrum,
    projected_hutchinson_trace,
    spectral_density,
    symmetry_curvature,
    top_eigenvalues,
)
from softsymlit.analysis.perturbations import PERTURBATIONS, perturb
from softsymlit.analysis.plots import plot_robustness_curves, plot_spectral_density

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def analysis_batches(
    trainer: pl.Trainer, split: str, num_jets: int, batch_size: int
) -> list[Batch]:
    """The fixed analysis set of ``split``: ``num_jets`` jets as batches of ``batch_size``.

    Uses ``trainer.datamodule.analysis_batches`` when available, else re-batches the first jets
    of the split's dataloader dataset in order (no shuffling, no workers, no RNG drawn).

    Limitation: the fallback reads the dataloader's dataset directly, so an iterable dataset
    that shards itself by rank gives each rank a different set under DDP.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not available; use one of: {', '.join(SPLITS)}")
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and hasattr(datamodule, "analysis_batches"):
        return list(datamodule.analysis_batches(split, num_jets, batch_size))

    loader = _split_loader(trainer, split)
    fresh = DataLoader(
        loader.dataset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn
    )
    batches, taken = [], 0
    for batch in fresh:
        keep = min(len(batch["label"]), num_jets - taken)
        batches.append({key: value[:keep] for key, value in batch.items()})
        taken += keep
        if taken >= num_jets:
            break
    return batches


def _split_loader(trainer: pl.Trainer, split: str) -> DataLoader:
    loaders = {
        "train": trainer.train_dataloader,
        "val": trainer.val_dataloaders,
        "test": trainer.test_dataloaders,
    }[split]
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    if not isinstance(loaders, DataLoader):
        raise RuntimeError(
            f"no {split} dataloader to draw the analysis set from; give the datamodule an "
            "analysis_batches(split, num_jets, batch_size) method or configure a "
            f"{split} dataloader"
        )
    return loaders


def _to_device(batches: list[Batch], device: torch.device) -> list[Batch]:
    return [
        {k: v.to(device) if isinstance(v, Tensor) else v for k, v in b.items()} for b in batches
    ]


class _AnalysisCallback(Callback, abc.ABC):
    """Schedule, analysis set, history and output shared by the analysis callbacks."""

    prefix = ""

    def __init__(
        self, every_n_epochs: int, at_fit_end: bool, split: str, num_jets: int, batch_size: int
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0: never during training); got "
                             f"{every_n_epochs}")  # fmt: skip
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not available; use one of: {', '.join(SPLITS)}")
        self.every_n_epochs = every_n_epochs
        self.at_fit_end = at_fit_end
        self.split = split
        self.num_jets = num_jets
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = []
        self._batches: list[Batch] | None = None

    # ------------------------------------------------------------ schedule

    def _should_skip(self, trainer: pl.Trainer) -> bool:
        return trainer.sanity_checking or trainer.state.fn != "fit"

    def _already_done(self, trainer: pl.Trainer) -> bool:
        return bool(self.history) and self.history[-1]["global_step"] == trainer.global_step

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer) or self.every_n_epochs == 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer) or not self.at_fit_end or self._already_done(trainer):
            return
        self._run(trainer, pl_module)

    # ------------------------------------------------------------ running

    def _analysis_set(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Batch]:
        if self._batches is None:
            state = torch.get_rng_state()
            try:
                batches = analysis_batches(trainer, self.split, self.num_jets, self.batch_size)
            finally:
                torch.set_rng_state(state)
            self._batches = _to_device(batches, pl_module.device)
        return self._batches

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        output_dir = Path(trainer.log_dir or trainer.default_root_dir) / "analysis"
        start = time.perf_counter()
        metrics, figure = self._measure(trainer, pl_module, output_dir)
        metrics[f"{self.prefix}/seconds"] = time.perf_counter() - start
        self.history.append({"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                             "metrics": metrics})  # fmt: skip
        if trainer.is_global_zero:
            self._publish(trainer, metrics, figure)

    @abc.abstractmethod
    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, output_dir: Path
    ) -> tuple[dict[str, float], Path | None]:
        """The metrics of one measurement and the figure drawn for it (or None)."""

    def _publish(self, trainer: pl.Trainer, metrics: dict[str, float], figure: Path | None):
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        for logger in trainer.loggers:
            logger.log_metrics(finite, step=trainer.global_step)
            if figure is not None and isinstance(logger, WandbLogger):
                logger.log_image(key=f"{self.prefix}/plot", images=[str(figure)],
                                 step=trainer.global_step)  # fmt: skip
        log.info("%s at epoch %d: %s", self.prefix, trainer.current_epoch,
                 ", ".join(f"{k}={v:.4g}" for k, v in finite.items()))  # fmt: skip

    # ------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]

    @property
    def latest(self) -> dict[str, float]:
        """The metrics of the most recent measurement (empty before the first)."""
        return dict(self.history[-1]["metrics"]) if self.history else {}


class HessianCallback(_AnalysisCallback):
    """Hessian spectrum of the loss with respect to the parameters, on a schedule.

    Measures, on the fixed analysis set (see :class:`~softsymlit.analysis.curvature.
    HessianOperator` for the objective): the ``top_k`` largest and ``num_negative`` smallest
    eigenvalues with their relative residuals, the trace by Hutch++ (on a Krylov basis by default;
    Hutchinson too if asked) with standard errors, the spectral density by stochastic Lanczos
    quadrature, the effective
    dimension ``Σ λ/(λ + z)``, the near-zero mode count ``#{|λ| < ε λ_max}`` and the Rayleigh
    quotient along the soft-symmetry gradient against random directions. Logged as
    ``hessian/lambda_1 … lambda_k``, ``hessian/lambda_min``, ``hessian/max_residual``,
    ``hessian/trace``, ``hessian/trace_se``, ``hessian/effective_dimension``,
    ``hessian/near_zero_count``, ``hessian/near_zero_fraction``, ``hessian/symmetry_rayleigh``,
    ``hessian/random_rayleigh``, ``hessian/symmetry_rayleigh_ratio``, ``hessian/num_hvp``,
    ``hessian/seconds``; the density is drawn to ``analysis/hessian_density_step<step>.png``.

    With ``eigen_method="lanczos"`` one Lanczos run from a Rademacher start
    (:func:`~softsymlit.analysis.curvature.lanczos_spectrum`), of at least ``slq_steps`` and at
    most ``max_lanczos_steps`` steps, serves three estimators: its Ritz pairs are the
    eigenpairs, its tridiagonal is the first probe of the density, and its basis is the Krylov
    part of the trace, so the trace then costs only ``trace_matvecs`` projected probes and the
    density ``slq_probes − 1`` further runs.

    Under DDP every rank computes the products on its share of the analysis batches and they are
    all-reduced, so every rank takes the same path and the numbers equal one process's.

    Args:
        every_n_epochs: measure after every n-th training epoch (0: never during training).
        at_fit_end: measure when fitting ends (unless the last epoch was just measured).
        split: analysis set split, ``train`` (default) or ``val``/``test``.
        num_jets: jets in the analysis set.
        batch_size: jets per analysis batch.
        parameters: ``fnmatch`` patterns over parameter names (None: all trainable).
        include_penalty: differentiate the total loss with the weighted penalty, not the task
            loss alone.
        dtype: ``float32`` or ``float64``.
        backend: ``autograd`` (kept graph, double backward), ``linearized`` (traced
            forward-over-reverse, cheaper products after a tracing that pays from about 50
            products per 256 jets) or ``func`` (see :class:`~softsymlit.analysis.curvature.
            HessianOperator`).
        eigen_method: ``lanczos`` (one unrestarted run for both ends, shared with density and
            trace) or ``arpack`` (``eigsh``, separate runs for everything).
        top_k: number of largest eigenvalues.
        num_negative: number of smallest eigenvalues (0: none).
        eigen_tol: relative residual tolerance of the eigenpairs.
        max_lanczos_steps: cap on Lanczos steps for the eigenpairs.
        verify_residuals: recompute the eigenpairs' residuals with explicit products instead of
            reading them from the Lanczos relation (``top_k + num_negative`` more products).
        trace_matvecs: products of the trace estimate; with the shared Lanczos run and
            ``trace_method="krylov"``, all of them are projected probes.
        trace_method: ``krylov`` (Hutch++ on a Lanczos basis) or ``hutchpp`` (sketched Hutch++).
        hutchinson_probes: plain Hutchinson probes as well (0: none).
        slq_probes: probes of the spectral density (the shared run counts as one).
        slq_steps: Lanczos steps per probe (the shared run's minimum).
        broadening: Gaussian width of the density as a fraction of its support.
        effective_dimension_z: ``z`` of the effective dimension.
        near_zero_epsilon: ``ε`` of the near-zero window.
        symmetry_directions: measure curvature along the penalty gradient.
        num_random_directions: random directions to compare with.
        seed: seed of every random vector.
        plot: draw the density.

    Limitation: at the defaults one measurement (256 jets, about 42 products) costs about one
    24k-jet training epoch of a 67k-parameter PFN on one CPU thread, so even once at fit end of 8
    epochs it adds about 12% to training, and with the robustness callback about 18%.

    Example::

        trainer = Trainer(callbacks=[HessianCallback(every_n_epochs=4, num_jets=256)])
    """

    prefix = "hessian"

    def __init__(
        self,
        every_n_epochs: int = 0,
        at_fit_end: bool = True,
        split: str = "train",
        num_jets: int = 256,
        batch_size: int = 256,
        parameters: list[str] | None = None,
        include_penalty: bool = False,
        dtype: str = "float32",
        backend: str = "autograd",
        eigen_method: str = "lanczos",
        top_k: int = 5,
        num_negative: int = 1,
        eigen_tol: float = 1e-3,
        max_lanczos_steps: int = 60,
        verify_residuals: bool = False,
        trace_matvecs: int = 10,
        trace_method: str = "krylov",
        hutchinson_probes: int = 0,
        slq_probes: int = 1,
        slq_steps: int = 30,
        broadening: float = 0.01,
        effective_dimension_z: float = 1.0,
        near_zero_epsilon: float = 0.01,
        symmetry_directions: bool = True,
        num_random_directions: int = 2,
        seed: int = 0,
        plot: bool = True,
    ) -> None:
        super().__init__(every_n_epochs, at_fit_end, split, num_jets, batch_size)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not available; use one of: {', '.join(_DTYPES)}")
        if eigen_method not in ("lanczos", "arpack"):
            raise ValueError(f"eigen_method {eigen_method!r} is not available; use one of: "
                             "lanczos, arpack")  # fmt: skip
        self.parameters = parameters
        self.include_penalty = include_penalty
        self.dtype = dtype
        self.backend = backend
        self.eigen_method = eigen_method
        self.top_k = top_k
        self.num_negative = num_negative
        self.eigen_tol = eigen_tol
        self.max_lanczos_steps = max_lanczos_steps
        self.verify_residuals = verify_residuals
        self.trace_matvecs = trace_matvecs
        if trace_method not in ("krylov", "hutchpp"):
            raise ValueError(f"trace_method {trace_method!r} is not available; use one of: "
                             "krylov, hutchpp")  # fmt: skip
        self.trace_method = trace_method
        self.hutchinson_probes = hutchinson_probes
        self.slq_probes = slq_probes
        self.slq_steps = slq_steps
        self.broadening = broadening
        self.effective_dimension_z = effective_dimension_z
        self.near_zero_epsilon = near_zero_epsilon
        self.symmetry_directions = symmetry_directions
        self.num_random_directions = num_random_directions
        self.seed = seed
        self.plot = plot
        self.last_density: dict[str, Any] | None = None
        """The quadrature (``nodes``, ``weights`` ``[probes, steps]``) of the latest density."""

    def _eigenpairs(self, operator: HessianOperator):
        """``(largest, smallest, spectrum)``; ``spectrum`` is the shared Lanczos run (None for
        ARPACK)."""
        if self.eigen_method == "lanczos":
            spectrum = lanczos_spectrum(
                operator, self.top_k, self.num_negative, self.eigen_tol, self.max_lanczos_steps,
                min_steps=self.slq_steps, seed=self.seed, verify=self.verify_residuals,
            )  # fmt: skip
            return spectrum.largest, spectrum.smallest, spectrum
        top = top_eigenvalues(operator, self.top_k, "largest", self.eigen_tol, seed=self.seed)
        bottom = None
        if self.num_negative:
            bottom = top_eigenvalues(
                operator, self.num_negative, "smallest", self.eigen_tol, max_restarts=20,
                seed=self.seed,
            )  # fmt: skip
        return top, bottom, None

    def _trace(self, operator: HessianOperator, spectrum: LanczosSpectrum | None):
        if spectrum is not None and self.trace_method == "krylov":
            return projected_hutchinson_trace(
                operator, spectrum.run, self.trace_matvecs, seed=self.seed + 1
            )
        estimator = krylov_hutchpp_trace if self.trace_method == "krylov" else hutchpp_trace
        return estimator(operator, self.trace_matvecs, seed=self.seed + 1)

    def _density(self, operator: HessianOperator, spectrum: LanczosSpectrum | None):
        if spectrum is None:
            return spectral_density(operator, self.slq_probes, self.slq_steps, self.seed + 3)
        return spectral_density(
            operator, max(self.slq_probes - 1, 0), self.slq_steps, self.seed + 3,
            runs=[spectrum.run],
        )  # fmt: skip

    @override
    def _measure(self, trainer, pl_module, output_dir):
        batches = self._analysis_set(trainer, pl_module)
        metrics: dict[str, float] = {}
        with analysis_mode(pl_module):
            operator = HessianOperator(
                pl_module, batches, self.parameters,
                objective="total" if self.include_penalty else "task",
                dtype=_DTYPES[self.dtype], backend=self.backend, seed=self.seed,
            )  # fmt: skip
            log.info("hessian: %d parameters, %d jets", operator.num_parameters, operator.num_jets)

            top, bottom, spectrum = self._eigenpairs(operator)
            for index, value in enumerate(top.eigenvalues, start=1):
                metrics[f"hessian/lambda_{index}"] = float(value)
            residuals = list(top.residuals)
            if bottom is not None:
                metrics["hessian/lambda_min"] = float(bottom.eigenvalues[0])
                residuals += list(bottom.residuals)
            metrics["hessian/max_residual"] = float(max(residuals))

            trace = self._trace(operator, spectrum)
            metrics["hessian/trace"], metrics["hessian/trace_se"] = (
                trace.trace,
                trace.standard_error,
            )
            if self.hutchinson_probes:
                plain = hutchinson_trace(operator, self.hutchinson_probes, seed=self.seed + 2)
                metrics["hessian/trace_hutchinson"] = plain.trace
                metrics["hessian/trace_hutchinson_se"] = plain.standard_error

            quadrature = self._density(operator, spectrum)
            sigma = quadrature.default_broadening(self.broadening)
            lambda_max = float(top.eigenvalues[0])
            count = quadrature.near_zero_count(self.near_zero_epsilon, lambda_max, sigma)
            metrics["hessian/effective_dimension"] = quadrature.effective_dimension(
                self.effective_dimension_z
            )
            metrics["hessian/near_zero_count"] = count
            metrics["hessian/near_zero_fraction"] = count / operator.num_parameters
            metrics["hessian/density_mean"] = quadrature.moment(1)
            self.last_density = {
                "nodes": quadrature.nodes.tolist(),
                "weights": quadrature.weights.tolist(),
                "num_parameters": quadrature.num_parameters,
                "broadening": self.broadening,
            }

            if self.symmetry_directions:
                curvature = symmetry_curvature(
                    operator, self.num_random_directions, seed=self.seed + 4
                )
                metrics["hessian/symmetry_rayleigh"] = curvature.symmetry
                metrics["hessian/random_rayleigh"] = curvature.random_mean
                metrics["hessian/symmetry_rayleigh_ratio"] = curvature.ratio
            metrics["hessian/num_hvp"] = float(operator.num_hvp)
            operator.release()

        figure = None
        if self.plot and trainer.is_global_zero:
            figure = plot_spectral_density(
                quadrature, output_dir / f"hessian_density_step{trainer.global_step}.png", sigma,
                top.eigenvalues, self.near_zero_epsilon * abs(lambda_max),
                title=f"Hessian spectrum, epoch {trainer.current_epoch}",
            )  # fmt: skip
        return metrics, figure


DEFAULT_STRENGTHS: dict[str, list[float]] = {
    "pt_smear": [0.05, 0.1, 0.2],
    "eta_smear": [0.01, 0.02, 0.05],
    "phi_smear": [0.01, 0.02, 0.05],
    "energy_scale": [-0.05, 0.05, 0.1],
    "soft_drop": [1.0, 2.0, 5.0],
    "random_drop": [0.05, 0.1, 0.2],
    "collinear_split": [0.1, 0.2, 0.5],
    "lorentz": [0.05, 0.1, 0.3],
}


def background_rejection(score: Tensor, is_signal: Tensor, efficiency: float) -> float:
    """``1/ε_B`` at signal efficiency ``efficiency``, ``ε_B`` interpolated linearly on the ROC
    curve (``inf`` when no background passes)."""
    fpr, tpr, _ = binary_roc(score, is_signal)
    background = float(np.interp(efficiency, tpr.double().numpy(), fpr.double().numpy()))
    return 1.0 / background if background > 0 else float("inf")


class RobustnessCallback(_AnalysisCallback):
    """Response of the tagger to perturbed inputs, on a schedule.

    For every perturbation ``name`` (see :mod:`softsymlit.analysis.perturbations`) and strength
    ``s`` in ``perturbations``, the analysis jets are perturbed (with a generator seeded by
    ``seed``, the same in every measurement) and the module evaluated in eval mode. Logged:
    ``robustness/<name>_<s>/auc``, ``…/rej30`` and ``…/mean_abs_delta``, the mean over jets of
    ``|p_sig(perturbed) − p_sig(original)|`` with ``p_sig`` the softmax probability of the signal
    class; the unperturbed ``robustness/nominal/auc`` and ``…/rej30``; and one figure of the
    curves, ``analysis/robustness_step<step>.png``. Every rank computes the same numbers alone
    (no collective).

    Args:
        perturbations: strengths per perturbation name (default :data:`DEFAULT_STRENGTHS`).
        every_n_epochs: measure after every n-th training epoch (0: never during training).
        at_fit_end: measure when fitting ends (unless the last epoch was just measured).
        split: analysis set split, ``val`` by default.
        num_jets: jets in the analysis set.
        batch_size: jets per analysis batch.
        signal_class: class index counted as signal (None: the module's ``signal_class``, else 1).
        seed: seed of the perturbations.
        plot: draw the curves.
    """

    prefix = "robustness"

    def __init__(
        self,
        perturbations: dict[str, list[float]] | None = None,
        every_n_epochs: int = 0,
        at_fit_end: bool = True,
        split: str = "val",
        num_jets: int = 1024,
        batch_size: int = 256,
        signal_class: int | None = None,
        seed: int = 0,
        plot: bool = True,
    ) -> None:
        super().__init__(every_n_epochs, at_fit_end, split, num_jets, batch_size)
        perturbations = dict(DEFAULT_STRENGTHS if perturbations is None else perturbations)
        unknown = sorted(set(perturbations) - set(PERTURBATIONS))
        if unknown:
            raise ValueError(f"perturbations {unknown} are not available; use any of: "
                             f"{', '.join(PERTURBATIONS)}")  # fmt: skip
        self.perturbations = {k: [float(s) for s in v] for k, v in perturbations.items()}
        self.signal_class = signal_class
        self.seed = seed
        self.plot = plot
        self.last_density: dict[str, Any] | None = None
        """The quadrature (``nodes``, ``weights`` ``[probes, steps]``) of the latest density."""

    def _signal_probability(self, pl_module, p4: Tensor, mask: Tensor, signal: int) -> Tensor:
        return pl_module(p4, mask).double().softmax(dim=-1)[:, signal].cpu()

    @override
    def _measure(self, trainer, pl_module, output_dir):
        batches = self._analysis_set(trainer, pl_module)
        signal = self.signal_class
        if signal is None:
            signal = int(getattr(pl_module, "signal_class", 1))
        is_signal = torch.cat([b["label"] for b in batches]).cpu() == signal
        if is_signal.all() or not is_signal.any():
            rank_zero_warn(f"robustness analysis set of {self.split} holds one class only; "
                           "AUC and rejection are undefined")  # fmt: skip

        metrics: dict[str, float] = {}
        results: dict[str, dict[float, dict[str, float]]] = {}
        with analysis_mode(pl_module), torch.no_grad():
            nominal = torch.cat([
                self._signal_probability(pl_module, b["p4"], b["mask"], signal) for b in batches
            ])  # fmt: skip
            metrics["robustness/nominal/auc"] = float(binary_auroc(nominal, is_signal.long()))
            metrics["robustness/nominal/rej30"] = background_rejection(nominal, is_signal, 0.3)
            for name, strengths in self.perturbations.items():
                results[name] = {}
                for strength in strengths:
                    generator = torch.Generator().manual_seed(self.seed)
                    scores = []
                    for b in batches:
                        p4, mask = perturb(name, b["p4"], b["mask"], strength, generator)
                        scores.append(self._signal_probability(pl_module, p4, mask, signal))
                    score = torch.cat(scores)
                    values = {
                        "auc": float(binary_auroc(score, is_signal.long())),
                        "rej30": background_rejection(score, is_signal, 0.3),
                        "mean_abs_delta": float((score - nominal).abs().mean()),
                    }
                    results[name][strength] = values
                    for key, value in values.items():
                        metrics[f"robustness/{name}_{strength:g}/{key}"] = value

        figure = None
        if self.plot and trainer.is_global_zero and results:
            for name in results:
                results[name].setdefault(0.0, {
                    "auc": metrics["robustness/nominal/auc"], "mean_abs_delta": 0.0
                })  # fmt: skip
            figure = plot_robustness_curves(
                results, output_dir / f"robustness_step{trainer.global_step}.png",
                title=f"Robustness, epoch {trainer.current_epoch}",
            )  # fmt: skip
        return metrics, figure


__all__ = [
    "DEFAULT_STRENGTHS",
    "HessianCallback",
    "RobustnessCallback",
    "analysis_batches",
    "background_rejection",
]
