"""The Lightning data module over ROOT jet files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from softsymlit.data.dataset import JetStream
from softsymlit.data.schemas import Schema

log = logging.getLogger(__name__)

Files = str | Sequence[str] | None


class _EpochLoader(DataLoader):
    """A DataLoader that tells its :class:`JetStream` the epoch before every pass, so that
    workers started for the pass shuffle with it."""

    def __init__(self, dataset: JetStream, epoch: Callable[[], int], **kwargs) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch = epoch

    def __iter__(self):
        self.dataset.epoch = self._epoch()
        return super().__iter__()

    def __len__(self) -> int:
        return self.dataset.batches_per_epoch(max(self.num_workers, 1))


class JetDataModule(pl.LightningDataModule):
    """Streams train/val/test/predict jets from ROOT files (paths or globs).

    Batches follow the data contract (``p4``, ``mask``, ``label``, ``weight``; see
    :class:`~softsymlit.data.dataset.JetStream`). Under DDP each global rank reads an equal,
    disjoint share. Training data are shuffled (file order and a jet buffer) from ``seed`` and
    the epoch; the other splits are read in file order.

    Args:
        train_files: training files (paths or globs).
        val_files: validation files.
        test_files: test files.
        predict_files: files for ``predict`` (default: the test files).
        schema: ``"jetclass"``, ``"atlas"``, or a :class:`Schema` / mapping of its fields.
        max_particles: constituent slots per jet.
        batch_size: jets per batch.
        num_workers: DataLoader worker processes.
        shuffle_buffer: jets held for shuffling the training data.
        seed: shuffling seed.
        step_size: entries read from a file per chunk.
        drop_nonfinite: drop jets with NaN/inf momenta (logged) instead of raising.
        pin_memory: pin host memory for faster GPU transfer.
        read_ahead: chunks each stream reads ahead in a background thread (0: none).

    Example::

        data = JetDataModule(train_files="data/top/train/*.root", val_files="data/top/val/*.root")
    """

    def __init__(
        self,
        train_files: Files = None,
        val_files: Files = None,
        test_files: Files = None,
        predict_files: Files = None,
        schema: str | Schema = "jetclass",
        max_particles: int = 128,
        batch_size: int = 256,
        num_workers: int = 0,
        shuffle_buffer: int = 20000,
        seed: int = 0,
        step_size: int = 10000,
        drop_nonfinite: bool = False,
        pin_memory: bool = False,
        read_ahead: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.files = {
            "train": train_files,
            "val": val_files,
            "test": test_files,
            "predict": predict_files if predict_files is not None else test_files,
        }
        self.datasets: dict[str, JetStream] = {}

    def dataset(self, split: str) -> JetStream:
        """The (cached) stream of ``split``, checked on first use."""
        if split not in self.datasets:
            files = self.files.get(split)
            if files is None:
                raise ValueError(f"no {split}_files configured for the data module")
            h = self.hparams
            self.datasets[split] = JetStream(
                files,
                schema=h.schema,
                max_particles=h.max_particles,
                batch_size=h.batch_size,
                shuffle=split == "train",
                shuffle_buffer=h.shuffle_buffer,
                seed=h.seed,
                step_size=h.step_size,
                drop_nonfinite=h.drop_nonfinite,
                read_ahead=h.read_ahead,
            )
        return self.datasets[split]

    @override
    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in splits.get(stage, ("predict",)):
            if split == "val" and self.files["val"] is None:
                continue
            self.dataset(split)

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        if self.trainer is not None:
            dataset.set_distributed(self.trainer.global_rank, self.trainer.world_size)
        return _EpochLoader(
            dataset,
            epoch=self._current_epoch,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
        )

    def _current_epoch(self) -> int:
        """The epoch the next pass belongs to.

        ``trainer.current_epoch`` counts completed epochs and is brought up to date only after a
        resumed fit has created its training iterator; the processed-epoch count is already right
        then, and equals ``current_epoch`` at every other moment an iterator is created.
        """
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_progress.current.processed

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    @override
    def val_dataloader(self) -> DataLoader:
        if self.files["val"] is None:
            return []
        return self._loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def analysis_batches(
        self, split: str = "train", num_jets: int = 1024, batch_size: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """The first ``num_jets`` jets of ``split`` in file order, unshuffled, as batches.

        The same call gives the same jets on every rank and in every epoch, which makes this
        the fixed analysis set of the curvature and robustness measurements.
        """
        source = self.dataset(split)
        stream = JetStream(
            source.files,
            schema=source.schema,
            max_particles=source.max_particles,
            batch_size=batch_size or source.batch_size,
            step_size=source.step_size,
            drop_nonfinite=source.drop_nonfinite,
        )
        batches, taken = [], 0
        for batch in stream:
            keep = min(len(batch["label"]), num_jets - taken)
            batches.append({key: value[:keep] for key, value in batch.items()})
            taken += keep
            if taken >= num_jets:
                break
        if taken < num_jets:
            log.warning("analysis set of %s holds %d jets, fewer than the %d asked for",
                        split, taken, num_jets)  # fmt: skip
        return batches
