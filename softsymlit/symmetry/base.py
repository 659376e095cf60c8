"""The contract between a classifier and a symmetry penalty."""

from __future__ import annotations

import abc
from collections.abc import Callable

from torch import Tensor, nn

JetFunction = Callable[[Tensor, Tensor], Tensor]
"""``f(p4, mask) -> output``: ``p4 [B, N, 4]`` (E, px, py, pz) in GeV, ``mask [B, N]`` bool,
``output [B, C]`` (or ``[B]``)."""


class SymmetryPenalty(nn.Module, abc.ABC):
    """Base class of the soft-symmetry terms a :class:`~softsymlit.models.JetClassifier` adds to its
    loss.

    A penalty is called with the network and the batch and returns the network output on the
    untransformed batch together with the unweighted penalty, so that an implementation is free
    to share work between the two (one forward on a concatenated batch, say). The classifier
    multiplies the penalty by :meth:`weight_at` of the current optimisation step and skips the
    call entirely when that weight is zero.
    """

    @abc.abstractmethod
    def weight_at(self, step: int) -> float:
        """The penalty weight λ at optimisation step ``step``."""

    @abc.abstractmethod
    def forward(self, network: JetFunction, p4: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(network(p4, mask), penalty)`` with ``penalty`` a scalar tensor."""
