"""Curvature estimators side by side: this project against PyHessian, and the callbacks' cost.

One run on one machine, same model and data for every row:

- top-5 eigenvalues: wall time and Hessian-vector products to reach relative residual ≤ 1e-3
  (Lanczos with full reorthogonalisation stopped by its own residual estimate, with the
  double-backward and the traced ``linearized`` products; ARPACK ``eigsh``; PyHessian
  ``eigenvalues(top_n=5)``), and whether each method's five are the true top five of a tight
  reference; every row's residual is recomputed afterwards with explicit, untimed products;
- trace: standard error, time and efficiency ``1 / (SE² · seconds)`` (higher is better; for a
  Monte-Carlo estimate it does not depend on the number of samples) of Krylov Hutch++ and
  Hutch++ against PyHessian's ``trace()``;
- callbacks: the seconds of one measurement of each callback at its default settings against
  the seconds of one training epoch (24,576 jets, about the generated training split), and the
  fraction per epoch at the default schedule (once at fit end, 8 epochs) and at the schedule of
  ``configs/top_tagging_analysis.yaml``.

The model is a Particle Flow Network of 67,350 parameters (phi 128-128-128, F 100-100-100),
trained for a few Adam steps on 1024 synthetic jets (``tests/synthetic.py``, up to 32
constituents, labelled by whether the jet mass is above the median), so that the Hessian is
taken away from initialisation. Single-threaded by default (``--threads``).

    python benchmarks/curvature.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic import make_random_jets  # noqa: E402

from softsymlit.analysis import (  # noqa: E402
    HessianCallback,
    HessianOperator,
    PyHessianBackend,
    RobustnessCallback,
    analysis_mode,
    extreme_eigenpairs,
    hutchpp_trace,
    krylov_hutchpp_trace,
    top_eigenvalues,
)
from softsymlit.models import JetClassifier, ParticleFlowNetwork, count_parameters  # noqa: E402
from softsymlit.models.features import jet_four_momentum  # noqa: E402


def synthetic_batch(num_jets: int, seed: int) -> dict[str, torch.Tensor]:
    p4, mask = make_random_jets(num_jets, 32, seed=seed, dtype=torch.float32)
    jet = jet_four_momentum(p4, mask)
    mass = (jet[:, 0] ** 2 - (jet[:, 1:] ** 2).sum(1)).clamp_min(0).sqrt()
    label = (mass > 110.0).long()
    return {"p4": p4, "mask": mask, "label": label, "weight": torch.ones(num_jets)}


def build_model(batch, steps: int) -> JetClassifier:
    torch.manual_seed(0)
    model = JetClassifier(ParticleFlowNetwork(phi_sizes=(128, 128, 128), f_sizes=(100, 100, 100)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss_on_batch(batch).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


def true_top(reference: np.ndarray, values: np.ndarray, rtol: float = 1e-2) -> bool:
    """Whether ``values`` sorted descending equal the reference top ``len(values)``."""
    values = np.sort(np.asarray(values))[::-1]
    expected = reference[: len(values)]
    return bool(np.all(np.abs(values - expected) <= rtol * np.abs(expected)))


def explicit_residual(operator, values: np.ndarray, vectors: torch.Tensor) -> float:
    """``max_i ‖H u_i − λ_i u_i‖ / (‖u_i‖ |λ_i|)`` by ``len(values)`` explicit products."""
    vectors = vectors.to(operator.dtype)
    misfit = operator.matmat(vectors) - torch.from_numpy(values).to(vectors)[:, None] * vectors
    scale = vectors.norm(dim=1) * torch.from_numpy(np.abs(values)).to(vectors)
    return float((misfit.norm(dim=1) / scale).max())


class _Loader(pl.LightningDataModule):
    def __init__(self, train, val) -> None:
        super().__init__()
        self.train, self.val = train, val

    def analysis_batches(self, split: str, num_jets: int, batch_size: int):
        batch = self.train if split == "train" else self.val
        return [
            {k: v[i : min(i + batch_size, num_jets)] for k, v in batch.items()}
            for i in range(0, num_jets, batch_size)
        ]

    def _loader(self, batch, shuffle):
        dataset = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["label"]))]
        return torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader(self.train, True)

    def val_dataloader(self):
        return self._loader(self.val, False)


def callback_cost(model, epoch_jets: int) -> tuple[float, float, float]:
    """Seconds of one training epoch over ``epoch_jets`` jets, and of one measurement of each
    callback at its defaults."""
    data = _Loader(synthetic_batch(epoch_jets, seed=5), synthetic_batch(2048, seed=6))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    epoch = time.perf_counter() - start
    seconds = []
    for callback in (HessianCallback(plot=True), RobustnessCallback(plot=True)):
        start = time.perf_counter()
        callback._run(trainer, model)
        seconds.append(time.perf_counter() - start)
    return epoch, seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jets", type=int, default=1024)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--epoch-jets", type=int, default=24576)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    batch = synthetic_batch(args.jets, seed=1)
    model = build_model(batch, args.train_steps)
    batches = [batch]
    print(f"PFN with {count_parameters(model)} parameters, {args.jets} synthetic jets "
          f"(up to 32 constituents), {args.threads} thread(s)")  # fmt: skip

    rows = []
    with analysis_mode(model):
        operator = HessianOperator(model, batches)
        reference, _ = extreme_eigenpairs(operator, k=7, tol=1e-6, max_steps=200, seed=9)
        reference_operator = operator
        ref = reference.eigenvalues
        print("reference top-7 (Lanczos, residual <= 1e-6):", np.array2string(ref, precision=5))

        for name, backend in (("ours: Lanczos (full reorth.)", "autograd"),
                              ("ours: Lanczos, linearized HVP", "linearized")):  # fmt: skip
            operator = HessianOperator(model, batches, backend=backend)  # the set-up is timed
            start = time.perf_counter()
            ours, _ = extreme_eigenpairs(operator, k=5, tol=1e-3, max_steps=150, verify=False)
            seconds = time.perf_counter() - start
            residual = explicit_residual(reference_operator, ours.eigenvalues, ours.eigenvectors)
            rows.append((name, seconds, ours.num_hvp, residual,
                         true_top(ref, ours.eigenvalues), ours.eigenvalues))  # fmt: skip
            operator.release()

        operator = HessianOperator(model, batches)
        start = time.perf_counter()
        arpack = top_eigenvalues(operator, k=5, tol=1e-3, num_lanczos_vectors=12)
        rows.append(
            (
                "ours: ARPACK eigsh (ncv=12)",
                time.perf_counter() - start,
                arpack.num_hvp,
                arpack.residuals.max(),
                true_top(ref, arpack.eigenvalues),
                arpack.eigenvalues,
            )
        )

        traces = []
        for name, estimator in (("ours: Krylov Hutch++ (60 products)", krylov_hutchpp_trace),
                                ("ours: Hutch++ (60 products)", hutchpp_trace)):  # fmt: skip
            operator = HessianOperator(model, batches)
            start = time.perf_counter()
            estimate = estimator(operator, num_matvecs=60, seed=1)
            traces.append((name, estimate, time.perf_counter() - start))

    pyhessian = PyHessianBackend(model, batches)
    start = time.perf_counter()
    values, vectors = pyhessian.top_eigenvalues(k=5, return_vectors=True)
    seconds = time.perf_counter() - start
    with analysis_mode(model):
        residual = explicit_residual(HessianOperator(model, batches), values, vectors)
    rows.append(("PyHessian eigenvalues(top_n=5)", seconds, pyhessian.num_hvp, residual,
                 true_top(ref, values), values))  # fmt: skip
    pyhessian.num_hvp = 0
    start = time.perf_counter()
    ph_trace = pyhessian.trace()
    ph_trace_seconds = time.perf_counter() - start

    print()
    print(f"{'top-5 eigenvalues':34s} {'wall s':>8s} {'HVPs':>6s} {'max resid':>10s} "
          f"{'true top 5':>10s}  eigenvalues")  # fmt: skip
    for name, wall, hvp, residual, correct, eig in rows:
        print(f"{name:34s} {wall:8.1f} {hvp:6d} {residual:10.1e} {str(correct):>10s}  "
              f"{np.array2string(np.asarray(eig), precision=3)}")  # fmt: skip
    pyhessian_seconds = rows[-1][1]
    print(f"time ratio ours (Lanczos) / PyHessian: {rows[0][1] / pyhessian_seconds:.2f}")
    print(f"time ratio ours (Lanczos, linearized) / PyHessian: "
          f"{rows[1][1] / pyhessian_seconds:.2f}")  # fmt: skip

    ph_efficiency = 1.0 / (ph_trace.standard_error**2 * ph_trace_seconds)
    print()
    header = f"{'trace':34s} {'wall s':>8s} {'HVPs':>6s} {'trace':>10s} {'SE':>9s}"
    print(f"{header} {'1/(SE² s)':>11s} {'vs PyHessian':>12s}")
    for name, estimate, seconds in [*traces, ("PyHessian trace()", ph_trace, ph_trace_seconds)]:
        efficiency = 1.0 / (estimate.standard_error**2 * seconds)
        print(
            f"{name:34s} {seconds:8.1f} {estimate.num_hvp:6d} {estimate.trace:10.2f} "
            f"{estimate.standard_error:9.3f} {efficiency:11.3g} {efficiency / ph_efficiency:11.1f}x"
        )

    epoch, hessian, robustness = callback_cost(model, args.epoch_jets)
    # Defaults: each callback measures once, at fit end; over the 8 epochs of
    # configs/top_tagging.yaml that is (hessian + robustness) / 8 per epoch. The analysis config
    # measures the Hessian after epochs 4 and 8 and robustness after epochs 2, 4, 6 and 8.
    default_per_epoch = (hessian + robustness) / 8
    config_per_epoch = (2 * hessian + 4 * robustness) / 8
    print()
    print(f"training epoch ({args.epoch_jets} jets, batch 256): {epoch:.1f} s")
    print(f"HessianCallback defaults (256 jets): {hessian:.1f} s per measurement")
    print(
        f"RobustnessCallback defaults (1024 jets, 24 settings): {robustness:.1f} s per measurement"
    )
    print(
        f"default schedule (once at fit end, 8 epochs): {default_per_epoch:.1f} s per epoch = "
        f"{default_per_epoch / epoch:.1%} of the epoch time"
    )
    print(
        f"analysis config schedule: {config_per_epoch:.1f} s per epoch = "
        f"{config_per_epoch / epoch:.1%} of the epoch time"
    )


if __name__ == "__main__":
    main()
