"""The ``softsymlit`` command: LightningCLI subcommands plus ``generate``.

``softsymlit fit|validate|test|predict`` behave as LightningCLI's (``--config``,
``--print_config``, dotted overrides, ``class_path``/``init_args``); ``softsymlit generate``
writes a Pythia 8 + FastJet sample; ``softsymlit distill`` runs a teacher → student chain
(:mod:`softsymlit.study.chain`); ``softsymlit study run|plan|report`` runs λ-scan studies
(:mod:`softsymlit.study.runner`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

log = logging.getLogger(__name__)


class SaveConfigToLoggers(SaveConfigCallback):
    """Saves the resolved config next to the run (overwriting one left by an earlier run in the
    same folder) and records it in the config of every W&B run."""

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, format="yaml", skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import yaml

                logger.experiment.config.update(yaml.safe_load(config), allow_val_change=True)


class SoftSymCLI(LightningCLI):
    """LightningCLI with the project's defaults; ``fit`` tests the best checkpoint afterwards
    when test files are configured (``--test_after_fit false`` to skip)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_callback", SaveConfigToLoggers)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="after fit, run test on the best checkpoint if the data module has test files",
        )

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        datamodule = self.datamodule
        if datamodule is None or getattr(datamodule, "files", {}).get("test") is None:
            return
        best = (
            self.trainer.checkpoint_callback.best_model_path
            if self.trainer.checkpoint_callback
            else ""
        )
        self.trainer.test(self.model, datamodule=datamodule, ckpt_path=best or None)


def generate(
    output: str = "data/top_tagging",
    num_jets: int = 20000,
    seed: int = 12345,
    shard_size: int = 1000,
    workers: int = 1,
    pt_min: float = 550.0,
    pt_max: float = 650.0,
    eta_max: float = 2.0,
    jet_radius: float = 0.8,
    mpi: bool = True,
    hadronisation: bool = True,
    tune: int = 14,
    train_fraction: float = 0.7,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    pythia_settings: list[str] | None = None,
) -> None:
    """Generate top (hadronic tt̄) and QCD jets with Pythia 8 at 14 TeV, cluster with FastJet
    anti-kT, and write the JetClass ROOT layout. Reruns with the same settings skip what exists.

    Args:
        output: folder of the sample.
        num_jets: total jets (half top, half QCD).
        seed: sample seed.
        shard_size: jets per file.
        workers: worker processes.
        pt_min: lower edge of the jet pT window (GeV).
        pt_max: upper edge of the jet pT window (GeV).
        eta_max: largest jet |eta|.
        jet_radius: anti-kT R.
        mpi: multi-parton interactions.
        hadronisation: hadronisation (off clusters partons).
        tune: Pythia Tune:pp index.
        train_fraction: fraction of files for training.
        val_fraction: fraction of files for validation.
        test_fraction: fraction of files for testing.
        pythia_settings: extra Pythia settings lines.
    """
    from softsymlit.data.generate import GeneratorSettings, generate_sample

    settings = GeneratorSettings(
        pt_min=pt_min,
        pt_max=pt_max,
        eta_max=eta_max,
        jet_radius=jet_radius,
        mpi=mpi,
        hadronisation=hadronisation,
        tune=tune,
        extra=tuple(pythia_settings or ()),
    )
    fractions = {"train": train_fraction, "val": val_fraction, "test": test_fraction}
    manifest = generate_sample(output, num_jets, seed, shard_size, fractions, settings, workers)
    files = {split: len(paths) for split, paths in manifest["files"].items()}
    log.info("sample in %s: %s files per split", Path(output), files)


def _generate_main(args: list[str]) -> None:
    parser = ArgumentParser(
        prog="softsymlit generate", description=(generate.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(generate)
    config = parser.parse_args(args)
    config.pop("config", None)
    generate(**{k: v for k, v in vars(config).items() if not k.startswith("__")})


def _distill_main(args: list[str]) -> None:
    from softsymlit.study.chain import Chain, ChainConfig

    parser = ArgumentParser(
        prog="softsymlit distill",
        description="Train teachers and distil them into students, stage by stage; finished "
        "stages are skipped and interrupted ones resumed.",
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(ChainConfig, fail_untyped=False)
    parser.add_argument("--dry_run", type=bool, default=False,
                        help="log every stage's command line and run nothing")  # fmt: skip
    config = parser.parse_args(args)
    dry_run = config.pop("dry_run")
    config.pop("config", None)
    content = config.as_dict()
    for key in ("trainer", "data", "distillation"):
        content[key] = _plain(content[key])
    chain = Chain(ChainConfig.from_dict(content))
    if dry_run:
        for stage, command in zip(chain.stages, chain.commands(), strict=True):
            log.info("%s: %s", stage.name, " ".join(command))
        return
    summary = chain.run()
    log.info("chain summary: %s", chain.directory / "chain_summary.json")
    for name, value in summary.get("metrics", {}).items():
        log.info("  %s = %.4g", name, value)


def _plain(value):
    """Dotted command-line overrides of mapping-typed keys arrive as strings; read them as YAML
    scalars (``--trainer.max_epochs 3`` is the number 3)."""
    import yaml

    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        parsed = yaml.safe_load(value) if value else value
        return parsed if isinstance(parsed, (int, float, bool)) or parsed is None else value
    return value


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``softsymlit`` command."""
    args = sys.argv[1:] if args is None else list(args)
    logging.basicConfig(level=os.environ.get("SOFTSYMLIT_LOG", "INFO"), format="%(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    # The streams split their work over data-loader workers themselves, so their length is exact.
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    if args and args[0] == "generate":
        _generate_main(args[1:])
        return
    if args and args[0] == "distill":
        _distill_main(args[1:])
        return
    if args and args[0] == "study":
        from softsymlit.study.runner import study_main

        raise SystemExit(study_main(args[1:]))
    SoftSymCLI(args=args)


if __name__ == "__main__":
    main()
