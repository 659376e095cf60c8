"""Knowledge distillation: a student classifier trained on a frozen teacher's soft targets."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from softsymlit.models.classifier import JetClassifier, LossTerms
from softsymlit.symmetry.base import SymmetryPenalty

log = logging.getLogger(__name__)

NETWORK_PREFIX = "network."
"""Prefix of the network's entries in a :class:`JetClassifier` state dict."""


def _as_class_logits(logits: Tensor) -> Tensor:
    """``[B, C]`` logits; a single binary logit ``z`` (``[B]`` or ``[B, 1]``) becomes ``[0, z]``."""
    if logits.dim() == 1:
        logits = logits.unsqueeze(-1)
    if logits.shape[-1] == 1:
        logits = torch.cat((torch.zeros_like(logits), logits), dim=-1)
    return logits


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """``T² · KL(softmax(t / T) ‖ softmax(s / T))`` per jet, averaged over jets.

    The ``T²`` factor keeps the gradient of the soft term on the scale of the hard cross-entropy
    as ``T`` grows (Hinton et al., 2015). The average is weighted like
    :func:`~softsymlit.models.weighted_cross_entropy`: ``Σ_i w_i KL_i / Σ_i w_i``.

    Args:
        student_logits: ``[B, C]`` student logits (or a single binary logit ``[B]``/``[B, 1]``).
        teacher_logits: teacher logits of the same shape; no gradient flows into them.
        temperature: softening temperature ``T > 0``.
        weight: optional per-jet weights ``[B]``.

    Returns:
        A scalar tensor.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    student = _as_class_logits(student_logits).float() / temperature
    teacher = _as_class_logits(teacher_logits).detach().float() / temperature
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
            "differ in shape; student and teacher need the same classes"
        )
    teacher_log_p = F.log_softmax(teacher, dim=-1)
    per_jet = (teacher_log_p.exp() * (teacher_log_p - F.log_softmax(student, dim=-1))).sum(-1)
    if weight is None:
        mean = per_jet.mean()
    else:
        mean = (per_jet * weight).sum() / weight.sum()
    return temperature**2 * mean.to(student_logits.dtype)


def prediction_agreement(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Fraction of jets whose most probable class is the same for student and teacher."""
    student = _as_class_logits(student_logits).argmax(dim=-1)
    teacher = _as_class_logits(teacher_logits).argmax(dim=-1)
    return (student == teacher).float().mean()


@dataclass
class DistillationTerms(LossTerms):
    """Loss terms of a student: ``loss = α · task + (1 − α) · kd + weight · symmetry``.

    With ``alpha == 1`` the loss is the plain classifier's, bit for bit.
    """

    kd_loss: Tensor | None = None
    agreement: Tensor | None = None
    alpha: float = 1.0

    @property
    def loss(self) -> Tensor:
        if self.alpha == 1.0 or self.kd_loss is None:
            return super().loss
        loss = self.alpha * self.task_loss + (1.0 - self.alpha) * self.kd_loss
        if self.weight == 0.0:
            return loss
        return loss + self.weight * self.symmetry_loss


