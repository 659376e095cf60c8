"""Callbacks the chain adds to every stage: a metrics record that survives resuming, and the
random state carried through checkpoints."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

log = logging.getLogger(__name__)

HISTORY_PREFIXES = ("val/", "distill/val_")
"""Metrics recorded after every validation epoch."""


def write_json_atomically(path: Path, content: Any) -> None:
    """Write ``content`` as JSON to ``path`` through a temporary file and a rename, so that a
    reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True))
    os.replace(temporary, path)


def _scalars(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in sorted(metrics.items())
        if name.startswith(prefixes) and (not torch.is_tensor(value) or value.numel() == 1)
    }


class StageRecorder(Callback):
    """Records a fit's validation metrics epoch by epoch, and its final train and test metrics,
    in ``directory/stage_metrics.json``; appends one line per process and launch to
    ``directory/launches.jsonl``.

    The per-epoch history is part of the callback state, so it is saved in checkpoints and a
    resumed fit continues it instead of starting a new one (the CSV logger of a resumed fit
    starts a new file). Only global rank zero writes the metrics file; every rank writes its
    launch line.

    Args:
        directory: the stage's run directory.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.history: list[dict[str, float]] = []
        self.train: dict[str, float] = {}
        self.test: dict[str, float] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        line = {"stage": stage, "global_rank": trainer.global_rank, "pid": os.getpid(),
                "world_size": trainer.world_size}  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "launches.jsonl").open("a") as file:
            file.write(json.dumps(line) + "\n")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        entry.update(_scalars(trainer.callback_metrics, HISTORY_PREFIXES))
        self.history.append(entry)
        self._write(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train = _scalars(trainer.callback_metrics, ("train/",))
        self._write(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test = _scalars(trainer.callback_metrics, ("test/", "distill/test_"))
        self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            content = {"history": self.history, "train": self.train, "test": self.test}
            write_json_atomically(self.directory / "stage_metrics.json", content)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])


class RandomStateCheckpoint(Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) random states in every checkpoint and
    restores them when a fit resumes, so that a resumed fit draws the same random numbers
    (sampled symmetry transformations, dropout) as one that was never interrupted.

    Limitation: under DDP the checkpoint holds global rank zero's states, which every rank
    restores; ranks that drew different numbers before the interruption draw the same ones
    after it.
    """

    @override
    def state_dict(self) -> dict[str, Any]:
        # Plain containers and tensors only, so that checkpoints stay loadable with
        # ``weights_only=True``.
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss,
                       cached_gaussian]  # fmt: skip
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        name, keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss,
                             cached_gaussian))  # fmt: skip
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


__all__ = ["RandomStateCheckpoint", "StageRecorder", "write_json_atomically"]
