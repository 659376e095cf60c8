"""λ-scan studies end to end: plan → run → report on a tiny grid, killing and resuming a study,
a failing run in the report."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import rankdata

from softsymlit.study.grid import StudyConfig, StudyPlanner
from softsymlit.study.scan_report import read_metrics_csv

REPO = Path(__file__).resolve().parents[1]
TINY_PFN = {"class_path": "softsymlit.models.ParticleFlowNetwork",
            "init_args": {"num_classes": 2, "phi_sizes": [8, 8], "f_sizes": [8]}}  # fmt: skip


def _study(tmp: Path, sample: Path, name: str, **overrides) -> Path:
    """A tiny study config on the session sample, written to ``tmp/<name>.yaml``."""
    files = {f"{split}_files": str(sample / split / "*.root") for split in ("train", "val", "test")}
    content = {
        "name": name,
        "root_dir": str(tmp / "runs"),
        "cache_dir": str(tmp / "cache"),
        "jobs": 2,
        "threads_per_job": 1,
        "wandb": False,
        "weights": [0.0, 1.0],
        "seeds": [0],
        "architectures": {"pfn": TINY_PFN},
        "base_config": str(REPO / "configs" / "top_tagging.yaml"),
        "teacher": {
            "trainer": {
                "accelerator": "cpu",
                "max_epochs": 1,
                "limit_train_batches": 3,
                "limit_val_batches": 2,
                "log_every_n_steps": 1,
            },
            "data": {"init_args": {**files, "batch_size": 64, "max_particles": 32}},
        },  # fmt: skip
        "hessian": None,
        "robustness": None,
        "violation": None,
        "bootstrap_resamples": 200,
    }
    content.update(overrides)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _softsymlit(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "softsymlit", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, **kwargs)  # fmt: skip


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as file:
        return {row["run_id"]: row for row in csv.DictReader(file)}


def _auc(score: np.ndarray, is_signal: np.ndarray) -> float:
    """The Mann–Whitney form of the AUC, ties counted half."""
    ranks = rankdata(score)
    signal_count, background_count = is_signal.sum(), (~is_signal).sum()
    rank_sum = ranks[is_signal].sum()
    return float((rank_sum - signal_count * (signal_count + 1) / 2)
                 / (signal_count * background_count))  # fmt: skip


def _checkpoint_auc(checkpoint: Path, files: str) -> float:
    """AUC of a checkpoint on ``files``, recomputed here from the network's outputs."""
    from softsymlit.data import JetDataModule
    from softsymlit.models import JetClassifier

    model = JetClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = JetDataModule(test_files=files, batch_size=256, max_particles=32)
    scores, labels = [], []
    with torch.no_grad():
        for batch in data.analysis_batches("test", 10**9):
            scores.append(model(batch["p4"], batch["mask"]).float().softmax(-1)[:, 1])
            labels.append(batch["label"])
    return _auc(torch.cat(scores).numpy(), torch.cat(labels).numpy() == 1)


