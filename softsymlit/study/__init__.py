"""Orchestration of λ scans and teacher→student chains."""

from softsymlit.study.callbacks import RandomStateCheckpoint, StageRecorder
from softsymlit.study.chain import (
    Chain,
    ChainConfig,
    Stage,
    StageFailed,
    StudentSpec,
    TeacherSpec,
    run_chain,
)
from softsymlit.study.compress import epochs_to_fraction, network_auc, pruned_copy, pruning_curve
from softsymlit.study.grid import StudyConfig, StudyPlanner
from softsymlit.study.runner import StudyRunner

__all__ = [
    "Chain",
    "ChainConfig",
    "RandomStateCheckpoint",
    "Stage",
    "StageFailed",
    "StageRecorder",
    "StudentSpec",
    "StudyConfig",
    "StudyPlanner",
    "StudyRunner",
    "TeacherSpec",
    "epochs_to_fraction",
    "network_auc",
    "pruned_copy",
    "pruning_curve",
    "run_chain",
]
