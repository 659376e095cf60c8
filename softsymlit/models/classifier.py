"""The jet-classifier LightningModule."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy
from typing_extensions import override

from softsymlit.models.metrics import BackgroundRejection
from softsymlit.symmetry.base import SymmetryPenalty

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


@dataclass
class LossTerms:
    """The pieces of the objective on one batch; ``loss = task_loss + weight · symmetry_loss``."""

    logits: Tensor
    task_loss: Tensor
    symmetry_loss: Tensor
    weight: float

    @property
    def loss(self) -> Tensor:
        if self.weight == 0.0:
            return self.task_loss
        return self.task_loss + self.weight * self.symmetry_loss


def weighted_cross_entropy(logits: Tensor, label: Tensor, weight: Tensor | None = None) -> Tensor:
    """``Σ_i w_i CE_i / Σ_i w_i`` (the plain mean when ``weight`` is None)."""
    per_jet = F.cross_entropy(logits, label, reduction="none")
    if weight is None:
        return per_jet.mean()
    return (per_jet * weight).sum() / weight.sum()


class JetClassifier(pl.LightningModule):
    """Trains a jet network with weighted cross-entropy and an optional soft-symmetry penalty.

    Batches are dicts following the data contract: ``p4 [B, N, 4]`` (E, px, py, pz) in GeV,
    ``mask [B, N]`` bool, ``label [B]`` int64 class index, ``weight [B]`` float32.
    Metrics are logged as ``{stage}/loss``, ``{stage}/task_loss``, ``{stage}/symmetry_loss``,
    ``{stage}/auc``, ``{stage}/accuracy``, ``{stage}/rej30`` and ``{stage}/rej50``, where AUC and
    rejections treat ``signal_class`` as signal and every other class as background.

    Analysis code uses :meth:`loss_on_batch`, which any module can expose to be analysed.

    Args:
        network: a module ``network(p4, mask) -> logits [B, C]``.
        symmetry: an optional soft-symmetry penalty; ``None`` trains the plain objective.
        optimizer: optimizer factory, given the parameters.
        scheduler: optional learning-rate scheduler factory, given the optimizer; stepped per
            epoch (``ReduceLROnPlateau`` monitors ``val/loss``).
        signal_class: class index counted as signal in AUC and rejection.

    Limitation: AUC, accuracy and rejections ignore the per-jet weights; the loss uses them.

    Example::

        model = JetClassifier(ParticleFlowNetwork(num_classes=2))
        trainer.fit(model, datamodule=JetDataModule(...))
    """

    def __init__(
        self,
        network: nn.Module,
        symmetry: SymmetryPenalty | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        signal_class: int = 1,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # Built from a config, the modules are recorded as their config, which is what
            # ``load_from_checkpoint`` needs; built in Python they are in the state dict anyway.
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        self.network = network
        self.symmetry = symmetry
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.signal_class = signal_class
        num_classes = int(getattr(network, "num_classes", 2))
        if not 0 <= signal_class < num_classes:
            raise ValueError(f"signal_class {signal_class} is outside 0..{num_classes - 1}")
        # ModuleDict keys must not shadow nn.Module attributes such as ``train``.
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": self._make_metrics(num_classes) for stage in STAGES}
        )

    @staticmethod
    def _make_metrics(num_classes: int) -> MetricCollection:
        return MetricCollection(
            {
                "auc": BinaryAUROC(),
                "accuracy": MulticlassAccuracy(num_classes=num_classes, average="micro"),
                "rejection": BackgroundRejection((0.3, 0.5)),
            }
        )

    @override
    def forward(self, p4: Tensor, mask: Tensor) -> Tensor:
        return self.network(p4, mask)

    def penalty_weight(self) -> float:
        """λ at the current optimisation step (0 without a penalty)."""
        if self.symmetry is None:
            return 0.0
        return float(self.symmetry.weight_at(self.global_step))

    def compute_losses(self, batch: dict[str, Tensor], with_penalty: bool = True) -> LossTerms:
        """Logits and loss terms on ``batch``; the penalty is evaluated only when its weight is
        non-zero and ``with_penalty`` is set."""
        p4, mask, label = batch["p4"], batch["mask"], batch["label"]
        weight = self.penalty_weight() if with_penalty else 0.0

        if weight == 0.0:
            logits = self.network(p4, mask)
            symmetry_loss = logits.new_zeros(())
        else:
            logits, symmetry_loss = self._with_grad_enabled(self.symmetry, p4, mask)

        task_loss = weighted_cross_entropy(logits, label, batch.get("weight"))
        return LossTerms(logits, task_loss, symmetry_loss, weight)

    def _with_grad_enabled(self, penalty: SymmetryPenalty, p4: Tensor, mask: Tensor):
        """Penalties that differentiate with respect to the input need autograd even where
        Lightning evaluates under ``inference_mode``."""
        if torch.is_grad_enabled():
            return penalty(self.network, p4, mask)
        with torch.inference_mode(False), torch.enable_grad():
            logits, value = penalty(self.network, p4.clone(), mask.clone())
        return logits.detach(), value.detach()

    def loss_on_batch(self, batch: dict[str, Tensor], include_penalty: bool = False) -> Tensor:
        """Scalar objective on ``batch``: the task loss, plus the weighted penalty if asked."""
        return self.compute_losses(batch, with_penalty=include_penalty).loss

    def symmetry_loss_on_batch(self, batch: dict[str, Tensor]) -> Tensor:
        """The unweighted penalty on ``batch``, whatever its current weight (zero without one)."""
        if self.symmetry is None:
            return batch["p4"].new_zeros(())
        return self._with_grad_enabled(self.symmetry, batch["p4"], batch["mask"])[1]

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        terms = self.compute_losses(batch)
        batch_size = batch["label"].shape[0]
        self.log(f"{stage}/loss", terms.loss, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/task_loss", terms.task_loss, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)  # fmt: skip
        self.log(f"{stage}/symmetry_loss", terms.symmetry_loss, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)  # fmt: skip
        self._update_metrics(terms.logits.detach(), batch["label"], stage)
        return terms.loss

    def _update_metrics(self, logits: Tensor, label: Tensor, stage: str) -> None:
        probabilities = logits.float().softmax(dim=-1)
        score = probabilities[:, self.signal_class]
        is_signal = (label == self.signal_class).long()
        metrics = self.metrics[f"{stage}_metrics"]
        metrics["auc"].update(score, is_signal)
        metrics["rejection"].update(score, is_signal)
        metrics["accuracy"].update(probabilities, label)

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = self.metrics[f"{stage}_metrics"]
        if not metrics["auc"].update_called:
            return
        rej30, rej50 = metrics["rejection"].compute()
        self.log(f"{stage}/auc", metrics["auc"].compute())
        self.log(f"{stage}/accuracy", metrics["accuracy"].compute())
        self.log(f"{stage}/rej30", rej30)
        self.log(f"{stage}/rej50", rej50)
        metrics.reset()

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        logits = self.network(batch["p4"], batch["mask"])
        return {"logits": logits, "probabilities": logits.softmax(dim=-1), "label": batch["label"]}

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def optimized_parameters(self):
        """The parameters the optimizer updates (all of them here)."""
        return self.parameters()

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.optimized_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}
