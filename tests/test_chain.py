"""Teacher → student chains end to end on a real generated sample: completion, skipping,
resuming after SIGKILL, and DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule

from softsymlit.models import load_teacher
from softsymlit.models.distillation import instantiate_from_config
from softsymlit.study import Chain, ChainConfig, network_auc, run_chain

pytestmark = pytest.mark.slow


def _network(width, depth=2):
    sizes = {"num_classes": 2, "phi_sizes": [width] * depth, "f_sizes": [width]}
    return {"class_path": "softsymlit.models.ParticleFlowNetwork", "init_args": sizes}


def _config(sample, root, wandb=False, **trainer):
    return {
        "name": "tiny",
        "root_dir": str(root),
        "seed": 5,
        "wandb": wandb,
        "pruning_sparsities": [0.0, 0.5, 0.9],
        "evaluation_jets": 256,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "deterministic": True,
            "limit_train_batches": 5,
            "limit_val_batches": 2,
            "limit_test_batches": 2,
            "log_every_n_steps": 1,
            **trainer,
        },  # fmt: skip
        "data": {
            "class_path": "softsymlit.data.JetDataModule",
            "init_args": {
                "train_files": f"{sample}/train/*.root",
                "val_files": f"{sample}/val/*.root",
                "test_files": f"{sample}/test/*.root",
                "batch_size": 64,
                "max_particles": 64,
                "shuffle_buffer": 256,
                "seed": 3,
            },
        },  # fmt: skip
        "teachers": [
            {
                "name": "teacher",
                "model": {
                    "class_path": "softsymlit.models.JetClassifier",
                    "init_args": {"network": _network(16)},
                },
            }
        ],
        "students": [
            {"name": "w4", "network": _network(4)},
            {"name": "w8", "network": _network(8, depth=3)},
        ],  # fmt: skip
        "distillation": {"alpha": 0.5, "temperature": 2.0},
    }


def _launches(stage):
    lines = (stage.directory / "launches.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _student_weights(stage):
    state = torch.load(stage.last_checkpoint, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("network.")}


@pytest.fixture(scope="module")
def finished_chain(generated_sample, tmp_path_factory):
    """The uninterrupted chain: a teacher and two students, logged to offline W&B."""
    root = tmp_path_factory.mktemp("chain")
    config = _config(generated_sample, root, wandb=True)
    summary = run_chain(config)
    return Chain(ChainConfig.from_dict(config)), summary


def test_chain_runs_teacher_then_students_with_summary_equal_to_the_stage_records(
    finished_chain, generated_sample
):
    chain, summary = finished_chain
    assert [s.name for s in chain.stages] == ["teacher", "teacher.w4", "teacher.w8"]
    for stage in chain.stages:
        assert [line["stage"] for line in _launches(stage)] == ["fit", "test"]
        assert len(json.loads(stage.result_path.read_text())["history"]) == 2

    teacher = summary["teachers"]["teacher"]
    teacher_result = json.loads(chain.stages[0].result_path.read_text())
    assert teacher["test_auc"] == teacher_result["test"]["test/auc"] > 0.6
    assert teacher["val_auc"] == teacher_result["history"][-1]["val/auc"]
    for stage in chain.stages[1:]:
        student = teacher["students"][stage.student]
        result = json.loads(stage.result_path.read_text())
        assert student["test_auc"] == result["test"]["test/auc"]
        assert student["efficiency"] == pytest.approx(student["test_auc"] / teacher["test_auc"])
        aucs = [entry["val/auc"] for entry in result["history"]]
        reached = [i + 1 for i, auc in enumerate(aucs) if auc >= 0.95 * teacher["val_auc"]]
        assert student["epochs_to_target"] == (reached[0] if reached else None)
        # The student learnt from the teacher's final weights, kept frozen.
        state = torch.load(stage.last_checkpoint, weights_only=True)["state_dict"]
        final = torch.load(chain.stages[0].last_checkpoint, weights_only=True)["state_dict"]
        for key, value in final.items():
            if key.startswith("network."):
                assert torch.equal(state["teacher." + key[len("network.") :]], value), key
    # phi 7→4→4, f 4→4, head 4→2, with biases
    assert teacher["students"]["w4"]["num_parameters"] == (7 * 4 + 4) + 2 * (4 * 4 + 4) + 4 * 2 + 2

    network = load_teacher(chain.stages[0].last_checkpoint, instantiate_from_config(
        "network", _network(16), torch.nn.Module))  # fmt: skip
    data = instantiate_from_config("data", chain.config.data, LightningDataModule)
    auc = network_auc(network, data.analysis_batches("val", 256))
    assert teacher["pruning"][0]["auc"] == pytest.approx(auc, rel=1e-6)
    assert (
        summary["metrics"]["compress/teacher/w8/efficiency"]
        == teacher["students"]["w8"]["efficiency"]
    )
    assert (chain.directory / "compressibility.png").stat().st_size > 10_000
    assert json.loads((chain.directory / "chain_summary.json").read_text()) == summary

    for stage in chain.stages:
        runs = list((stage.directory / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1 and chain.group.encode() in runs[0].read_bytes()


def test_rerunning_a_finished_chain_skips_every_stage(finished_chain):
    chain, summary = finished_chain
    before = {s.name: (s.result_path.stat().st_mtime_ns, len(_launches(s))) for s in chain.stages}

    again = Chain(chain.config).run()

    after = {s.name: (s.result_path.stat().st_mtime_ns, len(_launches(s))) for s in chain.stages}
    assert after == before
    assert again["teachers"]["teacher"]["students"] == summary["teachers"]["teacher"]["students"]


def _distill_cli(config_path, cwd):
    tests = str(Path(__file__).parent)
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-m", "softsymlit", "distill", f"--config={config_path}"], cwd=cwd,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def test_chain_killed_during_the_second_stage_resumes_to_the_same_result(
    finished_chain, generated_sample, tmp_path
):
    reference, summary = finished_chain
    config = _config(generated_sample, tmp_path / "runs")
    # The pause after the first epoch of the second stage leaves time to kill it there.
    pause = {"class_path": "chain_helpers.PauseAfterFirstEpoch", "init_args": {"seconds": 3.0}}
    config["students"][0]["trainer"] = {"callbacks": [pause]}
    config_path = tmp_path / "distill.yaml"
    config_path.write_text(yaml.safe_dump(config))
    chain = Chain(ChainConfig.from_dict(config))
    second = chain.stages[1]

    process = _distill_cli(config_path, tmp_path)
    deadline = time.monotonic() + 240
    while not second.last_checkpoint.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the second stage never wrote a checkpoint"
        time.sleep(0.02)
    time.sleep(0.5)  # let the checkpoint file be completed
    os.killpg(process.pid, signal.SIGKILL)  # the chain and its running stage
    process.wait()
    assert chain.stages[0].result_path.exists() and not second.result_path.exists()
    epochs_done = torch.load(second.last_checkpoint, weights_only=True)["epoch"]
    assert epochs_done == 0

    rerun = _distill_cli(config_path, tmp_path)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()[-3000:]

    resumed = json.loads(second.result_path.read_text())
    assert resumed["resumed"] is True
    assert [line["stage"] for line in _launches(second)] == ["fit", "fit", "test"]
    assert [line["stage"] for line in _launches(chain.stages[0])] == ["fit", "test"]
    result = json.loads((chain.directory / "chain_summary.json").read_text())
    for name, student in result["teachers"]["teacher"]["students"].items():
        expected = summary["teachers"]["teacher"]["students"][name]
        assert student["history"] == expected["history"]
        assert student["test_auc"] == expected["test_auc"]
    assert result["metrics"] == summary["metrics"]
    for mine, theirs in zip(chain.stages, reference.stages, strict=True):
        weights, expected = _student_weights(mine), _student_weights(theirs)
        assert all(torch.equal(weights[k], expected[k]) for k in expected), mine.name


@pytest.mark.ddp
def test_two_process_gloo_ddp_chain_runs_each_stage_once(generated_sample, tmp_path):
    config = _config(generated_sample, tmp_path / "runs", strategy="ddp", devices=2,
                     limit_train_batches=3)  # fmt: skip
    config["students"] = config["students"][:1]
    config["pruning_sparsities"] = [0.0, 0.5]

    summary = run_chain(config)

    chain = Chain(ChainConfig.from_dict(config))
    for stage in chain.stages:
        fits = [line for line in _launches(stage) if line["stage"] == "fit"]
        assert sorted(line["global_rank"] for line in fits) == [0, 1]
        assert {line["world_size"] for line in fits} == {2}
        assert len({line["pid"] for line in fits}) == 2
        result = json.loads(stage.result_path.read_text())
        assert [entry["epoch"] for entry in result["history"]] == [0, 1]
        assert result["resumed"] is False
    student = summary["teachers"]["teacher"]["students"]["w4"]
    assert (
        student["test_auc"]
        == json.loads(chain.stages[1].result_path.read_text())["test"]["test/auc"]
    )
    assert Path(student["checkpoint"]).is_file()
