"""Teacher → student distillation chains: stages run as ordinary ``softsymlit fit`` processes.

A chain trains each configured teacher (or takes a trained one from a checkpoint) and then
distils it into each configured student, in the order of the config: teacher 1, its students,
teacher 2, its students, … Every stage is one ``softsymlit fit`` process with its own run
directory ``root_dir/name/<stage>-<hash>/`` holding the resolved config, the CSV logs, the W&B
run (offline, one W&B group per chain), ``checkpoints/last.ckpt`` and ``result.json``.

Running every stage as its own process keeps Lightning's launchers in charge: under
``strategy: ddp`` Lightning re-executes the *stage* command once per extra rank, never the
chain, so no stage runs twice. The hash covers everything that determines a stage's result
(model, data, trainer settings, seed and, for a student, its teacher's hash), so a stage whose
``result.json`` and final checkpoint exist is skipped, a stage with only ``last.ckpt`` resumes
from it, and a changed config gets a fresh directory.

Multi-node launch: give the chain a ``launcher`` that starts one stage on all nodes, e.g.
``[torchrun, --nnodes=2, --nproc-per-node=4, --rdzv-backend=c10d, --rdzv-endpoint=HOST:29400]``,
and start the chain once per node (``srun --ntasks-per-node=1 softsymlit distill --config …``)
with a shared ``root_dir``. Every node then runs the same stage sequence and makes the same
skip/resume decisions; only the node with ``SLURM_PROCID``/``RANK``/``NODE_RANK`` zero writes
the results.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softsymlit.study.callbacks import write_json_atomically
from softsymlit.study.configs import check_name, dataclass_from_mapping, stable_hash

log = logging.getLogger(__name__)

DISTILLATION_CLASS = "softsymlit.models.DistillationModule"
UNHASHED_TRAINER_KEYS = ("logger", "enable_progress_bar", "log_every_n_steps", "default_root_dir")
"""Trainer settings that change how a stage reports, not what it computes."""
LEADER_ENVIRONMENT = ("SOFTSYMLIT_CHAIN_RANK", "SLURM_PROCID", "RANK", "NODE_RANK", "GROUP_RANK")
"""Environment variables that identify the chain process writing results (the one at zero)."""


@dataclass
class TeacherSpec:
    """A teacher of the chain.

    Args:
        name: stage name (letters, digits, ``_``, ``-``, ``.``).
        model: the LightningCLI ``model`` config of the teacher (``class_path``/``init_args``
            of a :class:`~softsymlit.models.JetClassifier`), trained by the chain.
        checkpoint: a trained teacher to use instead of training one.
        network: the architecture of ``checkpoint`` (``class_path``/``init_args``); default:
            ``model``'s network, else the one recorded in the checkpoint.
        trainer: trainer settings of this stage over the chain's.
    """

    name: str
    model: dict | None = None
    checkpoint: str | None = None
    network: dict | None = None
    trainer: dict = field(default_factory=dict)


@dataclass
class StudentSpec:
    """A student network distilled from every teacher of the chain.

    Args:
        name: stage name (letters, digits, ``_``, ``-``, ``.``).
        network: the student network's ``class_path``/``init_args``.
        distillation: :class:`~softsymlit.models.DistillationModule` arguments over the chain's
            (``alpha``, ``temperature``, ``symmetry``, ``optimizer``, ``scheduler``).
        trainer: trainer settings of this stage over the chain's.
    """

    name: str
    network: dict
    distillation: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)


@dataclass
class ChainConfig:
    """A teacher → student chain.

    Args:
        teachers: the teachers, trained (or loaded) in order.
        students: the students, each distilled from every teacher.
        data: the LightningCLI ``data`` config shared by all stages.
        trainer: the LightningCLI ``trainer`` config shared by all stages; the chain adds the
            loggers, a ``ModelCheckpoint`` (``last.ckpt`` after every epoch) and its recording
            callbacks.
        distillation: :class:`~softsymlit.models.DistillationModule` arguments shared by all
            students (besides ``network`` and the teacher).
        name: the chain's name: its folder under ``root_dir`` and its W&B group.
        root_dir: the folder of all chains.
        seed: ``seed_everything`` of every stage.
        group: W&B group (default: ``name``).
        wandb: log each stage (and the chain report) to an offline W&B run.
        wandb_project: W&B project.
        pruning_sparsities: sparsities of the teachers' pruning curves (empty: none).
        evaluation_split: data split of the pruning curves (and of the AUC of a teacher given
            as a checkpoint): ``val`` or ``test``.
        evaluation_jets: jets of that split used.
        efficiency_fraction: fraction of the teacher's validation AUC a student must reach for
            the epochs-to-reach measure.
        launcher: command that starts a stage instead of ``python`` (``torchrun …``); the
            stage is run as ``launcher -m softsymlit fit …``.
        progress_bar: show the stages' progress bars in their logs.
    """

    teachers: list[TeacherSpec]
    students: list[StudentSpec]
    data: dict
    trainer: dict = field(default_factory=dict)
    distillation: dict = field(default_factory=dict)
    name: str = "distill"
    root_dir: str = "runs/distill"
    seed: int = 42
    group: str | None = None
    wandb: bool = True
    wandb_project: str = "softsymlit"
    pruning_sparsities: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.8, 0.9, 0.95])
    evaluation_split: str = "val"
    evaluation_jets: int = 2000
    efficiency_fraction: float = 0.95
    launcher: list[str] = field(default_factory=list)
    progress_bar: bool = False

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> ChainConfig:
        """A config from its YAML/JSON form (teachers and students as mappings)."""
        content = dict(content)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(content) - known)
        if unknown:
            raise ValueError(
                f"unknown chain keys {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        content["teachers"] = [_spec(TeacherSpec, t) for t in content.get("teachers", [])]
        content["students"] = [_spec(StudentSpec, s) for s in content.get("students", [])]
        return cls(**content)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ChainConfig:
        """A config read from a YAML file."""
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


@dataclass
class Stage:
    """One fit of a chain.

    Attributes:
        name: ``teacher`` or ``teacher.student``.
        kind: ``"teacher"`` or ``"student"``.
        teacher: the name of the teacher (its own for a teacher stage).
        student: the student's name (``None`` for a teacher).
        config: the full LightningCLI config of the fit.
        config_hash: hash of what determines the result.
        directory: the run directory.
    """

    name: str
    kind: str
    teacher: str
    student: str | None
    config: dict
    config_hash: str
    directory: Path

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def last_checkpoint(self) -> Path:
        return self.directory / "checkpoints" / "last.ckpt"

    @property
    def result_path(self) -> Path:
        return self.directory / "result.json"

    def command(self, launcher: list[str], resume: bool) -> list[str]:
        """The command line that runs this stage (resuming from ``last.ckpt`` if asked)."""
        start = [*launcher, "-m"] if launcher else [sys.executable, "-m"]
        command = [*start, "softsymlit", "fit", f"--config={self.config_path}"]
        if resume:
            command.append(f"--ckpt_path={self.last_checkpoint}")
        return command

    def finished(self) -> bool:
        """Whether ``result.json`` of this config and the final checkpoint exist."""
        if not (self.result_path.is_file() and self.last_checkpoint.is_file()):
            return False
        try:
            result = json.loads(self.result_path.read_text())
        except json.JSONDecodeError:
            return False
        return result.get("config_hash") == self.config_hash


def _spec(kind, value):
    name = value.get("name") if isinstance(value, dict) else None
    return dataclass_from_mapping(kind, value, f"{kind.__name__} {name!r}")


class StageFailed(RuntimeError):
    """A stage's process ended with a non-zero status."""


