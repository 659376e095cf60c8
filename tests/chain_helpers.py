"""A callback for the chain tests that widens the window in which a stage can be killed."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class PauseAfterFirstEpoch(Callback):
    """Sleeps ``seconds`` before every training epoch after the first; changes nothing else."""

    def __init__(self, seconds: float = 3.0) -> None:
        self.seconds = seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= 1:
            time.sleep(self.seconds)
