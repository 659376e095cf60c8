"""λ-scan studies: the grid of runs and the ordinary ``softsymlit`` commands of each run.

A study is a grid over the soft-symmetry weight λ, the symmetry group and penalty mode, the
teacher architecture and the seed. Every grid point is one *run* with its own folder
``root_dir/name/runs/<run_id>/`` and a fixed sequence of *steps*, each an ordinary
``softsymlit`` invocation with its own config file:

1. ``teacher``: ``softsymlit fit`` of the teacher with the penalty, the curvature, robustness
   and symmetry-violation callbacks at fit end, and the test of the final weights;
2. ``evaluate``: ``softsymlit test`` of the final checkpoint on the training files (for the
   train–test gap) and on every out-of-distribution sample, one invocation each, run in one
   process (:mod:`softsymlit.study.sequence`) to pay the start-up once;
3. ``distill``: ``softsymlit distill`` of the final checkpoint into the configured students.

λ = 0 runs carry no penalty (``symmetry: null``) and are planned once per architecture and seed,
with group and mode ``none``, whatever groups and modes the grid lists.

Limitation: the evaluation invocations log to CSV only; their AUCs reach the report but not the
study's W&B group.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softsymlit.study.configs import check_name, dataclass_from_mapping, stable_hash

NO_SYMMETRY = "none"
"""Group and mode of a λ = 0 run."""
DEFAULT_VIOLATION = {"group": "lorentz", "strengths": [0.01, 0.1, 0.5], "max_batches": 20}
"""Symmetry-violation settings when the study config gives none: the same for every run."""
SEQUENCE_SEPARATOR = "--then"
"""Separates the invocations of a step that runs several in one process."""
MEASUREMENTS_FILE = "measurements.json"
"""What the teacher's :class:`~softsymlit.study.recorder.StudyMeasurements` writes."""


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` merged into a copy of ``base``, mappings key by key (lists replace)."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class SampleSpec:
    """A sample the study generates (once; later studies reuse it).

    Args:
        num_jets: jets in the sample (half top, half QCD).
        seed: sample seed.
        shard_size: jets per file.
        settings: :class:`~softsymlit.data.generate.GeneratorSettings` fields; those of an
            out-of-distribution sample are applied over the nominal sample's.
        output: folder of the sample (default: a folder of the study's ``cache_dir``).
    """

    num_jets: int
    seed: int = 12345
    shard_size: int = 1000
    settings: dict = field(default_factory=dict)
    output: str | None = None


@dataclass
class StudyConfig:
    """A λ-scan study; see ``configs/study/lambda_scan.yaml`` for an annotated example.

    Args:
        name: the study's folder under ``root_dir`` and its W&B group.
        root_dir: folder of all studies.
        weights: λ values of the soft-symmetry penalty.
        groups: symmetry groups of the penalty (named subgroups of
            :class:`~softsymlit.symmetry.SoftSymmetryPenalty`).
        modes: penalty modes (``sampled``, ``infinitesimal``).
        seeds: seeds (``seed_everything`` and data shuffling of every step).
        architectures: teacher networks by name (``class_path``/``init_args``); empty: the
            base config's network, named ``base``.
        base_config: LightningCLI YAML the teacher config starts from.
        teacher: LightningCLI config merged over ``base_config`` (``trainer``, ``model``,
            ``data``); the study sets the loggers, checkpointing, penalty, seed and callbacks.
        symmetry: :class:`~softsymlit.symmetry.SoftSymmetryPenalty` arguments besides weight,
            group and mode.
        hessian: :class:`~softsymlit.analysis.HessianCallback` arguments (``null``: none).
        robustness: :class:`~softsymlit.analysis.RobustnessCallback` arguments (``null``: none).
        violation: :class:`~softsymlit.symmetry.SymmetryViolation` arguments (``null``: none);
            the same for every run, so runs are compared on the same transformations.
        sample: the nominal sample to generate (``null``: use the base config's data files).
        ood: out-of-distribution samples by name, generated into ``cache_dir``.
        cache_dir: folder of generated samples.
        evaluation: trainer settings of the ``softsymlit test`` invocations (e.g.
            ``limit_test_batches``).
        train_evaluation: test the final teacher on the training files too (the train–test
            gap needs it).
        distillation: ``softsymlit distill`` chain settings (``students``, ``distillation``,
            ``trainer``, ``pruning_sparsities``, ``evaluation_jets``, …); ``null``: no
            distillation step.
        wandb: log the teacher and distillation steps to offline W&B runs in one group.
        wandb_project: W&B project.
        group: W&B group (default: ``name``).
        jobs: runs in parallel on this machine.
        threads_per_job: torch/OpenMP threads of every step process (0: leave unset).
        generation_workers: worker processes of sample generation.
        bootstrap_resamples: resamples of the report's confidence intervals.
        bootstrap_seed: seed of the report's bootstrap.
        confidence_level: level of the report's confidence intervals.
    """

    name: str
    weights: list[float]
    seeds: list[int]
    groups: list[str] = field(default_factory=lambda: ["lorentz"])
    modes: list[str] = field(default_factory=lambda: ["sampled"])
    architectures: dict[str, dict] = field(default_factory=dict)
    root_dir: str = "runs/study"
    base_config: str | None = "configs/top_tagging.yaml"
    teacher: dict = field(default_factory=dict)
    symmetry: dict = field(default_factory=dict)
    hessian: dict | None = field(default_factory=dict)
    robustness: dict | None = field(default_factory=dict)
    violation: dict | None = field(default_factory=lambda: dict(DEFAULT_VIOLATION))
    sample: SampleSpec | None = None
    ood: dict[str, SampleSpec] = field(default_factory=dict)
    cache_dir: str = "data/study_cache"
    evaluation: dict = field(default_factory=dict)
    train_evaluation: bool = True
    distillation: dict | None = None
    wandb: bool = True
    wandb_project: str = "softsymlit"
    group: str | None = None
    jobs: int = 1
    threads_per_job: int = 0
    generation_workers: int = 1
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    confidence_level: float = 0.9
    source: str | None = None

    @classmethod
    def from_dict(cls, content: dict[str, Any], source: str | None = None) -> StudyConfig:
        """A study from its YAML form.

        Raises:
            ValueError: an unknown key, a missing required key or an empty grid axis.
        """
        content = dict(content)
        known = set(cls.__dataclass_fields__) - {"source"}
        unknown = sorted(set(content) - known)
        if unknown:
            raise ValueError(
                f"unknown study keys {', '.join(unknown)} in {source or 'the study config'}; "
                f"valid keys: {', '.join(sorted(known))}"
            )
        missing = [key for key in ("name", "weights", "seeds") if key not in content]
        if missing:
            raise ValueError(f"the study config {source or ''} needs {', '.join(missing)}")
        if content.get("sample") is not None:
            content["sample"] = dataclass_from_mapping(
                SampleSpec, content["sample"], "study key 'sample'"
            )
        content["ood"] = {
            name: dataclass_from_mapping(SampleSpec, spec, f"study key 'ood.{name}'")
            for name, spec in (content.get("ood") or {}).items()
        }
        config = cls(**content, source=source)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudyConfig:
        """A study read from a YAML file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"study config {path} does not exist")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path))

    def validate(self) -> None:
        """Checks the grid axes and names.

        Raises:
            ValueError: naming the key, what was found and what is valid.
        """
        check_name(self.name, "study")
        for key in ("weights", "seeds", "groups", "modes"):
            if not getattr(self, key):
                raise ValueError(f"study key {key!r} must list at least one value")
        negative = [w for w in self.weights if w < 0]
        if negative:
            raise ValueError(f"weights must be non-negative; got {negative}")
        for name in [*self.architectures, *self.ood]:
            check_name(name, "architecture or OOD sample")
        if "train" in self.ood:
            raise ValueError("an OOD sample cannot be named 'train' (the training-set evaluation)")
        if self.jobs < 1:
            raise ValueError(f"jobs must be at least 1; got {self.jobs}")
        if not 0 < self.confidence_level < 1:
            raise ValueError(f"confidence_level must lie in (0, 1); got {self.confidence_level}")

    @property
    def directory(self) -> Path:
        """The study's folder."""
        return Path(self.root_dir) / self.name

    @property
    def wandb_group(self) -> str:
        return self.group or self.name


@dataclass(frozen=True)
class RunSpec:
    """One grid point.

    Attributes:
        weight: λ.
        group: symmetry group (``none`` at λ = 0).
        mode: penalty mode (``none`` at λ = 0).
        architecture: teacher architecture name.
        seed: seed.
    """

    weight: float
    group: str
    mode: str
    architecture: str
    seed: int

    @property
    def run_id(self) -> str:
        text = f"lam{self.weight:g}_{self.group}_{self.mode}_{self.architecture}_s{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.-]", "-", text)

    def as_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "group": self.group, "mode": self.mode,
                "architecture": self.architecture, "seed": self.seed}  # fmt: skip


def expand_grid(config: StudyConfig) -> list[RunSpec]:
    """Every grid point in a fixed order (architecture, λ, group, mode, seed), λ = 0 once per
    architecture and seed."""
    architectures = list(config.architectures) or ["base"]
    runs: list[RunSpec] = []
    for architecture in architectures:
        for weight in config.weights:
            pairs = (
                [(NO_SYMMETRY, NO_SYMMETRY)]
                if weight == 0
                else [(g, m) for g in config.groups for m in config.modes]
            )
            for group, mode in pairs:
                for seed in config.seeds:
                    spec = RunSpec(float(weight), group, mode, architecture, int(seed))
                    if spec not in runs:
                        runs.append(spec)
    return runs


@dataclass
class Step:
    """One process of a run: one ordinary ``softsymlit`` invocation, or several run one after
    the other in the same process (the evaluations, to pay the start-up once).

    Attributes:
        name: ``teacher``, ``evaluate`` or ``distill``.
        directory: the step's output folder (removed when an interrupted step restarts).
        configs: the config file of every invocation and its content.
        invocations: the arguments after ``softsymlit`` of every invocation.
    """

    name: str
    directory: Path
    configs: dict[Path, dict]
    invocations: list[list[str]]

    def command(self, python: str | None = None) -> list[str]:
        """The command line of the step's process."""
        python = python or sys.executable
        if len(self.invocations) == 1:
            return [python, "-m", "softsymlit", *self.invocations[0]]
        command = [python, "-m", "softsymlit.study.sequence"]
        for index, invocation in enumerate(self.invocations):
            command += ([SEQUENCE_SEPARATOR] if index else []) + invocation
        return command

    def standalone_commands(self, python: str | None = None) -> list[list[str]]:
        """One ``python -m softsymlit …`` line per invocation (what ``steps.sh`` lists), with this
        process's interpreter unless ``python`` is given."""
        python = python or sys.executable
        return [[python, "-m", "softsymlit", *invocation] for invocation in self.invocations]


@dataclass
class PlannedRun:
    """A grid point with its folder, steps and hash.

    Attributes:
        spec: the grid point.
        directory: ``root_dir/name/runs/<run_id>``.
        steps: the steps, in order.
        config_hash: hash of every step config (a changed config gives another hash).
    """

    spec: RunSpec
    directory: Path
    steps: list[Step]
    config_hash: str

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def marker(self) -> Path:
        """Written last, atomically, when every step has finished."""
        return self.directory / "run.json"

    @property
    def failure(self) -> Path:
        return self.directory / "failed.json"

    def step_marker(self, step: Step) -> Path:
        return self.directory / "steps" / f"{step.name}.json"

    def log_path(self, step: Step) -> Path:
        return self.directory / "logs" / f"{step.name}.log"

    def finished(self) -> bool:
        """Whether ``run.json`` exists for this run's config hash."""
        return _marker_hash(self.marker) == self.config_hash

    def step_finished(self, step: Step) -> bool:
        return _marker_hash(self.step_marker(step)) == self.config_hash


def _marker_hash(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("config_hash")
    except (json.JSONDecodeError, OSError):
        return None


def sample_settings(config: StudyConfig, spec: SampleSpec) -> dict:
    """Generator settings of an OOD sample: the nominal sample's with ``spec``'s over them."""
    nominal = config.sample.settings if config.sample is not None else {}
    return {**nominal, **spec.settings}


def sample_directory(config: StudyConfig, name: str, spec: SampleSpec, settings: dict) -> Path:
    """Where a sample lives: its ``output`` or ``cache_dir/<name>-<hash of the request>``."""
    if spec.output:
        return Path(spec.output)
    request = {"num_jets": spec.num_jets, "seed": spec.seed, "shard_size": spec.shard_size,
               "settings": settings, "test_only": name != "nominal"}  # fmt: skip
    return Path(config.cache_dir) / f"{name}-{stable_hash(request)}"


def nominal_directory(config: StudyConfig) -> Path | None:
    if config.sample is None:
        return None
    return sample_directory(config, "nominal", config.sample, config.sample.settings)


def ood_directories(config: StudyConfig) -> dict[str, Path]:
    return {
        name: sample_directory(config, name, spec, sample_settings(config, spec))
        for name, spec in config.ood.items()
    }


class StudyPlanner:
    """Builds every run's step configs and commands from a :class:`StudyConfig`.

    Args:
        config: the study.

    Example::

        planner = StudyPlanner(StudyConfig.from_yaml("configs/study/lambda_scan_small.yaml"))
        for run in planner.runs:
            print(run.run_id, [step.name for step in run.steps])
    """

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.base = self._base_config()
        self.runs = [self._plan_run(spec) for spec in expand_grid(config)]

    def _base_config(self) -> dict:
        config = self.config
        base: dict = {}
        if config.base_config:
            path = Path(config.base_config)
            if not path.is_file():
                raise FileNotFoundError(f"base_config {path} of study {config.name} does not exist")
            base = yaml.safe_load(path.read_text()) or {}
        base = deep_merge(base, config.teacher)
        for key in ("trainer", "model", "data"):
            if key not in base:
                raise ValueError(
                    f"the teacher config (base_config {config.base_config} with the study's "
                    f"teacher over it) has no {key!r} section"
                )
        nominal = nominal_directory(config)
        if nominal is not None:
            init_args = base["data"].setdefault("init_args", {})
            for split in ("train", "val", "test"):
                init_args[f"{split}_files"] = str(nominal / split / "*.root")
        return base

    # -- teacher -----------------------------------------------------------------------------

    def _network(self, architecture: str) -> dict:
        if architecture == "base":
            return copy.deepcopy(self.base["model"]["init_args"]["network"])
        return copy.deepcopy(self.config.architectures[architecture])

    def _symmetry(self, spec: RunSpec) -> dict | None:
        if spec.weight == 0:
            return None
        init_args = {**copy.deepcopy(self.config.symmetry), "weight": spec.weight,
                     "group": spec.group, "mode": spec.mode}  # fmt: skip
        return {"class_path": "softsymlit.symmetry.SoftSymmetryPenalty", "init_args": init_args}

    def _loggers(self, spec: RunSpec, step: str, directory: Path, wandb: bool) -> list[dict]:
        loggers: list[dict] = [
            {"class_path": "lightning.pytorch.loggers.CSVLogger",
             "init_args": {"save_dir": str(directory), "name": "csv", "version": 0}},
        ]  # fmt: skip
        if wandb and self.config.wandb:
            run_name = f"{spec.run_id}.{step}"
            loggers.append({
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"project": self.config.wandb_project,
                              "group": self.config.wandb_group, "name": run_name,
                              "id": f"{self.config.name}-{run_name}-{stable_hash(spec.as_dict())}"
                              .replace(".", "-"),
                              "save_dir": str(directory), "offline": True, "job_type": step,
                              "tags": [f"lambda={spec.weight:g}", f"group={spec.group}",
                                       f"mode={spec.mode}", f"seed={spec.seed}"]},
            })  # fmt: skip
        return loggers

    def _analysis_callbacks(self, directory: Path) -> list[dict]:
        config = self.config
        callbacks = []
        if config.violation is not None:
            callbacks.append({"class_path": "softsymlit.symmetry.SymmetryViolation",
                              "init_args": dict(config.violation)})  # fmt: skip
        # Measured once, on the final weights.
        schedule = {"every_n_epochs": 0, "at_fit_end": True}
        if config.hessian is not None:
            callbacks.append({"class_path": "softsymlit.analysis.HessianCallback",
                              "init_args": {**config.hessian, **schedule}})  # fmt: skip
        if config.robustness is not None:
            callbacks.append({"class_path": "softsymlit.analysis.RobustnessCallback",
                              "init_args": {**config.robustness, **schedule}})  # fmt: skip
        callbacks.append({"class_path": "softsymlit.study.recorder.StudyMeasurements",
                          "init_args": {"path": str(directory / MEASUREMENTS_FILE)}})  # fmt: skip
        return callbacks

    @staticmethod
    def _kept_callbacks(trainer: dict) -> list[dict]:
        """The base config's callbacks without checkpointing, progress bars and analysis
        callbacks, which the study sets itself."""
        dropped = ("ModelCheckpoint", "ProgressBar", "HessianCallback", "RobustnessCallback",
                   "SymmetryViolation")  # fmt: skip
        kept = []
        for callback in trainer.get("callbacks") or []:
            class_path = callback.get("class_path", "") if isinstance(callback, dict) else ""
            if not any(class_path.endswith(name) for name in dropped):
                kept.append(copy.deepcopy(callback))
        return kept

    def teacher_config(self, spec: RunSpec, directory: Path) -> dict:
        """The full LightningCLI config of the teacher fit of ``spec``."""
        config = copy.deepcopy(self.base)
        trainer = config["trainer"]
        callbacks = self._kept_callbacks(trainer)
        callbacks += self._analysis_callbacks(directory)
        # The final weights are what the measurements, the OOD tests and the students see.
        checkpoint = {"dirpath": str(directory / "checkpoints"), "save_last": True,
                      "save_top_k": 0, "monitor": None}  # fmt: skip
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": checkpoint})  # fmt: skip
        trainer.update({"logger": self._loggers(spec, "teacher", directory, wandb=True),
                        "callbacks": callbacks, "default_root_dir": str(directory),
                        "enable_progress_bar": False})  # fmt: skip
        model = config["model"].setdefault("init_args", {})
        model["network"] = self._network(spec.architecture)
        model["symmetry"] = self._symmetry(spec)
        config["data"].setdefault("init_args", {})["seed"] = spec.seed
        config["seed_everything"] = spec.seed
        config["test_after_fit"] = True
        return config

    # -- evaluation --------------------------------------------------------------------------

    def evaluation_config(self, teacher: dict, spec: RunSpec, name: str, files: str, directory):
        """The ``softsymlit test`` config of the final teacher on ``files``."""
        config = copy.deepcopy(teacher)
        config.pop("test_after_fit", None)
        trainer = config["trainer"]
        trainer = {k: v for k, v in trainer.items() if k not in ("callbacks", "logger")}
        trainer.update(copy.deepcopy(self.config.evaluation))
        trainer.update({"logger": self._loggers(spec, name, directory, wandb=False),
                        "default_root_dir": str(directory), "enable_progress_bar": False,
                        "enable_checkpointing": False})  # fmt: skip
        config["trainer"] = trainer
        config["data"]["init_args"]["test_files"] = files
        return config

    # -- distillation ------------------------------------------------------------------------

    def distill_config(self, spec: RunSpec, teacher: dict, run_dir: Path) -> dict:
        """The ``softsymlit distill`` chain of the final teacher into the students."""
        settings = copy.deepcopy(self.config.distillation or {})
        students = settings.pop("students", None)
        if not students:
            raise ValueError(
                f"study {self.config.name}: distillation needs a non-empty 'students' list"
            )
        own = ("callbacks", "logger", "default_root_dir", "enable_progress_bar")
        trainer = {k: v for k, v in teacher["trainer"].items() if k not in own}
        trainer = deep_merge(trainer, settings.pop("trainer", {}))
        chain = {
            "name": "distill",
            "root_dir": str(run_dir),
            "seed": spec.seed,
            "group": self.config.wandb_group,
            "wandb": self.config.wandb,
            "wandb_project": self.config.wandb_project,
            "evaluation_split": "test",
            "evaluation_jets": 10**9,
            "trainer": trainer,
            "data": copy.deepcopy(teacher["data"]),
            "teachers": [{"name": "teacher",
                          "checkpoint": str(run_dir / "teacher" / "checkpoints" / "last.ckpt"),
                          "network": self._network(spec.architecture)}],
            "students": students,
        }  # fmt: skip
        chain.update(settings)
        return chain

    # -- runs --------------------------------------------------------------------------------

    def _plan_run(self, spec: RunSpec) -> PlannedRun:
        directory = self.config.directory / "runs" / spec.run_id
        configs = directory / "configs"
        teacher_dir = directory / "teacher"
        teacher = self.teacher_config(spec, teacher_dir)
        steps = [Step("teacher", teacher_dir, {configs / "teacher.yaml": teacher},
                      [["fit", f"--config={configs / 'teacher.yaml'}"]])]  # fmt: skip

        checkpoint = teacher_dir / "checkpoints" / "last.ckpt"
        samples = {}
        if self.config.train_evaluation:
            samples["train"] = teacher["data"]["init_args"].get("train_files")
        samples.update({name: str(path / "test" / "*.root")
                        for name, path in ood_directories(self.config).items()})  # fmt: skip
        evaluations, invocations = {}, []
        for name, files in samples.items():
            if files is None:
                continue
            path = configs / f"eval_{name}.yaml"
            evaluations[path] = self.evaluation_config(teacher, spec, f"eval_{name}", files,
                                                       directory / "eval" / name)  # fmt: skip
            invocations.append(["test", f"--config={path}", f"--ckpt_path={checkpoint}"])
        if invocations:
            steps.append(Step("evaluate", directory / "eval", evaluations, invocations))

        if self.config.distillation is not None:
            chain = self.distill_config(spec, teacher, directory)
            path = configs / "distill.yaml"
            steps.append(Step("distill", directory / "distill", {path: chain},
                              [["distill", f"--config={path}"]]))  # fmt: skip
        config_hash = stable_hash({
            "spec": spec.as_dict(),
            "steps": [(s.name, {str(p): c for p, c in s.configs.items()}, s.invocations)
                      for s in steps],
        })  # fmt: skip
        return PlannedRun(spec, directory, steps, config_hash)

    def write_configs(self, run: PlannedRun) -> None:
        """Writes the run's step configs and ``steps.sh`` (one standalone ``softsymlit`` command
        per line, in order)."""
        for step in run.steps:
            for path, content in step.configs.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(yaml.safe_dump(content, sort_keys=False))
        lines = ["#!/bin/sh", "# The steps of this run, in order; each is an ordinary softsymlit "
                 "invocation.", "set -e"]  # fmt: skip
        lines += [shlex.join(c) for step in run.steps for c in step.standalone_commands()]
        (run.directory / "steps.sh").write_text("\n".join(lines) + "\n")

    def run(self, run_id: str) -> PlannedRun:
        """The planned run named ``run_id``.

        Raises:
            KeyError: no such run; the message lists the run ids.
        """
        for run in self.runs:
            if run.run_id == run_id:
                return run
        raise KeyError(
            f"study {self.config.name} has no run {run_id!r}; runs: "
            f"{', '.join(r.run_id for r in self.runs)}"
        )


__all__ = [
    "PlannedRun",
    "RunSpec",
    "SampleSpec",
    "Step",
    "StudyConfig",
    "StudyPlanner",
    "deep_merge",
    "expand_grid",
]