def _model_network(model: dict | None) -> dict | None:
    if model is None:
        return None
    return copy.deepcopy((model.get("init_args") or {}).get("network"))


class Chain:
    """Plans and runs a :class:`ChainConfig`.

    Args:
        config: the chain.
        env: environment of the stage processes (default: this process's, with
            ``WANDB_MODE=offline`` unless set).

    Example::

        summary = Chain(ChainConfig.from_yaml("configs/distill.yaml")).run()
        summary["teachers"]["pfn"]["students"]["pfn_small"]["efficiency"]
    """

    def __init__(self, config: ChainConfig, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("WANDB_MODE", "offline")
        self.directory = Path(config.root_dir) / check_name(config.name, "chain")
        self.group = config.group or config.name
        self._validate()
        self.stages = self._plan()

    def _validate(self) -> None:
        config = self.config
        if not config.teachers:
            raise ValueError("a chain needs at least one teacher")
        names = [t.name for t in config.teachers] + [s.name for s in config.students]
        for name in names:
            check_name(name, "stage")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(duplicates)}")
        for teacher in config.teachers:
            if (teacher.model is None) == (teacher.checkpoint is None):
                raise ValueError(
                    f"teacher {teacher.name!r} needs exactly one of model (to train it) and "
                    "checkpoint (a trained teacher)"
                )
        if config.evaluation_split not in ("val", "test"):
            raise ValueError(
                f"evaluation_split {config.evaluation_split!r} is not available; use val or test"
            )

    # -- planning ---------------------------------------------------------------------------

    def _trainer(self, overrides: dict) -> dict:
        trainer = {**copy.deepcopy(self.config.trainer), **copy.deepcopy(overrides)}
        trainer.setdefault("enable_progress_bar", self.config.progress_bar)
        return trainer

    def _hash(self, model: dict, trainer: dict, extra: Any = None) -> str:
        content = {
            "model": model,
            "data": self.config.data,
            "trainer": {k: v for k, v in trainer.items() if k not in UNHASHED_TRAINER_KEYS},
            "seed": self.config.seed,
            "extra": extra,
        }
        return stable_hash(content)

    def _full_config(self, name: str, model: dict, trainer: dict, config_hash: str, directory):
        trainer = copy.deepcopy(trainer)
        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.config.name}-{name}-{config_hash}")
        loggers: list[dict] = [
            {"class_path": "lightning.pytorch.loggers.CSVLogger",
             "init_args": {"save_dir": str(directory), "name": "csv"}},
        ]  # fmt: skip
        if self.config.wandb:
            loggers.append({
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"project": self.config.wandb_project, "group": self.group,
                              "name": name, "id": run_id, "save_dir": str(directory),
                              "offline": True, "resume": "allow", "job_type": "stage"},
            })  # fmt: skip
        callbacks = list(trainer.pop("callbacks", None) or [])
        callbacks += [
            {"class_path": "softsymlit.study.StageRecorder",
             "init_args": {"directory": str(directory)}},
            {"class_path": "softsymlit.study.RandomStateCheckpoint"},
            # No monitored metric: the kept checkpoint is the latest one, so the students learn
            # from, and the test after the fit measures, the final weights. (``last.ckpt`` is
            # only written when a top-k checkpoint is, hence ``save_top_k: 1``.)
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(directory / "checkpoints"), "save_last": True,
                           "save_top_k": 1, "monitor": None, "filename": "{epoch:03d}"}},
        ]  # fmt: skip
        trainer.update(
            {"logger": loggers, "callbacks": callbacks, "default_root_dir": str(directory)}
        )
        return {
            "seed_everything": self.config.seed,
            "trainer": trainer,
            "model": copy.deepcopy(model),
            "data": copy.deepcopy(self.config.data),
            "test_after_fit": True,
        }

    def _stage(self, name, kind, teacher, student, model, trainer, extra) -> Stage:
        config_hash = self._hash(model, trainer, extra)
        directory = self.directory / f"{name}-{config_hash}"
        config = self._full_config(name, model, trainer, config_hash, directory)
        return Stage(name, kind, teacher, student, config, config_hash, directory)

    def _plan(self) -> list[Stage]:
        stages = []
        for teacher in self.config.teachers:
            if teacher.model is not None:
                trainer = self._trainer(teacher.trainer)
                stage = self._stage(teacher.name, "teacher", teacher.name, None, teacher.model,
                                    trainer, None)  # fmt: skip
                stages.append(stage)
                checkpoint, teacher_hash = stage.last_checkpoint, stage.config_hash
            else:
                checkpoint = Path(teacher.checkpoint)
                teacher_hash = stable_hash({"checkpoint": str(checkpoint.resolve())})
            network = teacher.network or _model_network(teacher.model)
            for student in self.config.students:
                stages.append(self._student_stage(teacher, student, checkpoint, teacher_hash,
                                                  network))  # fmt: skip
        return stages

    def _student_stage(self, teacher, student, checkpoint, teacher_hash, network) -> Stage:
        init_args = {**copy.deepcopy(self.config.distillation),
                     **copy.deepcopy(student.distillation)}  # fmt: skip
        init_args.update({"network": copy.deepcopy(student.network), "teacher": network})
        hashed = {"class_path": DISTILLATION_CLASS, "init_args": init_args}
        model = copy.deepcopy(hashed)
        model["init_args"]["teacher_checkpoint"] = str(checkpoint)
        trainer = self._trainer(student.trainer)
        name = f"{teacher.name}.{student.name}"
        # The teacher enters the hash through its own hash, not through where it is stored.
        return self._stage(name, "student", teacher.name, student.name, model, trainer,
                           {"teacher": teacher_hash, "model": hashed})  # fmt: skip

    # -- running ----------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this chain process writes results (rank zero of the chain's launch)."""
        for name in LEADER_ENVIRONMENT:
            if name in self.env:
                return int(self.env[name]) == 0
        return True

    def commands(self) -> list[list[str]]:
        """The command line of every stage, in order, as a fresh run would start them."""
        return [stage.command(self.config.launcher, resume=False) for stage in self.stages]

    def run(self) -> dict[str, Any]:
        """Runs every stage that is not finished, then writes and returns the chain summary
        (``chain_summary.json``; see :meth:`summary`).

        Raises:
            StageFailed: a stage's process failed; the message names its log.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        for index, stage in enumerate(self.stages, start=1):
            label = f"stage {index}/{len(self.stages)} {stage.name}"
            if stage.finished():
                log.info("%s: finished earlier, skipped (%s)", label, stage.directory)
                continue
            self._run_stage(stage, label)
        return self.summary()

    def _run_stage(self, stage: Stage, label: str) -> None:
        resume = stage.last_checkpoint.is_file()
        stage.directory.mkdir(parents=True, exist_ok=True)
        if self.is_leader:
            stage.config_path.write_text(yaml.safe_dump(stage.config, sort_keys=False))
        command = stage.command(self.config.launcher, resume)
        log.info("%s: %s (%s)", label, "resuming from last.ckpt" if resume else "starting",
                 stage.directory)  # fmt: skip
        log_path = stage.directory / "stage.log"
        with log_path.open("a") as output:
            output.write(f"$ {' '.join(command)}\n")
            output.flush()
            status = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                                    env=self.env).returncode  # fmt: skip
        if status != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
            raise StageFailed(f"{label} failed with status {status}; log {log_path}:\n{tail}")
        if self.is_leader:
            self._write_result(stage, resumed=resume)

    def _write_result(self, stage: Stage, resumed: bool) -> None:
        metrics = json.loads((stage.directory / "stage_metrics.json").read_text())
        result = {
            "name": stage.name,
            "kind": stage.kind,
            "config_hash": stage.config_hash,
            "checkpoint": str(stage.last_checkpoint),
            "resumed": resumed,
            **metrics,
        }
        write_json_atomically(stage.result_path, result)

    # -- report -----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Teacher and student metrics and the ``compress/…`` measures, written to
        ``chain_summary.json`` and ``compressibility.png`` in the chain folder (by the leader).

        Per teacher: ``val_auc``, ``test_auc``, ``num_parameters``, ``pruning`` (AUC after
        pruning at each sparsity); per student: ``val_auc``, ``test_auc``, ``num_parameters``,
        ``efficiency`` (student AUC / teacher AUC, on the test split when it was measured, else
        validation), ``epochs_to_target`` (epochs until the student's validation AUC reached
        ``efficiency_fraction`` × the teacher's final one; ``None`` if never) and ``history``.
        ``metrics`` holds the same measures flat, as logged: ``compress/<teacher>/…``.
        """
        from softsymlit.study.report import chain_summary

        summary = chain_summary(self)
        if self.is_leader:
            write_json_atomically(self.directory / "chain_summary.json", summary)
            from softsymlit.study.compress import plot_compressibility

            plot_compressibility(summary, self.directory / "compressibility.png")
            if self.config.wandb:
                from softsymlit.study.report import log_summary_to_wandb

                log_summary_to_wandb(self, summary)
        return summary


def run_chain(config: ChainConfig | dict | str | Path, env: dict[str, str] | None = None):
    """Runs a chain (a :class:`ChainConfig`, its mapping form or a YAML path) and returns its
    summary; see :meth:`Chain.summary`."""
    if isinstance(config, (str, Path)):
        config = ChainConfig.from_yaml(config)
    elif isinstance(config, dict):
        config = ChainConfig.from_dict(config)
    return Chain(config, env).run()


__all__ = [
    "Chain",
    "ChainConfig",
    "Stage",
    "StageFailed",
    "StudentSpec",
    "TeacherSpec",
    "run_chain",
]
