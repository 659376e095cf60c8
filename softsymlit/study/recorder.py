"""The measurement record a study's teacher fit leaves for the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from softsymlit.analysis.callbacks import HessianCallback, RobustnessCallback, analysis_batches
from softsymlit.analysis.curvature import HessianOperator, analysis_mode, spectral_density
from softsymlit.study.callbacks import write_json_atomically

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class StudyMeasurements(Callback):
    """Writes the final curvature and robustness measurements of a fit, and the Hessian spectral
    density behind them, to one JSON file when fitting ends.

    Put it after the :class:`~softsymlit.analysis.HessianCallback` and
    :class:`~softsymlit.analysis.RobustnessCallback` it reads (callbacks run in list order).
    The file holds ``hessian`` and ``robustness`` (the callbacks' latest metrics) and
    ``density``: the stochastic Lanczos quadrature (``nodes``, ``weights``: ``[probes, steps]``)
    recomputed with the Hessian callback's analysis set, objective and seed, hence the one its
    plot shows. The recomputation runs in :func:`~softsymlit.analysis.curvature.analysis_mode`,
    after training, and leaves modes, gradients and RNG states as they were.

    Limitation: the density costs ``slq_probes × slq_steps`` extra Hessian-vector products,
    because the Hessian callback keeps only scalars.

    Args:
        path: the JSON file.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        hessian = _find(trainer, HessianCallback)
        robustness = _find(trainer, RobustnessCallback)
        content: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "hessian": hessian.latest if hessian is not None else {},
            "robustness": robustness.latest if robustness is not None else {},
            "density": None,
        }
        if hessian is not None:
            content["density"] = _density(trainer, pl_module, hessian)
        if trainer.is_global_zero:
            write_json_atomically(self.path, content)
            log.info("study measurements written to %s", self.path)


def _find(trainer: pl.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def _density(trainer: pl.Trainer, pl_module: pl.LightningModule, hessian: HessianCallback):
    batches = analysis_batches(trainer, hessian.split, hessian.num_jets, hessian.batch_size)
    device = pl_module.device
    batches = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        for batch in batches
    ]
    with analysis_mode(pl_module):
        operator = HessianOperator(
            pl_module, batches, hessian.parameters,
            objective="total" if hessian.include_penalty else "task",
            dtype=_DTYPES[hessian.dtype], backend=hessian.backend, seed=hessian.seed,
        )  # fmt: skip
        # The Hessian callback draws its density probes from seed + 3.
        quadrature = spectral_density(operator, hessian.slq_probes, hessian.slq_steps,
                                      hessian.seed + 3)  # fmt: skip
        operator.release()
    return {
        "nodes": quadrature.nodes.tolist(),
        "weights": quadrature.weights.tolist(),
        "num_parameters": quadrature.num_parameters,
        "broadening": hessian.broadening,
    }


__all__ = ["StudyMeasurements"]
