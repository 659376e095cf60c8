"""Pruning curves and the epochs-to-reach measure against direct computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from synthetic import make_random_jets

from softsymlit.models import ParticleFlowNetwork
from softsymlit.study import epochs_to_fraction, network_auc, pruned_copy, pruning_curve
from softsymlit.study.compress import prunable_weights


def _network():
    torch.manual_seed(0)
    return ParticleFlowNetwork(num_classes=2, phi_sizes=[16, 16], f_sizes=[8])


def test_pruned_copy_zeroes_the_globally_smallest_weights_and_leaves_the_original():
    network = _network()
    original = copy.deepcopy(network.state_dict())
    pruned = pruned_copy(network, 0.6)

    weights = torch.cat([m.weight.flatten() for m, _ in prunable_weights(network)]).abs()
    kept = torch.cat([m.weight.flatten() for m, _ in prunable_weights(pruned)]) != 0
    threshold = weights.sort().values[round(0.6 * weights.numel()) - 1]
    assert (~kept).sum().item() == round(0.6 * weights.numel())
    assert torch.equal(kept, weights > threshold)
    for name, value in network.state_dict().items():
        assert torch.equal(value, original[name]), name
    assert not any("weight_orig" in name for name in pruned.state_dict())
    torch.testing.assert_close(pruned.head.bias, network.head.bias)


def test_pruning_curve_equals_the_auc_of_each_pruned_copy():
    network = _network()
    batches = []
    for seed in range(3):
        p4, mask = make_random_jets(num_jets=32, seed=seed, dtype=torch.float32)
        batches.append({"p4": p4, "mask": mask, "label": (p4[:, 0, 0] > p4[:, 1, 0]).long()})
    curve = pruning_curve(network, batches, [0.0, 0.5, 0.9])

    with torch.no_grad():
        score = torch.cat([network(b["p4"], b["mask"]).softmax(-1)[:, 1] for b in batches])
    label = torch.cat([b["label"] for b in batches]).numpy().astype(bool)
    s = score.numpy()
    mann_whitney = (s[label][:, None] > s[~label][None, :]).mean()
    assert curve[0]["auc"] == pytest.approx(mann_whitney, rel=1e-5)
    assert curve[0]["retained"] == 1.0
    for point in curve[1:]:
        expected = network_auc(pruned_copy(network, point["sparsity"]), batches)
        assert point["auc"] == pytest.approx(expected)
        assert point["retained"] == pytest.approx(expected / curve[0]["auc"])
    assert len({p["auc"] for p in curve}) == 3
    assert np.isfinite([p["auc"] for p in curve]).all()


def test_epochs_to_fraction_counts_epochs_until_the_target_is_first_reached():
    history = [{"epoch": 0, "val/auc": 0.7}, {"epoch": 1, "val/auc": 0.86},
               {"epoch": 2, "val/auc": 0.84}, {"epoch": 3, "val/auc": 0.9}]  # fmt: skip
    assert epochs_to_fraction(history, 0.95 * 0.9) == 2
    assert epochs_to_fraction(history, 0.9) == 4
    assert epochs_to_fraction(history, 0.91) is None
    with pytest.raises(ValueError, match="sparsity"):
        pruned_copy(_network(), 1.0)
