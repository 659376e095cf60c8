"""The distillation loss, the frozen teacher and teacher loading, against direct computations."""

from __future__ import annotations

import copy
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from synthetic import make_random_jets
from torch.utils.data import DataLoader

from softsymlit.models import (
    DistillationModule,
    JetClassifier,
    ParticleFlowNetwork,
    ParticleTransformer,
    distillation_loss,
    load_teacher,
    prediction_agreement,
)


def _network(width=8, depth=2, seed=0):
    torch.manual_seed(seed)
    return ParticleFlowNetwork(num_classes=2, phi_sizes=[width] * depth, f_sizes=[width])


def _batches(count=4, num_jets=16, seed=0):
    batches = []
    for i in range(count):
        p4, mask = make_random_jets(num_jets=num_jets, seed=seed + i, dtype=torch.float32)
        label = torch.randint(0, 2, (num_jets,), generator=torch.Generator().manual_seed(i))
        weight = torch.linspace(0.5, 1.5, num_jets)
        batches.append({"p4": p4, "mask": mask, "label": label, "weight": weight})
    return batches


def _loader(batches):
    return DataLoader(batches, batch_size=None)


def _hand_kd(student, teacher, temperature, weight=None):
    """``T² Σ_i w_i Σ_c p_t log(p_t / p_s) / Σ_i w_i`` with explicit loops over floats."""
    total, norm = 0.0, 0.0
    for i, (s_row, t_row) in enumerate(zip(student.tolist(), teacher.tolist(), strict=True)):
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_exp = [math.exp(v / temperature) for v in t_row]
        p_s = [v / sum(s_exp) for v in s_exp]
        p_t = [v / sum(t_exp) for v in t_exp]
        kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        w = 1.0 if weight is None else float(weight[i])
        total += w * kl
        norm += w
    return temperature**2 * total / norm


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_loss_equals_the_hand_computation(num_classes, temperature):
    generator = torch.Generator().manual_seed(num_classes)
    student = 2 * torch.randn(7, num_classes, generator=generator, dtype=torch.float64)
    teacher = 2 * torch.randn(7, num_classes, generator=generator, dtype=torch.float64)
    weight = torch.rand(7, generator=generator, dtype=torch.float64) + 0.1

    plain = distillation_loss(student, teacher, temperature)
    weighted = distillation_loss(student, teacher, temperature, weight)

    assert plain.item() == pytest.approx(_hand_kd(student, teacher, temperature), rel=1e-6)
    assert weighted.item() == pytest.approx(
        _hand_kd(student, teacher, temperature, weight), rel=1e-6
    )
    assert distillation_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_a_single_binary_logit_is_the_two_class_case_with_logits_zero_and_z():
    z_student, z_teacher = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, 0.5, -0.7])
    as_two = distillation_loss(
        torch.stack((torch.zeros(3), z_student), -1), torch.stack((torch.zeros(3), z_teacher), -1),
        2.0,
    )  # fmt: skip
    bernoulli = [
        (math.log(pt / ps) * pt + math.log((1 - pt) / (1 - ps)) * (1 - pt))
        for pt, ps in zip(
            torch.sigmoid(z_teacher / 2).tolist(), torch.sigmoid(z_student / 2), strict=True
        )
    ]
    assert distillation_loss(z_student, z_teacher, 2.0).item() == pytest.approx(as_two.item())
    assert as_two.item() == pytest.approx(4.0 * sum(bernoulli) / 3, rel=1e-5)


def test_kd_gradient_is_temperature_times_the_difference_of_the_soft_probabilities():
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    distillation_loss(student, teacher, 2.5).backward()
    expected = 2.5 * ((student / 2.5).softmax(-1) - (teacher / 2.5).softmax(-1)) / 5
    torch.testing.assert_close(student.grad, expected.detach())


