"""Jet-tagging metrics on top of torchmetrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.classification import BinaryROC


class BackgroundRejection(BinaryROC):
    """Background rejection ``1/ε_B`` at fixed signal efficiencies ``ε_S``.

    ``ε_B`` at each ``ε_S`` is read off the exact ROC curve by linear interpolation in ``ε_S``.
    A rejection where no background passes is reported as ``inf``.

    Args:
        efficiencies: signal efficiencies at which to evaluate, each in (0, 1].

    Example::

        rejection = BackgroundRejection((0.3, 0.5))
        rejection.update(scores, labels)
        rej30, rej50 = rejection.compute()
    """

    def __init__(self, efficiencies: Sequence[float] = (0.3, 0.5), **kwargs) -> None:
        super().__init__(thresholds=None, **kwargs)
        if not all(0.0 < e <= 1.0 for e in efficiencies):
            raise ValueError(f"signal efficiencies must lie in (0, 1]; got {list(efficiencies)}")
        self.efficiencies = tuple(float(e) for e in efficiencies)

    def compute(self) -> Tensor:
        fpr, tpr, _ = super().compute()
        targets = torch.tensor(self.efficiencies, dtype=fpr.dtype, device=fpr.device)
        background_efficiency = _interp(targets, tpr, fpr)
        return 1.0 / background_efficiency


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """``numpy.interp`` for a non-decreasing ``xp`` (ties resolved to the first crossing)."""
    index = torch.searchsorted(xp.contiguous(), x, right=False).clamp(1, len(xp) - 1)
    x0, x1 = xp[index - 1], xp[index]
    y0, y1 = fp[index - 1], fp[index]
    slope = torch.where(x1 > x0, (y1 - y0) / (x1 - x0), torch.zeros_like(x1))
    return y0 + slope * (x - x0)
