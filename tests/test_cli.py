"""The softsymlit command end to end on a real generated sample."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest


def _softsymlit(*args, cwd):
    result = subprocess.run(
        [sys.executable, "-m", "softsymlit", *args], cwd=cwd, capture_output=True, text=True,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _overrides(sample):
    return [
        f"--data.train_files={sample}/train/*.root",
        f"--data.val_files={sample}/val/*.root",
        f"--data.test_files={sample}/test/*.root",
        "--data.batch_size=128",
        "--trainer.max_epochs=4",
        "--model.scheduler.init_args.T_max=4",
    ]


def _last_metrics(path):
    rows = list(csv.DictReader(path.open()))
    merged = {}
    for row in rows:
        merged.update({k: v for k, v in row.items() if v != ""})
    return merged


@pytest.mark.slow
def test_fit_then_test_on_the_checkpoint_reaches_auc_and_writes_wandb_files(
    generated_sample, tmp_path, request
):
    config = request.config.rootpath / "configs" / "top_tagging.yaml"
    overrides = _overrides(generated_sample)
    _softsymlit("fit", f"--config={config}", *overrides, "--test_after_fit=false", cwd=tmp_path)

    run = tmp_path / "runs" / "top_tagging" / "version_0"
    assert (run / "config.yaml").exists()
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()
    wandb_runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1 and list(wandb_runs[0].glob("run-*.wandb"))

    _softsymlit("test", f"--config={config}", *overrides, f"--ckpt_path={checkpoint}",
                cwd=tmp_path)  # fmt: skip
    metrics = _last_metrics(tmp_path / "runs" / "top_tagging" / "version_1" / "metrics.csv")
    assert float(metrics["test/auc"]) > 0.85
    assert float(metrics["test/rej30"]) > 1.0


def test_print_config_resolves_dotted_overrides(request, tmp_path):
    config = request.config.rootpath / "configs" / "top_tagging.yaml"
    result = _softsymlit(
        "fit", f"--config={config}", "--trainer.max_epochs=3",
        "--model.network.init_args.phi_sizes=[8, 16]", "--print_config", cwd=tmp_path,
    )  # fmt: skip
    assert "max_epochs: 3" in result.stdout
    assert "- 8\n" in result.stdout and "- 16\n" in result.stdout
    assert "class_path: softsymlit.models.ParticleFlowNetwork" in result.stdout


def test_fit_twice_in_the_same_run_folder_keeps_the_newest_config(generated_sample, tmp_path):
    logger = tmp_path / "logger.yaml"
    logger.write_text(
        "trainer:\n"
        "  logger:\n"
        "    class_path: lightning.pytorch.loggers.CSVLogger\n"
        "    init_args: {save_dir: runs, name: same, version: 0}\n"
        "  callbacks: []\n"
        "  limit_train_batches: 1\n"
        "  limit_val_batches: 1\n"
        "  max_epochs: 1\n"
    )
    config = Path(__file__).parents[1] / "configs" / "top_tagging.yaml"
    data = _overrides(generated_sample)[:3]
    base = [f"--config={config}", f"--config={logger}", *data, "--test_after_fit=false"]
    for seed in (1, 2):
        _softsymlit("fit", *base, f"--seed_everything={seed}", cwd=tmp_path)
    saved = (tmp_path / "runs" / "same" / "version_0" / "config.yaml").read_text()
    assert "seed_everything: 2" in saved