def test_loss_mixes_task_and_kd_terms_with_alpha():
    batch = _batches(1)[0]
    student = DistillationModule(_network(4, seed=1), teacher=_network(8, seed=2), alpha=0.3,
                                 temperature=2.0)  # fmt: skip
    terms = student.compute_losses(batch)
    with torch.no_grad():
        teacher_logits = student.teacher(batch["p4"], batch["mask"])
    expected_kd = _hand_kd(terms.logits.detach().double(), teacher_logits.double(), 2.0,
                           batch["weight"])  # fmt: skip
    # float32 logits: the small KL loses about four digits to cancellation
    assert terms.kd_loss.item() == pytest.approx(expected_kd, rel=1e-4)
    assert terms.loss.item() == pytest.approx(0.3 * terms.task_loss.item() + 0.7 * expected_kd,
                                              rel=1e-5)  # fmt: skip
    agreement = (terms.logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
    assert terms.agreement.item() == agreement.item()
    assert student.loss_on_batch(batch).item() == terms.task_loss.item()


def test_alpha_one_trains_exactly_like_the_plain_classifier():
    batches = _batches(4)
    plain = JetClassifier(_network(6, seed=4))
    student = DistillationModule(copy.deepcopy(plain.network), teacher=_network(8, seed=5),
                                 alpha=1.0)  # fmt: skip
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (plain, student)]
    for batch in batches * 2:
        for model, optimizer in zip((plain, student), optimizers, strict=True):
            optimizer.zero_grad()
            loss = model.compute_losses(batch).loss
            loss.backward()
            optimizer.step()
        assert student.compute_losses(batch).loss.item() == plain.compute_losses(batch).loss.item()
    for (name, a), b in zip(
        plain.network.named_parameters(), student.network.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not torch.equal(plain.network.head.weight, _network(6, seed=4).head.weight)


class _TeacherWatch(pl.Callback):
    def __init__(self):
        self.modes, self.grads = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.modes.append(module.teacher.training)

    def on_after_backward(self, trainer, module):
        self.grads.append([p.grad is not None for p in module.teacher.parameters()])


def _trainer(**kwargs):
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip


def test_teacher_is_frozen_in_eval_mode_and_unchanged_after_a_student_epoch():
    torch.manual_seed(0)
    teacher = ParticleTransformer(num_classes=2, embed_dim=8, num_heads=2, num_layers=1,
                                  dropout=0.5)  # fmt: skip
    before = copy.deepcopy(teacher.state_dict())
    student = DistillationModule(_network(4, seed=6), teacher=teacher, alpha=0.2)
    student_before = copy.deepcopy(student.network.state_dict())
    watch = _TeacherWatch()
    batches = _batches(4)

    _trainer(max_epochs=1, callbacks=[watch]).fit(student, _loader(batches), _loader(_batches(2)))

    assert watch.modes == [False] * 4 and student.network.training
    assert watch.grads == [[False] * len(before)] * 4
    for name, value in student.teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not torch.equal(student.network.head.weight, student_before["head.weight"])
    optimizer = student.trainer.optimizers[0]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.network.parameters()}
    # Dropout is off: the teacher gives the same logits twice.
    first = student.teacher_logits(batches[0]["p4"], batches[0]["mask"])
    torch.testing.assert_close(first, student.teacher_logits(batches[0]["p4"], batches[0]["mask"]))


def test_validation_logs_agreement_and_kd_loss_equal_to_direct_computation():
    student = DistillationModule(_network(4, seed=7), teacher=_network(8, seed=8),
                                 temperature=2.0)  # fmt: skip
    batches = _batches(3, seed=20)
    trainer = _trainer()
    trainer.validate(student, _loader(batches), verbose=False)
    metrics = trainer.callback_metrics

    with torch.no_grad():
        pairs = [(student.network(b["p4"], b["mask"]), student.teacher(b["p4"], b["mask"]))
                 for b in batches]  # fmt: skip
    agreement = sum(prediction_agreement(s, t).item() for s, t in pairs) / 3
    kd = sum(
        distillation_loss(s, t, 2.0, b["weight"]).item()
        for (s, t), b in zip(pairs, batches, strict=True)
    )
    assert metrics["distill/val_agreement"].item() == pytest.approx(agreement, rel=1e-6)
    assert metrics["distill/val_kd_loss"].item() == pytest.approx(kd / 3, rel=1e-5)


def _checkpoint(tmp_path, network, hyper_parameters=None):
    path = tmp_path / "teacher.ckpt"
    module = JetClassifier(network)
    content = {"state_dict": module.state_dict(), "epoch": 3}
    if hyper_parameters is not None:
        content["hyper_parameters"] = hyper_parameters
    torch.save(content, path)
    return path


def test_teacher_from_a_checkpoint_reproduces_its_logits_with_weights_only_loading(tmp_path):
    network = _network(8, depth=3, seed=9)
    config = {"class_path": "softsymlit.models.ParticleFlowNetwork",
              "init_args": {"num_classes": 2, "phi_sizes": [8, 8, 8], "f_sizes": [8]}}  # fmt: skip
    path = _checkpoint(tmp_path, network, {"network": config, "_class_path": "x"})
    batch = _batches(1)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to full unpickling
        rebuilt = load_teacher(path)
    configured = DistillationModule(_network(4), teacher=_network(8, depth=3, seed=99),
                                    teacher_checkpoint=str(path))  # fmt: skip

    with torch.no_grad():
        expected = network(batch["p4"], batch["mask"])
        torch.testing.assert_close(rebuilt(batch["p4"], batch["mask"]), expected)
    torch.testing.assert_close(configured.teacher_logits(batch["p4"], batch["mask"]), expected)


def test_mismatched_teacher_checkpoint_names_the_keys(tmp_path):
    path = _checkpoint(tmp_path, _network(8, depth=3))

    with pytest.raises(ValueError) as error:
        DistillationModule(_network(4), teacher=_network(16, depth=2), teacher_checkpoint=str(path))

    message = str(error.value)
    assert str(path) in message and "ParticleFlowNetwork" in message
    assert "missing from the checkpoint" not in message
    assert "not in the configured network: phi.4.bias, phi.4.weight" in message
    assert "phi.0.weight (checkpoint (8, 7), configured (16, 7))" in message
    assert "head.weight (checkpoint (2, 8), configured (2, 16))" in message


def test_checkpoint_without_recorded_architecture_asks_for_one(tmp_path):
    path = _checkpoint(tmp_path, _network(8))
    with pytest.raises(ValueError, match="records no network architecture"):
        load_teacher(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_teacher(tmp_path / "missing.ckpt", _network(8))