@pytest.fixture(scope="module")
def tiny_study(generated_sample, tmp_path_factory):
    """A 2 λ × 1 seed study with every step: planned, run from its standalone command lines,
    reported."""
    tmp = tmp_path_factory.mktemp("study")
    path = _study(
        tmp, generated_sample, "tiny", wandb=True,
        ood={"high_pt": {"num_jets": 200, "seed": 11, "shard_size": 200,
                         "settings": {"pt_min": 800.0, "pt_max": 1000.0}}},
        hessian={"num_jets": 64, "batch_size": 64, "top_k": 2, "num_negative": 0,
                 "max_lanczos_steps": 20, "trace_matvecs": 6, "slq_probes": 1, "slq_steps": 8,
                 "num_random_directions": 1},
        robustness={"split": "val", "num_jets": 64, "batch_size": 64,
                    "perturbations": {"pt_smear": [0.1], "lorentz": [0.1, 0.3]}},
        violation={"group": "lorentz", "strengths": [0.1], "max_batches": 1},
        distillation={"trainer": {"max_epochs": 1, "limit_train_batches": 2},
                      "pruning_sparsities": [0.0, 0.5],
                      "students": [{"name": "w4", "network": {
                          "class_path": "softsymlit.models.ParticleFlowNetwork",
                          "init_args": {"num_classes": 2, "phi_sizes": [4], "f_sizes": [4]}}}]},
    )  # fmt: skip
    planned = _softsymlit("study", "plan", "--config", str(path))
    assert planned.returncode == 0, planned.stderr
    config = StudyConfig.from_yaml(path)
    commands = (config.directory / "commands.txt").read_text().splitlines()
    prepared = subprocess.run(["sh", str(config.directory / "prepare.sh")], cwd=REPO,
                              capture_output=True, text=True)  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    # Each line is standalone, as a scheduler would start them: all at once.
    processes = [
        subprocess.Popen(
            line, shell=True, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )  # fmt: skip
        for line in commands
    ]
    outputs = [process.communicate()[0] for process in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(outputs)[-3000:]
    reported = _softsymlit("study", "report", "--config", str(path))
    assert reported.returncode == 0, reported.stderr
    return config, commands


def test_plan_writes_one_standalone_command_per_run(tiny_study):
    config, commands = tiny_study
    planner = StudyPlanner(config)
    assert [run.run_id for run in planner.runs] == ["lam0_none_none_pfn_s0",
                                                    "lam1_lorentz_sampled_pfn_s0"]  # fmt: skip
    assert len(commands) == 2
    for run, line in zip(planner.runs, commands, strict=True):
        assert f"--only {run.run_id}" in line
        steps = (run.directory / "steps.sh").read_text().splitlines()
        assert [s.split()[3] for s in steps if " -m softsymlit " in s] == [
            "fit", "test", "test", "distill"]  # fmt: skip
        teacher = yaml.safe_load((run.directory / "configs" / "teacher.yaml").read_text())
        loggers = teacher["trainer"]["logger"]
        wandb = [lg for lg in loggers if lg["class_path"].endswith("WandbLogger")]
        assert wandb[0]["init_args"]["group"] == "tiny"
        assert teacher["seed_everything"] == 0
        symmetry = teacher["model"]["init_args"]["symmetry"]
        assert (symmetry is None) == (run.spec.weight == 0)
        if symmetry is not None:
            assert symmetry["init_args"]["weight"] == 1.0
        assert list((run.directory / "teacher" / "wandb").glob("offline-run-*"))


def test_report_has_every_column_with_the_values_the_runs_logged(tiny_study):
    config, _ = tiny_study
    report = config.directory / "report"
    rows = _rows(report / "results.csv")
    assert len(rows) == 2
    expected = ["weight", "group", "mode", "seed", "test_auc", "test_rej30", "gap_auc",
                "gap_loss", "ood_high_pt_auc", "hessian_top_eigenvalue", "hessian_trace",
                "hessian_effective_dimension", "hessian_near_zero_count",
                "robustness_pt_smear_0.1_delta", "robustness_lorentz_0.1_delta",
                "robustness_lorentz_0.3_delta", "robustness_lorentz_0.3_auc",
                "symmetry_violation_lorentz_0.1", "student_w4_auc", "student_w4_efficiency",
                "distill_efficiency_mean"]  # fmt: skip
    sample = Path(config.cache_dir)
    ood_files = str(next(sample.glob("high_pt-*")) / "test" / "*.root")
    for run in StudyPlanner(config).runs:
        row = rows[run.run_id]
        assert row["status"] == "finished"
        for column in expected:
            assert row[column] != "", column
        value = {c: float(row[c]) for c in expected if c not in ("group", "mode")}
        teacher = read_metrics_csv(run.directory / "teacher" / "csv" / "version_0" / "metrics.csv")
        train = read_metrics_csv(run.directory / "eval" / "train" / "csv" / "version_0" /
                                 "metrics.csv")  # fmt: skip
        measured = json.loads((run.directory / "teacher" / "measurements.json").read_text())
        chain = json.loads((run.directory / "distill" / "chain_summary.json").read_text())
        checkpoint = run.directory / "teacher" / "checkpoints" / "last.ckpt"
        files = yaml.safe_load((run.directory / "configs" / "teacher.yaml").read_text())["data"]

        # Test, train and OOD AUCs are those of the final checkpoint, recomputed here.
        assert value["test_auc"] == pytest.approx(
            _checkpoint_auc(checkpoint, files["init_args"]["test_files"]), abs=1e-5
        )
        assert value["test_auc"] + value["gap_auc"] == pytest.approx(
            _checkpoint_auc(checkpoint, files["init_args"]["train_files"]), abs=1e-5
        )
        assert value["ood_high_pt_auc"] == pytest.approx(_checkpoint_auc(checkpoint, ood_files),
                                                         abs=1e-5)  # fmt: skip
        assert value["gap_loss"] == pytest.approx(teacher["test/task_loss"]
                                                  - train["test/task_loss"])  # fmt: skip
        assert value["test_rej30"] == pytest.approx(teacher["test/rej30"])
        # Curvature and robustness as the callbacks hold them (not only as the CSV has them).
        hessian, robustness = measured["hessian"], measured["robustness"]
        assert value["hessian_top_eigenvalue"] == pytest.approx(hessian["hessian/lambda_1"])
        assert value["hessian_trace"] == pytest.approx(hessian["hessian/trace"])
        assert value["hessian_effective_dimension"] == pytest.approx(
            hessian["hessian/effective_dimension"]
        )
        assert value["hessian_near_zero_count"] == pytest.approx(hessian["hessian/near_zero_count"])
        assert value["robustness_lorentz_0.3_delta"] == pytest.approx(
            robustness["robustness/lorentz_0.3/mean_abs_delta"]
        )
        assert value["symmetry_violation_lorentz_0.1"] == pytest.approx(
            teacher["test/symmetry_violation/lorentz/0.1"]
        )
        # The recorded density is the Hessian callback's: same mean eigenvalue.
        density = measured["density"]
        mean = (np.asarray(density["weights"]) * np.asarray(density["nodes"])).sum() / len(
            density["nodes"]
        )
        assert mean == pytest.approx(hessian["hessian/density_mean"], rel=1e-4)
        # Students: the chain's numbers; efficiency is student AUC / the teacher's test AUC.
        student = chain["teachers"]["teacher"]["students"]["w4"]
        assert value["student_w4_auc"] == pytest.approx(student["auc"])
        assert value["student_w4_efficiency"] == pytest.approx(
            student["auc"] / value["test_auc"], rel=1e-5
        )

    per_lambda = list(csv.DictReader((report / "per_lambda.csv").open()))
    assert [float(e["weight"]) for e in per_lambda] == [0.0, 1.0]
    for entry in per_lambda:
        run_id = "lam0_none_none_pfn_s0" if float(entry["weight"]) == 0 else (
            "lam1_lorentz_sampled_pfn_s0")  # fmt: skip
        assert float(entry["test_auc_mean"]) == pytest.approx(float(rows[run_id]["test_auc"]))
        assert entry["test_auc_se"] in ("", "nan")  # one seed: no standard error
    for figure in ("complexity_vs_lambda", "outcome_vs_complexity", "spectral_density"):
        assert (report / f"{figure}.png").stat().st_size > 1000
    markdown = (report / "report.md").read_text()
    assert "Only 2 finished runs" in markdown and "| lam1_lorentz_sampled_pfn_s0 |" in markdown


def test_rerunning_a_finished_study_recomputes_nothing(tiny_study):
    config, _ = tiny_study
    runs = StudyPlanner(config).runs
    before = {run.run_id: run.marker.stat().st_mtime_ns for run in runs}
    result = _softsymlit("study", "run", "--config", str(config.source), "--report", "false")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"finished": [], "skipped": [r.run_id for r in runs], "failed": []}
    assert {run.run_id: run.marker.stat().st_mtime_ns for run in runs} == before


