"""Small modules and data for the analysis tests: they follow the analysis contract
(``loss_on_batch``, ``symmetry_loss_on_batch``, ``forward(p4, mask)``) without the classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from synthetic import make_random_jets
from torch import Tensor, nn


def jet_summary(p4: Tensor, mask: Tensor) -> Tensor:
    """Four smooth per-jet inputs: log pT, log E, log multiplicity and log mass² of the jet."""
    jet = (p4 * mask.unsqueeze(-1).to(p4.dtype)).sum(dim=1)
    pt = torch.hypot(jet[:, 1], jet[:, 2])
    mass2 = (jet[:, 0] ** 2 - (jet[:, 1:] ** 2).sum(-1)).clamp_min(1.0)
    count = mask.sum(dim=1).to(p4.dtype)
    return torch.stack((pt.log() - 5, jet[:, 0].log() - 5, count.log() - 2, mass2.log() - 8), -1)


class SummaryModel(nn.Module):
    """Logistic regression (``hidden=0``) or a tiny MLP on :func:`jet_summary`, with a smooth
    toy symmetry penalty ``mean(logit(p4) − logit(1.05 · p4))²`` when ``penalty_weight > 0``."""

    def __init__(self, hidden: int = 0, penalty_weight: float = 0.0) -> None:
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        else:
            self.net = nn.Linear(4, 2)
        self.penalty_weight = penalty_weight

    def forward(self, p4: Tensor, mask: Tensor) -> Tensor:
        return self.net(jet_summary(p4, mask))

    def symmetry_loss_on_batch(self, batch: dict[str, Tensor]) -> Tensor:
        delta = self(batch["p4"], batch["mask"]) - self(1.05 * batch["p4"], batch["mask"])
        return delta.square().mean()

    def loss_on_batch(self, batch: dict[str, Tensor], include_penalty: bool = False) -> Tensor:
        logits = self(batch["p4"], batch["mask"])
        loss = F.cross_entropy(logits, batch["label"])
        if include_penalty and self.penalty_weight:
            loss = loss + self.penalty_weight * self.symmetry_loss_on_batch(batch)
        return loss


def jet_batches(
    num_batches: int = 3,
    batch_size: int = 16,
    max_particles: int = 12,
    seed: int = 0,
    dtype=torch.float64,
) -> list[dict[str, Tensor]]:
    """Batches of synthetic jets labelled by whether their multiplicity is above the median."""
    batches = []
    for index in range(num_batches):
        p4, mask = make_random_jets(batch_size, max_particles, seed=seed + index, dtype=dtype)
        label = (mask.sum(1) > max_particles // 2).long()
        weight = torch.ones(batch_size, dtype=dtype)
        batches.append({"p4": p4, "mask": mask, "label": label, "weight": weight})
    return batches


def total_loss(module: nn.Module, batches, include_penalty: bool = False) -> Tensor:
    """``Σ_b n_b L_b / Σ_b n_b``, the analysis-set objective, evaluated directly."""
    num = sum(len(b["label"]) for b in batches)
    return sum(module.loss_on_batch(b, include_penalty) * len(b["label"]) / num for b in batches)


def dense_hessian(module: nn.Module, batches, include_penalty: bool = False) -> Tensor:
    """The ``[n, n]`` Hessian by :func:`torch.autograd.functional.hessian` over a flat θ."""
    names = [n for n, p in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def loss(flat: Tensor) -> Tensor:
        pieces, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = shape.numel()
            pieces[name] = flat[offset : offset + size].view(shape)
            offset += size
        wrapped = _Loss(module, batches, include_penalty)
        return torch.func.functional_call(
            wrapped, {f"module.{k}": v for k, v in pieces.items()}, ()
        )

    return torch.autograd.functional.hessian(loss, theta)


class _Loss(nn.Module):
    def __init__(self, module, batches, include_penalty):
        super().__init__()
        self.module = module
        self.batches = batches
        self.include_penalty = include_penalty

    def forward(self):
        return total_loss(self.module, self.batches, self.include_penalty)
