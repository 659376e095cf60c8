"""The chain report: per-stage metrics gathered into ``chain_summary.json`` with the
``compress/…`` measures."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from softsymlit.study.callbacks import write_json_atomically
from softsymlit.study.compress import epochs_to_fraction, network_auc, pruning_curve

if TYPE_CHECKING:
    from softsymlit.study.chain import Chain, Stage

log = logging.getLogger(__name__)


def _instantiate(key: str, config: dict, base: type):
    from softsymlit.models.distillation import instantiate_from_config

    return instantiate_from_config(key, config, base)


def _final(stage_result: dict, metric: str) -> float | None:
    """``test/<metric>`` when the test ran, else the last validation value."""
    if f"test/{metric}" in stage_result.get("test", {}):
        return stage_result["test"][f"test/{metric}"]
    history = [e for e in stage_result.get("history", []) if f"val/{metric}" in e]
    return history[-1][f"val/{metric}"] if history else None


def _last_val(stage_result: dict, metric: str = "auc") -> float | None:
    history = [e for e in stage_result.get("history", []) if f"val/{metric}" in e]
    return history[-1][f"val/{metric}"] if history else None


def _read_result(stage: Stage) -> dict[str, Any]:
    if not stage.result_path.is_file():
        raise FileNotFoundError(f"stage {stage.name} has no result yet ({stage.result_path})")
    return json.loads(stage.result_path.read_text())


class _Evaluation:
    """The chain's evaluation batches, read once."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._batches = None

    @property
    def batches(self):
        if self._batches is None:
            import lightning.pytorch as pl

            config = self.chain.config
            data = _instantiate("data", config.data, pl.LightningDataModule)
            self._batches = data.analysis_batches(config.evaluation_split, config.evaluation_jets)
        return self._batches


def _teacher_network(chain: Chain, spec, checkpoint: Path) -> nn.Module:
    from softsymlit.models.distillation import load_teacher

    network_config = spec.network or (spec.model or {}).get("init_args", {}).get("network")
    network = _instantiate("network", network_config, nn.Module) if network_config else None
    return load_teacher(checkpoint, network)


def _signal_class(model: dict | None) -> int:
    return int(((model or {}).get("init_args") or {}).get("signal_class", 1))


def _pruning(chain: Chain, spec, checkpoint: Path, key: str, evaluation: _Evaluation):
    """The teacher's pruning curve, cached in the chain folder next to the stages."""
    config = chain.config
    request = {"checkpoint_key": key, "sparsities": list(config.pruning_sparsities),
               "split": config.evaluation_split, "jets": config.evaluation_jets}  # fmt: skip
    cache = chain.directory / f"pruning-{spec.name}-{key}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("request") == request:
            return cached["curve"]
    network = _teacher_network(chain, spec, checkpoint)
    curve = pruning_curve(network, evaluation.batches, config.pruning_sparsities,
                          _signal_class(spec.model))  # fmt: skip
    if chain.is_leader:
        write_json_atomically(cache, {"request": request, "curve": curve})
    return curve


def _count_parameters(network_config: dict) -> int:
    from softsymlit.models.networks import count_parameters

    return count_parameters(_instantiate("network", network_config, nn.Module))


def _teacher_entry(chain: Chain, spec, stage: Stage | None, evaluation: _Evaluation) -> dict:
    if stage is not None:
        result = _read_result(stage)
        checkpoint, key = stage.last_checkpoint, stage.config_hash
        entry = {"stage_dir": str(stage.directory), "checkpoint": str(checkpoint),
                 "val_auc": _last_val(result), "test_auc": result["test"].get("test/auc"),
                 "auc": _final(result, "auc"), "history": result["history"]}  # fmt: skip
    else:
        checkpoint, key = Path(spec.checkpoint), "checkpoint"
        auc = network_auc(_teacher_network(chain, spec, checkpoint), evaluation.batches,
                          _signal_class(spec.model))  # fmt: skip
        entry = {"stage_dir": None, "checkpoint": str(checkpoint), "history": [],
                 f"{chain.config.evaluation_split}_auc": auc, "auc": auc}  # fmt: skip
        entry.setdefault("val_auc", auc)
        entry.setdefault("test_auc", None)
    network = _teacher_network(chain, spec, checkpoint)
    from softsymlit.models.networks import count_parameters

    entry["num_parameters"] = count_parameters(network)
    entry["pruning"] = (
        _pruning(chain, spec, checkpoint, key, evaluation)
        if chain.config.pruning_sparsities
        else []
    )
    entry["students"] = {}
    return entry


