"""The symmetry-violation metric and its validation callback."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from symmetry_helpers import jet_mass, small_network
from synthetic import make_random_jets
from torch.utils.data import DataLoader

from softsymlit.models import JetClassifier
from softsymlit.symmetry import Subgroup, SymmetryViolation, symmetry_violation


def _rows(num_jets: int, seed: int) -> list[dict[str, torch.Tensor]]:
    p4, mask = make_random_jets(num_jets=num_jets, max_particles=10, seed=seed, dtype=torch.float32)
    label = (jet_mass(p4, mask) > jet_mass(p4, mask).median()).long()
    return [
        {"p4": p4[i], "mask": mask[i], "label": label[i], "weight": torch.tensor(1.0)}
        for i in range(num_jets)
    ]


def test_violation_is_zero_for_an_invariant_function_and_closed_form_for_jet_px(random_jets):
    p4, mask = random_jets
    subgroup = Subgroup("so2_z")
    generator = torch.Generator().manual_seed(0)

    invariant = symmetry_violation(jet_mass, p4, mask, subgroup, [0.1, 1.0], "logits", generator)

    def jet_px(p, m):
        return (p[..., 1] * m).sum(dim=1)

    generator = torch.Generator().manual_seed(1)
    values = symmetry_violation(jet_px, p4, mask, subgroup, [0.3], "logits", generator)
    angles = (
        0.3
        * (
            2
            * torch.rand(
                p4.shape[0], 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
            )
            - 1
        )[:, 0]
    )
    jet = (p4 * mask.unsqueeze(-1)).sum(dim=1)
    change = (torch.cos(angles) - 1) * jet[:, 1] - torch.sin(angles) * jet[:, 2]

    assert invariant.abs().max() < 1e-12
    torch.testing.assert_close(values, change.abs().mean().reshape(1))


def test_violation_grows_with_strength_for_a_network():
    torch.manual_seed(0)
    network = small_network("pfn").double()
    p4, mask = make_random_jets(num_jets=32, max_particles=10, seed=2)
    values = symmetry_violation(network, p4, mask, Subgroup("lorentz"), [0.0, 0.01, 0.5])

    assert values[0].item() == 0.0
    assert 0 < values[1] < values[2]


def test_callback_logs_the_metric_without_changing_the_trajectory(tmp_path):
    callback = SymmetryViolation(group="so3", strengths=[0.05, 0.5], seed=3)
    models, logged = [], []
    for callbacks in ([], [callback]):
        pl.seed_everything(0, verbose=False)
        model = JetClassifier(small_network("pfn"))
        trainer = pl.Trainer(
            max_epochs=2,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
            default_root_dir=tmp_path,
        )
        train = DataLoader(_rows(24, seed=4), batch_size=8, shuffle=True)
        val = DataLoader(_rows(16, seed=5), batch_size=8)
        trainer.fit(model, train, val)
        models.append(model)
        logged.append(dict(trainer.callback_metrics))

    names = callback.metric_names("val")
    assert names == ["val/symmetry_violation/so3/0.05", "val/symmetry_violation/so3/0.5"]
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)

    # The logged epoch value is the jet-weighted mean over validation batches.
    val_rows = _rows(16, seed=5)
    expected = []
    for batch_idx in range(2):
        rows = val_rows[8 * batch_idx : 8 * (batch_idx + 1)]
        p4 = torch.stack([row["p4"] for row in rows])
        mask = torch.stack([row["mask"] for row in rows])
        generator = torch.Generator().manual_seed(3 * 1_000_003 + batch_idx)
        with torch.no_grad():
            expected.append(
                symmetry_violation(
                    models[1], p4, mask, callback.subgroup, callback.strengths, generator=generator
                )
            )
    expected = torch.stack(expected).mean(dim=0)
    for name, value in zip(names, expected, strict=True):
        assert logged[1][name].item() == pytest.approx(value.item(), rel=1e-5)
    assert names[0] not in logged[0]


def test_callback_rejects_bad_arguments():
    with pytest.raises(ValueError, match="output 'scores' is not available"):
        SymmetryViolation(output="scores")
    with pytest.raises(ValueError, match="non-negative"):
        SymmetryViolation(strengths=[-1.0])
    assert math.isclose(SymmetryViolation().strengths[-1], 0.5)