def _describe_mismatch(expected: dict[str, Tensor], found: dict[str, Tensor]) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{key} (checkpoint {tuple(found[key].shape)}, configured {tuple(expected[key].shape)})"
        for key in sorted(set(expected) & set(found))
        if found[key].shape != expected[key].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        parts.append(f"not in the configured network: {', '.join(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {', '.join(shapes)}")
    return "; ".join(parts)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, unpickled with ``weights_only=True`` unless it holds Python
    objects beyond tensors and plain containers (a model built in Python records its modules)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        rank_zero_warn(
            f"teacher checkpoint {path} holds Python objects that weights_only loading refuses "
            f"({str(error).splitlines()[0]}); loading it with full unpickling. Use only "
            "checkpoints you trust."
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def _network_from_config(config: Any, path: Path) -> nn.Module:
    if isinstance(config, nn.Module):
        return config
    if not (isinstance(config, dict) and "class_path" in config):
        raise ValueError(
            f"teacher checkpoint {path} records no network architecture (hyper_parameters"
            f"['network'] is {type(config).__name__}); configure the teacher network explicitly"
        )
    return instantiate_from_config("network", config, nn.Module)


def instantiate_from_config(key: str, config: dict[str, Any], base: type) -> Any:
    """The object a ``class_path``/``init_args`` mapping describes, built by jsonargparse as
    LightningCLI builds it, checked to be a ``base``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument(f"--{key}", type=base)
    namespace = parser.parse_object({key: config})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return getattr(instantiate(namespace), key)


def load_teacher(checkpoint: str | Path, network: nn.Module | None = None) -> nn.Module:
    """A teacher network with the weights of ``checkpoint``.

    Args:
        checkpoint: a Lightning checkpoint of a :class:`JetClassifier` (its ``network.*``
            entries are used) or a plain state dict of the network.
        network: the teacher architecture; ``None`` rebuilds it from the checkpoint's recorded
            hyperparameters (a checkpoint written by ``softsymlit fit``).

    Returns:
        ``network`` (or the rebuilt one) with the checkpoint's weights, on CPU.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the checkpoint's entries do not match the network; the message names the
            missing, unexpected and differently shaped keys.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist")
    contents = _read_checkpoint(path)
    state = contents.get("state_dict", contents)
    if any(key.startswith(NETWORK_PREFIX) for key in state):
        state = {
            k[len(NETWORK_PREFIX) :]: v for k, v in state.items() if k.startswith(NETWORK_PREFIX)
        }

    if network is None:
        network = _network_from_config(contents.get("hyper_parameters", {}).get("network"), path)
    expected = network.state_dict()
    mismatch = _describe_mismatch(expected, state)
    if mismatch:
        raise ValueError(
            f"teacher checkpoint {path} does not match the configured teacher "
            f"{type(network).__name__}: {mismatch}"
        )
    network.load_state_dict(state)
    return network


class DistillationModule(JetClassifier):
    """A student :class:`JetClassifier` trained on a frozen teacher's soft targets.

    The objective on a batch is ``α · CE(student, label) + (1 − α) · T² · KL(teacher_T ‖
    student_T) + λ · symmetry(student)``, with ``softmax(logits / T)`` the softened class
    probabilities and the teacher evaluated on the same batch. ``α = 1`` is the plain classifier
    exactly (the teacher is still run, for the logged agreement). Besides the classifier's
    metrics it logs ``distill/kd_loss`` and ``distill/agreement`` (fraction of jets where the
    student's and the teacher's most probable class agree) on training batches, and
    ``distill/{stage}_kd_loss`` and ``distill/{stage}_agreement`` for validation and test.

    The teacher is a submodule, so Lightning moves and casts it with the student (device,
    precision plugin, strategy), but it is frozen: ``requires_grad`` off, always in eval mode,
    evaluated under ``torch.inference_mode()`` and left out of the optimizer. It is saved in the
    student's checkpoints, which are therefore self-contained.

    :meth:`loss_on_batch` stays the student's own task objective (plus penalty if asked), so
    curvature and robustness analyses measure a student like any classifier.

    Args:
        network: the student network ``network(p4, mask) -> logits [B, C]``.
        teacher: the teacher network (or a trained :class:`JetClassifier`, whose network is
            used). With ``teacher_checkpoint`` it is the architecture the weights are loaded
            into; without, it must already be trained.
        teacher_checkpoint: checkpoint of the teacher; with ``teacher`` unset the architecture is
            rebuilt from the checkpoint's recorded hyperparameters.
        alpha: weight ``α`` of the hard-label loss, in ``[0, 1]``.
        temperature: softening temperature ``T > 0``.
        symmetry: an optional soft-symmetry penalty on the student.
        optimizer: optimizer factory, given the student's parameters.
        scheduler: optional learning-rate scheduler factory.
        signal_class: class index counted as signal in AUC and rejection.

    Limitation: student and teacher must share the class layout; there is no mapping of
        teacher classes onto student classes.

    Example::

        student = DistillationModule(
            ParticleFlowNetwork(phi_sizes=(16, 16), f_sizes=(16,)),
            teacher_checkpoint="runs/distill/teacher/checkpoints/last.ckpt",
            alpha=0.1,
            temperature=4.0,
        )
    """

    def __init__(
        self,
        network: nn.Module,
        teacher: nn.Module | None = None,
        teacher_checkpoint: str | None = None,
        alpha: float = 0.5,
        temperature: float = 4.0,
        symmetry: SymmetryPenalty | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        signal_class: int = 1,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if teacher is None and teacher_checkpoint is None:
            raise ValueError("a student needs a teacher: set teacher, teacher_checkpoint or both")
        super().__init__(network, symmetry, optimizer, scheduler, signal_class)
        self.alpha = float(alpha)
        self.temperature = float(temperature)

        if isinstance(teacher, JetClassifier):
            teacher = teacher.network
        if teacher_checkpoint is not None:
            teacher = load_teacher(teacher_checkpoint, teacher)
        self.teacher = self._frozen(teacher)
        self._check_classes()

    @staticmethod
    def _frozen(teacher: nn.Module) -> nn.Module:
        teacher.eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        return teacher

    def _check_classes(self) -> None:
        student = getattr(self.network, "num_classes", None)
        teacher = getattr(self.teacher, "num_classes", None)
        if student is not None and teacher is not None and student != teacher:
            raise ValueError(
                f"the student has {student} classes and the teacher {teacher}; they must agree"
            )

    @override
    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self.teacher.eval()
        return self

    def student_parameters(self):
        """The trainable parameters: the student network's and the penalty's, never the
        teacher's."""
        teacher = {id(p) for p in self.teacher.parameters()}
        return (p for p in self.parameters() if id(p) not in teacher)

    def teacher_logits(self, p4: Tensor, mask: Tensor) -> Tensor:
        """Teacher logits ``[B, C]`` on the batch, without autograd history."""
        with torch.inference_mode():
            logits = self.teacher(p4, mask)
        # Inference tensors cannot take part in the student's backward; a copy made outside
        # inference mode can (it is a [B, C] tensor, so the copy costs nothing).
        return logits.clone()

    @override
    def compute_losses(self, batch: dict[str, Tensor], with_penalty: bool = True) -> LossTerms:
        """Student logits and loss terms on ``batch``, the distillation term included."""
        plain = super().compute_losses(batch, with_penalty)
        teacher = self.teacher_logits(batch["p4"], batch["mask"])
        kd_loss = distillation_loss(plain.logits, teacher, self.temperature, batch.get("weight"))
        agreement = prediction_agreement(plain.logits.detach(), teacher)
        return DistillationTerms(
            plain.logits, plain.task_loss, plain.symmetry_loss, plain.weight,
            kd_loss=kd_loss, agreement=agreement, alpha=self.alpha,
        )  # fmt: skip

    @override
    def loss_on_batch(self, batch: dict[str, Tensor], include_penalty: bool = False) -> Tensor:
        """The student's own objective on ``batch`` (task loss, plus the weighted penalty if
        asked), without the distillation term."""
        return JetClassifier.compute_losses(self, batch, with_penalty=include_penalty).loss

    @override
    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        terms = self.compute_losses(batch)
        batch_size = batch["label"].shape[0]
        self.log(f"{stage}/loss", terms.loss, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/task_loss", terms.task_loss, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)  # fmt: skip
        self.log(f"{stage}/symmetry_loss", terms.symmetry_loss, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)  # fmt: skip
        prefix = "distill/" if stage == "train" else f"distill/{stage}_"
        for name in ("kd_loss", "agreement"):
            self.log(f"{prefix}{name}", getattr(terms, name), on_epoch=True,
                     batch_size=batch_size, sync_dist=True)  # fmt: skip
        self._update_metrics(terms.logits.detach(), batch["label"], stage)
        return terms.loss

    @override
    def optimized_parameters(self):
        return self.student_parameters()


__all__ = [
    "DistillationModule",
    "DistillationTerms",
    "distillation_loss",
    "load_teacher",
    "prediction_agreement",
]
