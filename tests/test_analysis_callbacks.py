"""The analysis callbacks in a Lightning fit: they log, plot, resume, and change nothing."""

from __future__ import annotations

import csv
import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from synthetic import make_random_jets
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from softsymlit.analysis import HessianCallback, RobustnessCallback
from softsymlit.models import JetClassifier, ParticleFlowNetwork
from softsymlit.models.features import ConstituentFeatures


class _Jets(Dataset):
    def __init__(self, num_jets: int, seed: int) -> None:
        self.p4, self.mask = make_random_jets(num_jets, 12, seed=seed, dtype=torch.float32)
        self.label = (self.mask.sum(1) > 7).long()

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"p4": self.p4[i], "mask": self.mask[i], "label": self.label[i],
                "weight": torch.tensor(1.0)}  # fmt: skip


class _DataModule(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train, self.val = _Jets(64, seed=1), _Jets(32, seed=2)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=16)


class _NoisyNetwork(nn.Module):
    """A PFN-like network with dropout and BatchNorm, so that mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = ConstituentFeatures()
        self.phi = nn.Sequential(nn.Linear(7, 8), nn.GELU(), nn.Dropout(0.3))
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Dropout(0.3), nn.Linear(8, 2))
        self.num_classes = 2

    def forward(self, p4: Tensor, mask: Tensor) -> Tensor:
        latent = (self.phi(self.features(p4, mask)) * mask[..., None]).sum(1)
        return self.head(self.norm(latent))


def _callbacks():
    hessian = HessianCallback(every_n_epochs=1, num_jets=32, batch_size=16, top_k=2,
                              max_lanczos_steps=15, trace_matvecs=6, slq_probes=1, slq_steps=6,
                              num_random_directions=2)  # fmt: skip
    robustness = RobustnessCallback(
        perturbations={"pt_smear": [0.1], "random_drop": [0.2], "lorentz": [0.1]},
        every_n_epochs=1, num_jets=32, batch_size=16,
    )  # fmt: skip
    return [hessian, robustness]


def _fit(
    tmp_path, callbacks, network_factory=lambda: ParticleFlowNetwork(phi_sizes=(8, 8), f_sizes=(8,))
):
    pl.seed_everything(0)
    model = JetClassifier(network_factory())
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, deterministic=True, logger=CSVLogger(tmp_path),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, num_sanity_val_steps=1, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(model, datamodule=_DataModule())
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    return model, trainer, rng


@pytest.mark.slow
@pytest.mark.parametrize("network", ["pfn", "noisy"])
def test_callbacks_leave_the_training_trajectory_bit_identical(tmp_path, network):
    factory = {
        "pfn": lambda: ParticleFlowNetwork(phi_sizes=(8, 8), f_sizes=(8,)),
        "noisy": _NoisyNetwork,
    }[network]
    plain, plain_trainer, plain_rng = _fit(tmp_path / "plain", [], factory)
    callbacks = _callbacks()
    observed, trainer, rng = _fit(tmp_path / "observed", callbacks, factory)

    for (name, a), (_, b) in zip(
        plain.state_dict().items(), observed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    shared = set(plain_trainer.callback_metrics)
    assert shared and shared <= set(trainer.callback_metrics)
    for key in shared:
        assert torch.equal(plain_trainer.callback_metrics[key], trainer.callback_metrics[key]), key
    assert torch.equal(plain_rng[0], rng[0])
    assert np.array_equal(plain_rng[1], rng[1]) and plain_rng[2] == rng[2]

    hessian, robustness = callbacks
    # Two epochs measured; fit end is the same step as the last epoch, so not measured again.
    assert [entry["epoch"] for entry in hessian.history] == [0, 1]
    assert len(robustness.history) == 2
    with open(f"{trainer.logger.log_dir}/metrics.csv") as handle:
        columns = next(csv.reader(handle))
    for key in (
        "hessian/lambda_1",
        "hessian/trace",
        "hessian/near_zero_count",
        "robustness/pt_smear_0.1/auc",
        "robustness/lorentz_0.1/mean_abs_delta",
    ):
        assert key in columns, key
    pictures = sorted(p.name for p in (tmp_path / "observed").rglob("*.png"))
    assert pictures == ["hessian_density_step4.png", "hessian_density_step8.png",
                        "robustness_step4.png", "robustness_step8.png"]  # fmt: skip


@pytest.mark.slow
def test_modes_flags_and_grads_are_restored_and_history_resumes(tmp_path):
    model, trainer, _ = _fit(tmp_path, [], _NoisyNetwork)
    model.train()
    model.network.norm.eval()
    frozen = model.network.head[0].weight
    frozen.requires_grad_(False)
    grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = grads[name]
    modes = {name: m.training for name, m in model.named_modules()}
    running_mean = model.network.norm.running_mean.clone()
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())

    hessian, robustness = _callbacks()
    for callback in (hessian, robustness):
        callback._run(trainer, model)

    assert modes == {name: m.training for name, m in model.named_modules()}
    assert not frozen.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if p is not frozen)
    assert all(p.grad is grads[name] for name, p in model.named_parameters())
    assert torch.equal(model.network.norm.running_mean, running_mean)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert hessian.latest["hessian/lambda_1"] >= hessian.latest["hessian/lambda_2"]
    assert hessian.latest["hessian/max_residual"] < 1e-2

    resumed = HessianCallback()
    resumed.load_state_dict(hessian.state_dict())
    assert resumed.history == hessian.history and resumed.latest == hessian.latest

    # The same set and seed give the same numbers again (in eval mode, dropout is off).
    again = RobustnessCallback(perturbations=robustness.perturbations, num_jets=32, batch_size=16)
    again._run(trainer, model)
    for key, value in robustness.latest.items():
        if key != "robustness/seconds":
            assert again.latest[key] == value, key


def test_invalid_configuration_names_the_choices():
    with pytest.raises(ValueError, match="pt_smear"):
        RobustnessCallback(perturbations={"smear_everything": [0.1]})
    with pytest.raises(ValueError, match="float32, float64"):
        HessianCallback(dtype="half")
    with pytest.raises(ValueError, match="train, val, test"):
        HessianCallback(split="validation")
