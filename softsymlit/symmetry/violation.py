"""A symmetry-violation metric that does not depend on the training objective."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from softsymlit.symmetry.elements import apply, exponential, sample_coefficients
from softsymlit.symmetry.generators import Subgroup
from softsymlit.symmetry.penalty import OUTPUTS, output_map

log = logging.getLogger(__name__)


def symmetry_violation(
    function,
    p4: Tensor,
    mask: Tensor,
    subgroup: Subgroup,
    strengths: Sequence[float],
    output: str = "probabilities",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean output change ``⟨|h(f(Λ p)) − h(f(p))|⟩`` over jets, at several strengths.

    At strength ``s`` every group parameter (rotation angle in radians and rapidity alike) is
    drawn uniformly in ``[−s, s]``, one element ``Λ = exp(Σ_a c_a G_a)`` per jet; ``|·|`` is
    the Euclidean norm over classes of the mapped outputs (see
    :func:`~softsymlit.symmetry.penalty.output_map`). The untransformed and all transformed
    copies go through one forward pass.

    Args:
        function: ``f(p4, mask) -> [B, C]``.
        p4: ``[B, N, 4]`` (E, px, py, pz) in GeV, zero where masked.
        mask: ``[B, N]`` bool.
        subgroup: the transformations.
        strengths: parameter half-widths ``s``.
        output: ``"probabilities"`` or ``"logits"`` (centred).
        generator: CPU random-number generator for the draws (the global one when None).

    Returns:
        ``[len(strengths)]``, the mean over jets at each strength.
    """
    batch = p4.shape[0]
    generators = subgroup.matrices(p4, mask)
    copies = [p4]
    for strength in strengths:
        coefficients = sample_coefficients(batch, subgroup.kinds, strength, strength, generator)
        copies.append(apply(exponential(generators, coefficients.to(p4.device)), p4, mask))

    outputs = output_map(function(torch.cat(copies), mask.repeat(len(copies), 1)), output)
    outputs = outputs.view(len(copies), batch, -1)
    return (outputs[1:] - outputs[:1]).norm(dim=-1).mean(dim=-1)


class SymmetryViolation(pl.Callback):
    """Logs how much the model's output changes under sampled group elements.

    After every validation and test batch, the module is evaluated on the batch and on copies
    transformed by random elements of the subgroup at each strength (see
    :func:`symmetry_violation`); the epoch mean over jets is logged as
    ``{stage}/symmetry_violation/{group}/{strength}``. The draws come from a private generator
    seeded from ``seed`` and the batch index, so runs with different penalties are compared on
    the same transformations and the training trajectory is not touched.

    The module's ``forward(p4, mask)`` must return logits ``[B, C]`` (as
    :class:`~softsymlit.models.JetClassifier` does).

    Args:
        group: a named subgroup (``lorentz``, ``so3``, ``so2_z``, ``boost_z``,
            ``jet_axis_rotation``, ``jet_axis_boost``).
        generators: an explicit list of generator names; overrides ``group``.
        strengths: half-widths of the angles (radians) and rapidities.
        output: ``"probabilities"`` or ``"logits"`` (centred).
        seed: seed of the draws.
        max_batches: evaluate only the first batches of each epoch (all when None).

    Example::

        trainer = Trainer(callbacks=[SymmetryViolation("lorentz", strengths=[0.1, 0.5])])
    """

    def __init__(
        self,
        group: str = "lorentz",
        generators: list[str] | None = None,
        strengths: Sequence[float] = (0.01, 0.1, 0.5),
        output: str = "probabilities",
        seed: int = 0,
        max_batches: int | None = None,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(
                f"output {output!r} is not available; use one of: {', '.join(OUTPUTS)}"
            )
        if not strengths or any(strength < 0 for strength in strengths):
            raise ValueError(
                f"strengths must be a non-empty list of non-negative numbers; got {list(strengths)}"
            )
        self.subgroup = Subgroup(group, generators)
        self.strengths = tuple(float(strength) for strength in strengths)
        self.output = output
        self.seed = seed
        self.max_batches = max_batches

    def metric_names(self, stage: str) -> list[str]:
        """The logged keys, in the order of :attr:`strengths`."""
        prefix = f"{stage}/symmetry_violation/{self.subgroup.label}"
        return [f"{prefix}/{strength:g}" for strength in self.strengths]

    def _evaluate(self, pl_module: pl.LightningModule, batch, batch_idx: int, stage: str) -> None:
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_idx)
        with torch.no_grad():
            values = symmetry_violation(
                pl_module,
                batch["p4"],
                batch["mask"],
                self.subgroup,
                self.strengths,
                self.output,
                generator,
            )
        batch_size = batch["p4"].shape[0]
        for name, value in zip(self.metric_names(stage), values, strict=True):
            pl_module.log(
                name, value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True
            )

    @override
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if trainer.sanity_checking:
            return
        self._evaluate(pl_module, batch, batch_idx, "val")

    @override
    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._evaluate(pl_module, batch, batch_idx, "test")


__all__ = ["SymmetryViolation", "symmetry_violation"]
