"""Running a λ-scan study: samples first, then every unfinished run on a local pool.

``softsymlit study prepare`` generates the nominal and out-of-distribution samples (each once,
into the study's ``cache_dir``; a rerun finds them complete). ``softsymlit study run`` prepares,
then runs every run that has no completion marker, ``--jobs`` at a time. A run executes its
steps (see :mod:`softsymlit.study.grid`) one after the other as subprocesses with their output
in ``logs/<step>.log``; each finished step leaves ``steps/<step>.json`` and the run leaves
``run.json`` last, both written atomically, so a study killed midway and started again skips
what finished and redoes only the interrupted step onwards. A step that fails stops its run
and leaves ``failed.json`` naming the step and its log; the other runs go on.

``softsymlit study plan`` writes every step config, each run's ``steps.sh``, ``prepare.sh`` and
``commands.txt`` (one standalone command line per run: ``softsymlit study run --only <run_id>``),
for a SLURM array or any scheduler; ``softsymlit study report`` aggregates what has finished.

Limitation: an interrupted teacher fit restarts from the beginning rather than from its
``last.ckpt`` (the distillation chain does resume its own stages).
Limitation: nothing stops two ``study run`` processes from working on the same run at once;
give each process its own runs (``--only``, as ``commands.txt`` does).
Limitation: killing only the study process (not its process group) leaves the step process it
was waiting on running until that step ends; Ctrl-C or ``kill -- -PGID`` stops both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from softsymlit.study.callbacks import write_json_atomically
from softsymlit.study.grid import (
    PlannedRun,
    Step,
    StudyConfig,
    StudyPlanner,
    nominal_directory,
    ood_directories,
    sample_settings,
)

log = logging.getLogger(__name__)

STEP_KEEPS_OUTPUT = ("distill",)
"""Steps that resume their own interrupted work (the chain skips finished stages)."""


def prepare_samples(config: StudyConfig, progress: bool = False) -> dict[str, Path]:
    """Generates the nominal sample (all splits) and each OOD sample (test split only).

    Returns:
        The folder of every sample by name (``nominal`` and the OOD names).
    """
    from softsymlit.data.generate import GeneratorSettings, generate_sample

    folders: dict[str, Path] = {}
    requests = []
    if config.sample is not None:
        requests.append(("nominal", config.sample, config.sample.settings, None,
                         nominal_directory(config)))  # fmt: skip
    for name, path in ood_directories(config).items():
        spec = config.ood[name]
        requests.append((name, spec, sample_settings(config, spec), {"test": 1.0}, path))
    for name, spec, settings, fractions, path in requests:
        log.info("sample %s: %d jets in %s", name, spec.num_jets, path)
        settings = dict(settings)
        settings["extra"] = tuple(settings.pop("extra", ()) or ())
        settings = GeneratorSettings(**settings)
        generate_sample(path, spec.num_jets, spec.seed, spec.shard_size, fractions, settings,
                        config.generation_workers, progress)  # fmt: skip
        folders[name] = path
    return folders


def step_environment(config: StudyConfig) -> dict[str, str]:
    """The environment of every step process."""
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    if config.threads_per_job > 0:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(config.threads_per_job)
    return env


class StudyRunner:
    """Runs the unfinished runs of a study.

    Args:
        config: the study.
        python: interpreter of the step processes (default: this one).

    Example::

        runner = StudyRunner(StudyConfig.from_yaml("configs/study/lambda_scan_small.yaml"))
        summary = runner.run(jobs=2)   # {"finished": [...], "failed": [...], "skipped": [...]}
    """

    def __init__(self, config: StudyConfig, python: str | None = None) -> None:
        self.config = config
        self.planner = StudyPlanner(config)
        self.python = python or sys.executable
        self.env = step_environment(config)

    @property
    def runs(self) -> list[PlannedRun]:
        return self.planner.runs

    def select(self, only: list[str] | None) -> list[PlannedRun]:
        """The runs named in ``only`` (all when empty)."""
        if not only:
            return list(self.runs)
        return [self.planner.run(run_id) for run_id in only]

    # -- plan --------------------------------------------------------------------------------

    def write_plan(self, config_path: str | None) -> Path:
        """Writes every run's configs and ``steps.sh``, and the study's ``prepare.sh`` and
        ``commands.txt``; returns the path of ``commands.txt``."""
        directory = self.config.directory
        directory.mkdir(parents=True, exist_ok=True)
        for run in self.runs:
            self.planner.write_configs(run)
        source = config_path or self.config.source
        if source is None:
            raise ValueError("study plan needs the study config's path to write command lines")
        source = shlex.quote(str(source))
        # The interpreter of this process, so the lines run in the same environment even where
        # it is not activated (a scheduler's job shell).
        python = shlex.quote(self.python)
        prepare = ["#!/bin/sh", "# Generate the study's samples once, before any run.", "set -e",
                   f"{python} -m softsymlit study prepare --config {source}"]  # fmt: skip
        (directory / "prepare.sh").write_text("\n".join(prepare) + "\n")
        lines = [
            f"{python} -m softsymlit study run --config {source} --only {run.run_id} --jobs 1 "
            "--prepare false"
            for run in self.runs
        ]
        commands = directory / "commands.txt"
        commands.write_text("\n".join(lines) + "\n")
        log.info("%d runs planned: %s (samples first: %s; steps per run: <run>/steps.sh)",
                 len(lines), commands, directory / "prepare.sh")  # fmt: skip
        return commands

    # -- run ---------------------------------------------------------------------------------

    def run(self, jobs: int | None = None, only: list[str] | None = None) -> dict[str, list[str]]:
        """Runs every selected run that has not finished, ``jobs`` at a time.

        Returns:
            Run ids by outcome: ``finished`` (now), ``skipped`` (finished earlier), ``failed``.
        """
        runs = self.select(only)
        jobs = jobs or self.config.jobs
        outcome: dict[str, list[str]] = {"finished": [], "skipped": [], "failed": []}
        pending = []
        for run in runs:
            if run.finished():
                outcome["skipped"].append(run.run_id)
            else:
                pending.append(run)
        log.info("study %s: %d runs, %d finished earlier, %d to run with %d jobs",
                 self.config.name, len(runs), len(outcome["skipped"]), len(pending),
                 jobs)  # fmt: skip
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for run, ok in zip(pending, pool.map(self.run_one, pending), strict=True):
                outcome["finished" if ok else "failed"].append(run.run_id)
        return outcome

    def run_one(self, run: PlannedRun) -> bool:
        """Runs the unfinished steps of ``run``; returns whether all succeeded."""
        start = time.perf_counter()
        self.planner.write_configs(run)
        run.failure.unlink(missing_ok=True)
        for index, step in enumerate(run.steps, start=1):
            label = f"{run.run_id} step {index}/{len(run.steps)} {step.name}"
            if run.step_finished(step):
                log.info("%s: finished earlier, skipped", label)
                continue
            if not self._run_step(run, step, label):
                return False
        write_json_atomically(run.marker, {
            "config_hash": run.config_hash, "run_id": run.run_id, **run.spec.as_dict(),
            "steps": [step.name for step in run.steps], "seconds": time.perf_counter() - start,
        })  # fmt: skip
        log.info("%s: finished in %.0f s", run.run_id, time.perf_counter() - start)
        return True

    def _run_step(self, run: PlannedRun, step: Step, label: str) -> bool:
        if step.directory.exists() and step.name not in STEP_KEEPS_OUTPUT:
            # Left by an interrupted attempt: a fresh start keeps the logs unambiguous.
            shutil.rmtree(step.directory)
        log_path = run.log_path(step)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = step.command(self.python)
        log.info("%s: starting (log %s)", label, log_path)
        start = time.perf_counter()
        with log_path.open("w") as output:
            output.write(f"$ {shlex.join(command)}\n")
            output.flush()
            status = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                                    env=self.env).returncode  # fmt: skip
        seconds = time.perf_counter() - start
        if status != 0:
            write_json_atomically(run.failure, {
                "config_hash": run.config_hash, "run_id": run.run_id, "step": step.name,
                "returncode": status, "log": str(log_path), "seconds": seconds,
            })  # fmt: skip
            log.error("%s: failed with status %d after %.0f s; log %s", label, status, seconds,
                      log_path)  # fmt: skip
            return False
        write_json_atomically(run.step_marker(step), {
            "config_hash": run.config_hash, "step": step.name, "command": command,
            "seconds": seconds,
        })  # fmt: skip
        log.info("%s: done in %.0f s", label, seconds)
        return True


# -- command line ----------------------------------------------------------------------------


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softsymlit study",
        description="λ-scan studies: run the grid, plan it for a scheduler, report on it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="run|plan|report")
    run = commands.add_parser("run", help="generate the samples and run every unfinished run")
    run.add_argument("--config", required=True, help="study YAML")
    run.add_argument("--jobs", type=int, default=None, help="runs in parallel (default: config)")
    run.add_argument("--only", nargs="+", default=None, metavar="RUN_ID", help="these runs only")
    run.add_argument("--prepare", type=_boolean, default=True,
                     help="generate the samples first (false when prepare.sh ran)")  # fmt: skip
    run.add_argument("--report", type=_boolean, default=True,
                     help="write the report afterwards (skipped with --only)")  # fmt: skip
    plan = commands.add_parser("plan", help="write each run as a standalone command line")
    plan.add_argument("--config", required=True, help="study YAML")
    prepare = commands.add_parser("prepare", help="generate the study's samples")
    prepare.add_argument("--config", required=True, help="study YAML")
    report = commands.add_parser("report", help="aggregate the finished runs")
    report.add_argument("--config", required=True, help="study YAML")
    report.add_argument("--output", default=None, help="report folder (default: <study>/report)")
    return parser


def study_main(args: list[str]) -> int:
    """``softsymlit study run|plan|prepare|report --config …``; returns the exit status
    (1 when a run failed)."""
    options = _parser().parse_args(args)
    config = StudyConfig.from_yaml(options.config)
    if options.command == "prepare":
        prepare_samples(config, progress=True)
        return 0
    if options.command == "report":
        from softsymlit.study.scan_report import write_report

        write_report(config, options.output)
        return 0
    runner = StudyRunner(config)
    if options.command == "plan":
        commands = runner.write_plan(options.config)
        print(commands)
        return 0
    if options.prepare:
        prepare_samples(config, progress=False)
    outcome = runner.run(options.jobs, options.only)
    print(json.dumps(outcome))
    if options.report and not options.only:
        from softsymlit.study.scan_report import write_report

        write_report(config)
    return 1 if outcome["failed"] else 0


__all__ = ["StudyRunner", "prepare_samples", "step_environment", "study_main"]
