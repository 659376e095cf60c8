"""Compressibility measures: distillation efficiency, epochs to reach the teacher, and pruning
curves."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import prune
from torchmetrics.classification import BinaryAUROC

log = logging.getLogger(__name__)

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""Layers whose ``weight`` global magnitude pruning acts on; biases and norms are kept."""


@torch.inference_mode()
def network_auc(network: nn.Module, batches: Iterable[dict[str, Tensor]], signal_class: int = 1):
    """AUC of ``network`` on ``batches``, with the softmax probability of ``signal_class`` as the
    score and every other class as background.

    Args:
        network: ``network(p4, mask) -> logits [B, C]``.
        batches: batches of the data contract; they are moved to the network's device.
        signal_class: class index counted as signal.

    Returns:
        The AUC as a float.
    """
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    metric = BinaryAUROC().to(device)
    for batch in batches:
        logits = network(batch["p4"].to(device), batch["mask"].to(device))
        score = logits.float().softmax(dim=-1)[:, signal_class]
        metric.update(score, (batch["label"].to(device) == signal_class).long())
    network.train(was_training)
    return float(metric.compute())


def prunable_weights(network: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` of every linear and convolutional layer of ``network``."""
    return [(module, "weight") for module in network.modules() if isinstance(module, PRUNABLE)]


def pruned_copy(network: nn.Module, sparsity: float) -> nn.Module:
    """A copy of ``network`` with the fraction ``sparsity`` of its prunable weights, smallest in
    magnitude over all layers together, set to zero. ``network`` itself is not touched."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    pruned = copy.deepcopy(network)
    if sparsity > 0.0:
        parameters = prunable_weights(pruned)
        if not parameters:
            raise ValueError(f"{type(network).__name__} has no linear or convolutional layer")
        prune.global_unstructured(parameters, prune.L1Unstructured, amount=sparsity)
        for module, name in parameters:
            prune.remove(module, name)
    return pruned


def pruning_curve(
    network: nn.Module,
    batches: Sequence[dict[str, Tensor]],
    sparsities: Sequence[float] = (0.0, 0.5, 0.8, 0.9, 0.95),
    signal_class: int = 1,
) -> list[dict[str, float]]:
    """AUC after global magnitude pruning (``torch.nn.utils.prune.global_unstructured`` with
    ``L1Unstructured``) of a fresh copy of ``network`` at each sparsity.

    Args:
        network: the network to measure; it is copied, never pruned itself.
        batches: the evaluation batches.
        sparsities: fractions of the prunable weights removed, each in ``[0, 1)``.
        signal_class: class index counted as signal.

    Returns:
        One ``{"sparsity", "auc", "retained"}`` per sparsity, ``retained`` being the AUC over the
        unpruned network's AUC.
    """
    reference = network_auc(network, batches, signal_class)
    curve = []
    for sparsity in sparsities:
        auc = network_auc(pruned_copy(network, sparsity), batches, signal_class)
        curve.append({"sparsity": float(sparsity), "auc": auc, "retained": auc / reference})
        log.info("pruned %.0f%% of the weights: AUC %.4f", 100 * sparsity, auc)
    return curve


def epochs_to_fraction(
    history: Sequence[dict[str, float]], target: float, metric: str = "val/auc"
) -> int | None:
    """Epochs trained until ``metric`` first reaches ``target`` (1 when reached after the first
    epoch), or ``None`` when it never does.

    Args:
        history: one entry per validation, each with ``epoch`` (0-based) and ``metric``.
        target: the value to reach, e.g. 0.95 × the teacher's AUC.
        metric: the recorded metric.
    """
    for entry in history:
        if metric in entry and entry[metric] >= target:
            return int(entry["epoch"]) + 1
    return None


def plot_compressibility(summary: dict, path: str | Path) -> Path:
    """Distillation efficiency against student size and the teachers' pruning curves, side by
    side, as a PNG.

    Args:
        summary: the chain summary (see :func:`softsymlit.study.run_chain`).
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, teacher in summary["teachers"].items():
        students = sorted(teacher["students"].values(), key=lambda s: s["num_parameters"])
        if students:
            sizes = [s["num_parameters"] for s in students]
            efficiency = [s["efficiency"] for s in students]
            left.plot(sizes, efficiency, marker="o", label=name)
        curve = teacher.get("pruning") or []
        if curve:
            right.plot([p["sparsity"] for p in curve], [p["auc"] for p in curve], marker="o",
                       label=name)  # fmt: skip
    left.set(xscale="log", xlabel="student parameters", ylabel="student AUC / teacher AUC",
             title="distillation efficiency")  # fmt: skip
    right.set(xlabel="fraction of weights pruned", ylabel="teacher AUC",
              title="global magnitude pruning")  # fmt: skip
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


__all__ = [
    "epochs_to_fraction",
    "network_auc",
    "plot_compressibility",
    "prunable_weights",
    "pruned_copy",
    "pruning_curve",
]
