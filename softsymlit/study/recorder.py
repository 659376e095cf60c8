"""The measurement record a study's teacher fit leaves for the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from softsymlit.analysis.callbacks import HessianCallback, RobustnessCallback
from softsymlit.study.callbacks import write_json_atomically

log = logging.getLogger(__name__)


class StudyMeasurements(Callback):
    """Writes the final curvature and robustness measurements of a fit, and the Hessian spectral
    density behind them, to one JSON file when fitting ends.

    Put it after the :class:`~softsymlit.analysis.HessianCallback` and
    :class:`~softsymlit.analysis.RobustnessCallback` it reads (callbacks run in list order).
    The file holds ``hessian`` and ``robustness`` (the callbacks' latest metrics) and
    ``density``: the stochastic Lanczos quadrature (``nodes``, ``weights``: ``[probes, steps]``)
    of the Hessian callback's latest measurement, the one its plot shows.

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
            content["density"] = hessian.last_density
        if trainer.is_global_zero:
            write_json_atomically(self.path, content)
            log.info("study measurements written to %s", self.path)


def _find(trainer: pl.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


__all__ = ["StudyMeasurements"]
