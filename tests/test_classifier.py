"""Loss and tagging metrics of the classifier against direct computations."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from synthetic import make_random_jets

from softsymlit.models import (
    BackgroundRejection,
    JetClassifier,
    ParticleFlowNetwork,
    weighted_cross_entropy,
)


def _numpy_rejection(score, is_signal, efficiency):
    order = np.argsort(-score)
    hits = is_signal[order]
    tpr = np.concatenate(([0.0], np.cumsum(hits) / hits.sum()))
    fpr = np.concatenate(([0.0], np.cumsum(1 - hits) / (1 - hits).sum()))
    return 1.0 / np.interp(efficiency, tpr, fpr)


def test_background_rejection_equals_the_roc_curve_computed_in_numpy():
    rng = np.random.default_rng(0)
    is_signal = rng.integers(0, 2, 4000)
    score = rng.normal(size=4000) + 1.2 * is_signal
    metric = BackgroundRejection((0.3, 0.5))
    metric.update(torch.from_numpy(score), torch.from_numpy(is_signal))
    rejection = metric.compute().numpy()
    expected = [_numpy_rejection(score, is_signal, e) for e in (0.3, 0.5)]
    np.testing.assert_allclose(rejection, expected, rtol=1e-6)


def test_weighted_cross_entropy_equals_the_hand_computation():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]])
    label = torch.tensor([0, 1, 0])
    weight = torch.tensor([1.0, 2.0, 0.5])
    per_jet = -F.log_softmax(logits, dim=-1)[torch.arange(3), label]
    expected = (per_jet * weight).sum() / weight.sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, label, weight), expected)
    torch.testing.assert_close(weighted_cross_entropy(logits, label), per_jet.mean())


def test_auc_and_accuracy_equal_direct_computations():
    torch.manual_seed(1)
    model = JetClassifier(ParticleFlowNetwork(num_classes=2))
    p4, mask = make_random_jets(num_jets=64, seed=5, dtype=torch.float32)
    label = torch.randint(0, 2, (64,))
    with torch.no_grad():
        logits = model(p4, mask)
    model._update_metrics(logits, label, "val")
    metrics = model.metrics["val_metrics"]

    score = logits.softmax(-1)[:, 1].numpy()
    signal, background = score[label.numpy() == 1], score[label.numpy() == 0]
    mann_whitney = (signal[:, None] > background[None, :]).mean()
    np.testing.assert_allclose(metrics["auc"].compute().item(), mann_whitney, rtol=1e-5)
    accuracy = (logits.argmax(-1) == label).float().mean().item()
    np.testing.assert_allclose(metrics["accuracy"].compute().item(), accuracy, rtol=1e-6)