def _student_entry(chain: Chain, stage: Stage, teacher: dict) -> dict:
    result = _read_result(stage)
    auc = _final(result, "auc")
    network_config = stage.config["model"]["init_args"]["network"]
    target = chain.config.efficiency_fraction * teacher["val_auc"] if teacher["val_auc"] else None
    return {
        "stage_dir": str(stage.directory),
        "checkpoint": str(stage.last_checkpoint),
        "num_parameters": _count_parameters(network_config),
        "val_auc": _last_val(result),
        "test_auc": result["test"].get("test/auc"),
        "auc": auc,
        "efficiency": auc / teacher["auc"] if auc is not None and teacher["auc"] else None,
        "epochs_to_target": (
            epochs_to_fraction(result["history"], target) if target is not None else None
        ),
        "agreement": result["history"][-1].get("distill/val_agreement")
        if result["history"]
        else None,
        "resumed": result.get("resumed", False),
        "history": result["history"],
    }


def _flat_metrics(teachers: dict[str, dict]) -> dict[str, float]:
    metrics = {}
    for name, teacher in teachers.items():
        metrics[f"compress/{name}/teacher_auc"] = teacher["auc"]
        for point in teacher["pruning"]:
            metrics[f"compress/{name}/pruned_auc@{point['sparsity']:g}"] = point["auc"]
            metrics[f"compress/{name}/pruned_retained@{point['sparsity']:g}"] = point["retained"]
        for student, entry in teacher["students"].items():
            prefix = f"compress/{name}/{student}"
            metrics[f"{prefix}/auc"] = entry["auc"]
            metrics[f"{prefix}/efficiency"] = entry["efficiency"]
            metrics[f"{prefix}/num_parameters"] = entry["num_parameters"]
            if entry["epochs_to_target"] is not None:
                metrics[f"{prefix}/epochs_to_target"] = entry["epochs_to_target"]
    return {k: v for k, v in metrics.items() if v is not None}


def chain_summary(chain: Chain) -> dict[str, Any]:
    """The summary of a chain whose stages have all finished; see
    :meth:`~softsymlit.study.Chain.summary`."""
    evaluation = _Evaluation(chain)
    teacher_stages = {s.teacher: s for s in chain.stages if s.kind == "teacher"}
    teachers: dict[str, dict] = {}
    for spec in chain.config.teachers:
        teachers[spec.name] = _teacher_entry(chain, spec, teacher_stages.get(spec.name),
                                             evaluation)  # fmt: skip
    for stage in chain.stages:
        if stage.kind == "student":
            teacher = teachers[stage.teacher]
            teacher["students"][stage.student] = _student_entry(chain, stage, teacher)
    return {
        "name": chain.config.name,
        "group": chain.group,
        "directory": str(chain.directory),
        "efficiency_fraction": chain.config.efficiency_fraction,
        "evaluation_split": chain.config.evaluation_split,
        "teachers": teachers,
        "metrics": _flat_metrics(teachers),
    }


def _path_key(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]


def log_summary_to_wandb(chain: Chain, summary: dict[str, Any]) -> None:
    """Logs the ``compress/…`` measures and the plot to an offline W&B run of the chain's group
    (``job_type="report"``), one per chain folder: a rerun resumes it."""
    import wandb

    run = wandb.init(
        project=chain.config.wandb_project, group=chain.group, name=f"{chain.config.name}-report",
        id=f"{chain.config.name}-report-{_path_key(chain.directory)}",
        job_type="report", dir=str(chain.directory), mode="offline", resume="allow",
        reinit="create_new",
    )  # fmt: skip
    try:
        run.log(summary["metrics"])
        plot = chain.directory / "compressibility.png"
        if plot.is_file():
            run.log({"compress/plot": wandb.Image(str(plot))})
    finally:
        run.finish()


__all__ = ["chain_summary", "log_summary_to_wandb"]