def test_killed_study_finishes_only_the_missing_runs(generated_sample, tmp_path):
    path = _study(tmp_path, generated_sample, "killed", jobs=1, train_evaluation=False)
    config = StudyConfig.from_yaml(path)
    first, second = StudyPlanner(config).runs
    env = {**os.environ, "WANDB_MODE": "offline"}
    process = subprocess.Popen(
        [sys.executable, "-m", "softsymlit", "study", "run", "--config", str(path)], cwd=REPO,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (first.marker.is_file() and (second.directory / "logs" / "teacher.log").is_file()):
        assert process.poll() is None, "the study ended before it could be killed"
        assert time.monotonic() < deadline, "the first run did not finish in time"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not second.finished()

    report = _softsymlit("study", "report", "--config", str(path))
    assert report.returncode == 0, report.stderr
    rows = _rows(config.directory / "report" / "results.csv")
    assert rows[first.run_id]["status"] == "finished"
    assert rows[second.run_id]["status"] == "incomplete"
    assert rows[second.run_id]["log"] == str(second.directory / "logs" / "teacher.log")

    first_marker = first.marker.read_text()
    first_metrics = first.directory / "teacher" / "csv" / "version_0" / "metrics.csv"
    first_mtime = first_metrics.stat().st_mtime_ns
    result = _softsymlit("study", "run", "--config", str(path))
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"finished": [second.run_id], "skipped": [first.run_id], "failed": []}
    assert first.marker.read_text() == first_marker
    assert first_metrics.stat().st_mtime_ns == first_mtime
    assert second.finished()
    rows = _rows(config.directory / "report" / "results.csv")
    assert {row["status"] for row in rows.values()} == {"finished"}
    assert rows[second.run_id]["test_auc"] != ""


def test_failing_run_is_reported_failed_with_its_log(generated_sample, tmp_path):
    broken = {"class_path": "softsymlit.models.NoSuchNetwork", "init_args": {}}
    path = _study(tmp_path, generated_sample, "broken", weights=[0.0],
                  architectures={"broken": broken}, train_evaluation=False)  # fmt: skip
    result = _softsymlit("study", "run", "--config", str(path))
    assert result.returncode == 1
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["failed"] == ["lam0_none_none_broken_s0"]

    config = StudyConfig.from_yaml(path)
    (run,) = StudyPlanner(config).runs
    row = _rows(config.directory / "report" / "results.csv")[run.run_id]
    assert row["status"] == "failed"
    log_path = Path(row["log"])
    assert log_path == run.directory / "logs" / "teacher.log"
    assert "NoSuchNetwork" in log_path.read_text()
    assert not run.marker.exists()
    markdown = (config.directory / "report" / "report.md").read_text()
    assert f"`{run.run_id}`: failed, log `{log_path}`" in markdown
    assert math.isnan(float(row["test_auc"] or "nan"))
