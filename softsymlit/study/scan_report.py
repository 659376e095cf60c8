"""The λ-scan report: one row per run read from the runs' files, statistics and figures.

Nothing is recomputed: every value comes from a file a run wrote — the teacher's and the
evaluation steps' ``metrics.csv`` (``test/…``, ``hessian/…``, ``robustness/…``,
``test/symmetry_violation/…``), the teacher's ``measurements.json`` (the spectral density) and
the distillation chain's ``chain_summary.json`` (student AUCs and efficiencies). A run is
``finished`` (its ``run.json`` matches the config), ``failed`` (``failed.json`` names the step
and its log), ``incomplete`` (started, interrupted; the log of the step that did not finish) or
``pending``. Statistics use finished runs only.

Written to ``<study>/report/``: ``results.csv`` and ``results.md`` (one row per run),
``per_lambda.csv`` (mean ± standard error over seeds), ``correlations.csv`` (Spearman ρ of every
complexity measure with every outcome, with percentile bootstrap intervals), ``report.md``
(all tables and the findings) and the figures ``complexity_vs_lambda.png``,
``outcome_vs_complexity.png`` and ``spectral_density.png``.

Limitation: the report goes to files only; it is not logged to the study's W&B group (the
teacher and student runs are).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

from softsymlit.study.grid import MEASUREMENTS_FILE, PlannedRun, StudyConfig, StudyPlanner

log = logging.getLogger(__name__)

COMPLEXITY = {
    "hessian_top_eigenvalue": 1,
    "hessian_trace": 1,
    "hessian_effective_dimension": 1,
    "hessian_near_zero_count": -1,
}
"""Complexity measures and the sign of "more complex": more near-zero modes (approximate
degeneracies) mean a flatter, simpler solution."""

FINDINGS = {
    "generalisation": {"gap_auc": 1, "gap_loss": 1, "ood_auc_mean": -1},
    "robustness": {"robustness_mean_delta": 1},
    "distillation": {"distill_efficiency_mean": -1},
}
"""Outcomes of each finding and the sign of "worse": a larger train–test gap, a lower OOD AUC,
a larger output change under perturbations, a lower distillation efficiency."""

FINDING_TEXT = {
    "generalisation": "lower-complexity solutions generalise better (smaller train–test gap, "
    "higher out-of-distribution AUC)",
    "robustness": "lower-complexity solutions are more robust (smaller output change under "
    "input perturbations)",
    "distillation": "lower-complexity solutions distil more efficiently (higher student AUC / "
    "teacher AUC)",
}

SPEC_COLUMNS = ["run_id", "status", "log", "weight", "group", "mode", "architecture", "seed"]


# -- reading runs ------------------------------------------------------------------------------


def read_metrics_csv(path: Path) -> dict[str, float]:
    """The last logged value of every column of a Lightning ``metrics.csv``."""
    values: dict[str, float] = {}
    if not path.is_file():
        return values
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            for key, text in row.items():
                if key and text not in (None, ""):
                    try:
                        values[key] = float(text)
                    except ValueError:
                        continue
    return values


def _metrics_path(step_dir: Path) -> Path:
    return step_dir / "csv" / "version_0" / "metrics.csv"


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def run_status(run: PlannedRun) -> tuple[str, str]:
    """``(status, log path)`` of a run: ``finished``, ``failed``, ``incomplete`` or ``pending``."""
    if run.finished():
        return "finished", ""
    failure = _json(run.failure)
    if failure is not None and failure.get("config_hash") == run.config_hash:
        return "failed", str(failure.get("log", ""))
    for step in run.steps:
        if not run.step_finished(step):
            log_path = run.log_path(step)
            if log_path.is_file():
                return "incomplete", str(log_path)
            break
    return "pending", ""


def _strength(value: str) -> str:
    return value.replace("/", "_").replace("-", "m")


def collect_run(run: PlannedRun, ood_names: Sequence[str]) -> dict[str, Any]:
    """The report row of one run from its files (empty cells where a file is missing)."""
    status, log_path = run_status(run)
    row: dict[str, Any] = {"run_id": run.run_id, "status": status, "log": log_path,
                           **run.spec.as_dict()}  # fmt: skip
    teacher = read_metrics_csv(_metrics_path(run.directory / "teacher"))
    row["test_auc"] = teacher.get("test/auc")
    row["test_rej30"] = teacher.get("test/rej30")
    row["test_loss"] = teacher.get("test/task_loss")
    train = read_metrics_csv(_metrics_path(run.directory / "eval" / "train"))
    row["train_auc"] = train.get("test/auc")
    row["train_loss"] = train.get("test/task_loss")
    row["gap_auc"] = _difference(row["train_auc"], row["test_auc"])
    row["gap_loss"] = _difference(row["test_loss"], row["train_loss"])
    ood_aucs = []
    for name in ood_names:
        values = read_metrics_csv(_metrics_path(run.directory / "eval" / name))
        row[f"ood_{name}_auc"] = values.get("test/auc")
        row[f"ood_{name}_rej30"] = values.get("test/rej30")
        ood_aucs.append(values.get("test/auc"))
    row["ood_auc_mean"] = _mean(ood_aucs) if ood_names else None

    row["hessian_top_eigenvalue"] = teacher.get("hessian/lambda_1")
    row["hessian_trace"] = teacher.get("hessian/trace")
    row["hessian_effective_dimension"] = teacher.get("hessian/effective_dimension")
    row["hessian_near_zero_count"] = teacher.get("hessian/near_zero_count")
    row["hessian_near_zero_fraction"] = teacher.get("hessian/near_zero_fraction")
    row["hessian_symmetry_rayleigh_ratio"] = teacher.get("hessian/symmetry_rayleigh_ratio")

    deltas = []
    for key in sorted(teacher):
        parts = key.split("/")
        if parts[0] == "robustness" and len(parts) == 3 and parts[1] != "nominal":
            _, point, measure = parts
            if measure == "mean_abs_delta":
                row[f"robustness_{_strength(point)}_delta"] = teacher[key]
                deltas.append(teacher[key])
            elif measure == "auc":
                row[f"robustness_{_strength(point)}_auc"] = teacher[key]
    row["robustness_mean_delta"] = _mean(deltas) if deltas else None

    for key in sorted(teacher):
        if key.startswith("test/symmetry_violation/"):
            group, strength = key.split("/")[2:4]
            row[f"symmetry_violation_{group}_{_strength(strength)}"] = teacher[key]

    summary = _json(run.directory / "distill" / "chain_summary.json")
    if summary is not None:
        entry = summary["teachers"]["teacher"]
        row["distill_teacher_auc"] = entry.get("auc")
        efficiencies = []
        for name, student in entry.get("students", {}).items():
            row[f"student_{name}_auc"] = student.get("auc")
            row[f"student_{name}_efficiency"] = student.get("efficiency")
            efficiencies.append(student.get("efficiency"))
        row["distill_efficiency_mean"] = _mean(efficiencies)
        for point in entry.get("pruning", []):
            row[f"pruned_retained_{point['sparsity']:g}"] = point.get("retained")
    return row


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite and len(finite) == len(values) else None


def collect_runs(config: StudyConfig) -> tuple[list[PlannedRun], list[dict[str, Any]]]:
    """Every planned run and its report row."""
    planner = StudyPlanner(config)
    rows = [collect_run(run, list(config.ood)) for run in planner.runs]
    return planner.runs, rows


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every column, spec first, in the order first seen."""
    columns = list(SPEC_COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


# -- statistics --------------------------------------------------------------------------------


def _finite_pairs(x: Sequence[float | None], y: Sequence[float | None]):
    def finite(value: float | None) -> bool:
        return value is not None and math.isfinite(value)

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if finite(a) and finite(b)]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    array = np.asarray(pairs, dtype=float)
    return array[:, 0], array[:, 1]


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]`` indices drawn with replacement by ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of every row pair of ``x``, ``y`` (``[R, n]``): the Pearson correlation of the
    average ranks; NaN for a row whose ranks are constant."""
    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (rx * ry).sum(axis=1) / denominator, np.nan)


@dataclass
class Correlation:
    """Spearman ρ with a percentile bootstrap interval.

    Attributes:
        rho: ρ of the data (NaN for fewer than 3 pairs or constant ranks).
        low: lower end of the interval.
        high: upper end.
        n: pairs used (runs where both values exist).
        resamples: bootstrap resamples with a defined ρ.
    """

    rho: float
    low: float
    high: float
    n: int
    resamples: int


def spearman_bootstrap(
    x: Sequence[float | None],
    y: Sequence[float | None],
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.9,
) -> Correlation:
    """Spearman ρ of ``(x, y)`` over the runs where both are finite, and its percentile bootstrap
    interval at ``level``: runs resampled in pairs with :func:`bootstrap_indices`, resamples whose
    ranks are constant (ρ undefined) left out.

    Limitation: with fewer than about ten runs the percentile interval is too narrow (it cannot
    leave the range of ρ over resamples of so few points); read it as a lower bound on the
    uncertainty.
    """
    x, y = _finite_pairs(x, y)
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(math.nan, math.nan, math.nan, n, 0)
    rho = float(spearmanr(x, y).statistic)
    indices = bootstrap_indices(n, resamples, seed)
    values = spearman_rows(x[indices], y[indices])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Correlation(rho, math.nan, math.nan, n, 0)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Correlation(rho, float(low), float(high), n, len(values))


def mean_and_error(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, standard error ``s / √n`` (NaN for one value) and count of the finite values."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(finite) == 0:
        return math.nan, math.nan, 0
    error = float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
    return float(finite.mean()), error, len(finite)


def summary_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The columns averaged per λ: outcomes, complexity measures, symmetry violation and the
    students."""
    columns = columns_of(rows)
    head = ["test_auc", "test_rej30", "gap_auc", "gap_loss", "ood_auc_mean"]
    head += [c for c in columns if c.startswith("ood_") and c.endswith("_auc")]
    head += list(COMPLEXITY) + ["robustness_mean_delta"]
    head += [c for c in columns if c.startswith("symmetry_violation_")]
    head += [c for c in columns if c.startswith("student_")] + ["distill_efficiency_mean"]
    return [c for c in dict.fromkeys(head) if c in columns]


def per_lambda(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± standard error over seeds for every (architecture, group, mode, λ) of the
    finished runs."""
    finished = [r for r in rows if r["status"] == "finished"]
    keys = sorted({(r["architecture"], r["group"], r["mode"], r["weight"]) for r in finished},
                  key=lambda k: (k[0], k[3], k[1], k[2]))  # fmt: skip
    table = []
    for architecture, group, mode, weight in keys:
        key = (architecture, group, mode, weight)
        members = [r for r in finished
                   if (r["architecture"], r["group"], r["mode"], r["weight"]) == key]  # fmt: skip
        entry: dict[str, Any] = {"architecture": architecture, "group": group, "mode": mode,
                                 "weight": weight, "seeds": len(members)}  # fmt: skip
        for column in summary_columns(rows):
            mean, error, _ = mean_and_error([m.get(column) for m in members])
            entry[f"{column}_mean"] = mean
            entry[f"{column}_se"] = error
        table.append(entry)
    return table


def correlations(rows: Sequence[dict[str, Any]], config: StudyConfig) -> list[dict[str, Any]]:
    """Spearman ρ with bootstrap intervals of every complexity measure against λ and against
    every outcome, over the finished runs."""
    finished = [r for r in rows if r["status"] == "finished"]
    outcomes = ["test_auc", *[o for f in FINDINGS.values() for o in f]]
    outcomes += [f"ood_{name}_auc" for name in config.ood]
    table = []
    for measure in COMPLEXITY:
        targets = [("weight", "lambda")] + [(o, "outcome") for o in dict.fromkeys(outcomes)]
        for target, kind in targets:
            x = [r.get(measure) for r in finished]
            y = [r.get(target) for r in finished]
            result = spearman_bootstrap(x, y, config.bootstrap_resamples, config.bootstrap_seed,
                                        config.confidence_level)  # fmt: skip
            table.append({"complexity": measure, "against": target, "kind": kind,
                          "rho": result.rho, "low": result.low, "high": result.high,
                          "n": result.n, "level": config.confidence_level})  # fmt: skip
    return table


# -- findings ----------------------------------------------------------------------------------


def _lookup(table: Sequence[dict[str, Any]], measure: str, target: str) -> dict[str, Any] | None:
    return next((e for e in table if e["complexity"] == measure and e["against"] == target), None)


def _pair_verdict(oriented_low: float, oriented_high: float) -> str:
    if not (math.isfinite(oriented_low) and math.isfinite(oriented_high)):
        return "undefined"
    if oriented_low > 0:
        return "supports"
    if oriented_high < 0:
        return "against"
    return "inconclusive"


def _oriented(entry: dict[str, Any], sign: int) -> tuple[float, float, float]:
    rho, low, high = entry["rho"], entry["low"], entry["high"]
    if sign > 0:
        return rho, low, high
    return -rho, -high, -low


def _strength_word(n: int, seeds: int) -> str:
    if n < 10 or seeds < 3:
        return "weakly"
    if n < 30:
        return "moderately"
    return "strongly"


def findings(rows: Sequence[dict[str, Any]], table: Sequence[dict[str, Any]],
             config: StudyConfig) -> list[str]:  # fmt: skip
    """One paragraph per claim: the premise (λ lowers complexity) and the three findings, each
    stating whether the data supports it, on how many runs, and how strongly."""
    finished = [r for r in rows if r["status"] == "finished"]
    n, seeds = len(finished), len({r["seed"] for r in finished})
    level = f"{100 * config.confidence_level:g}%"
    claims = {"premise": ("a stronger soft-symmetry bias (larger λ) gives a lower-complexity "
                          "solution", {"weight": -1})}  # fmt: skip
    claims.update({k: (FINDING_TEXT[k], v) for k, v in FINDINGS.items()})
    paragraphs = []
    if n < 3:
        return [f"Only {n} finished runs: no correlation can be estimated, so none of the "
                "findings can be assessed yet."]  # fmt: skip
    for key, (text, outcomes) in claims.items():
        verdicts, oriented = [], []
        for measure, complexity_sign in COMPLEXITY.items():
            for outcome, outcome_sign in outcomes.items():
                entry = _lookup(table, measure, outcome)
                if entry is None or not math.isfinite(entry["rho"]):
                    continue
                rho, low, high = _oriented(entry, complexity_sign * outcome_sign)
                oriented.append(rho)
                verdicts.append(_pair_verdict(low, high))
        if not verdicts:
            paragraphs.append(f"**{key}** — {text}: not measured in these runs.")
            continue
        support, against = verdicts.count("supports"), verdicts.count("against")
        total = len(verdicts)
        if support and not against and support * 2 > total:
            verdict = f"supported, {_strength_word(n, seeds)}"
        elif against and not support and against * 2 > total:
            verdict = f"contradicted, {_strength_word(n, seeds)}"
        elif support and against:
            verdict = "mixed: some measure pairs support it and others contradict it"
        elif support:
            verdict = f"not supported by this data: only {support} of {total} pairs favour it"
        elif against:
            verdict = (
                f"not supported by this data, and {against} of {total} pairs point the other way"
            )
        else:
            verdict = "not supported by this data: no interval excludes zero"
        paragraphs.append(
            f"**{key}** — {text}: {verdict}. Of {total} pairs (complexity measure × "
            f"{'λ' if key == 'premise' else 'outcome'}), {support} have "
            f"a {level} interval of ρ on the expected side of zero and {against} on the other; "
            f"the mean ρ oriented so that positive agrees with the claim is "
            f"{float(np.mean(oriented)):+.2f} over {n} runs ({seeds} seeds)."
        )
    caveat = (
        f"These are rank correlations across {n} runs; runs at different λ differ in λ as well "
        "as in complexity, so a correlation does not isolate complexity as the cause."
    )
    if n < 10 or seeds < 3:
        caveat += (
            " With fewer than 10 runs or 3 seeds the bootstrap intervals are too narrow and the "
            "standard errors over seeds barely defined: treat every statement above as an "
            "indication for a larger study, not as evidence."
        )
    paragraphs.append(caveat)
    return paragraphs


# -- figures -----------------------------------------------------------------------------------


def _figure(columns: int, rows: int = 1, width: float = 3.6, height: float = 3.0):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def _save(figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _symlog(axes, weights: Sequence[float]) -> None:
    positive = [w for w in weights if w > 0]
    if positive:
        axes.set_xscale("symlog", linthresh=min(positive))


def _series(table: Sequence[dict[str, Any]]):
    """Per-λ entries by (architecture, group, mode), each series sharing the λ = 0 baseline."""
    series: dict[tuple, list[dict]] = {}
    for entry in table:
        if entry["group"] != "none":
            series.setdefault((entry["architecture"], entry["group"], entry["mode"]), []).append(
                entry
            )
    for (architecture, _, _), entries in series.items():
        baselines = [e for e in table if e["group"] == "none" and e["architecture"] == architecture]
        entries[:0] = baselines
    if not series:
        for entry in table:
            series.setdefault((entry["architecture"], "none", "none"), []).append(entry)
    return series


def _floats(rows: Sequence[dict[str, Any]], column: str) -> np.ndarray:
    """``column`` of ``rows`` as floats, NaN where missing (matplotlib leaves those out)."""
    return np.asarray([math.nan if r.get(column) is None else r[column] for r in rows], float)


def plot_complexity_vs_lambda(rows, table, path: Path) -> Path:
    """One panel per complexity measure: mean ± standard error over seeds against λ, the seeds
    as points."""
    figure, axes = _figure(len(COMPLEXITY))
    finished = [r for r in rows if r["status"] == "finished"]
    for panel, measure in zip(axes[0], COMPLEXITY, strict=True):
        for (architecture, group, mode), entries in _series(table).items():
            x = [e["weight"] for e in entries]
            y = [e[f"{measure}_mean"] for e in entries]
            error = [
                e[f"{measure}_se"] if math.isfinite(e[f"{measure}_se"]) else 0 for e in entries
            ]
            panel.errorbar(x, y, yerr=error, marker="o", capsize=3,
                           label=f"{architecture} {group} {mode}")  # fmt: skip
        panel.scatter(_floats(finished, "weight"), _floats(finished, measure),
                      s=8, color="grey", alpha=0.6, zorder=3)  # fmt: skip
        _symlog(panel, [r["weight"] for r in finished])
        panel.set_xlabel(r"$\lambda$")
        panel.set_title(measure.replace("hessian_", "").replace("_", " "))
    axes[0][0].legend(fontsize=7)
    return _save(figure, path)


def plot_outcome_vs_complexity(rows, table, path: Path, measure: str = "hessian_top_eigenvalue"):
    """One panel per outcome against one complexity measure, runs coloured by λ, with ρ and its
    interval in the title."""
    outcomes = ["test_auc", *[o for f in FINDINGS.values() for o in f]]
    finished = [r for r in rows if r["status"] == "finished"]
    columns = 3
    figure, axes = _figure(columns, math.ceil(len(outcomes) / columns))
    panels = list(axes.ravel())
    for panel in panels[len(outcomes) :]:
        panel.set_visible(False)
    weights = sorted({r["weight"] for r in finished})
    colours = {w: f"C{i % 10}" for i, w in enumerate(weights)}
    for panel, outcome in zip(panels, outcomes, strict=False):
        for weight in weights:
            members = [r for r in finished if r["weight"] == weight]
            panel.scatter(_floats(members, measure), _floats(members, outcome),
                          color=colours[weight], label=f"λ={weight:g}")  # fmt: skip
        entry = _lookup(table, measure, outcome)
        if entry is not None and math.isfinite(entry["rho"]):
            panel.set_title(f"ρ={entry['rho']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}]",
                            fontsize=9)  # fmt: skip
        panel.set_xlabel(measure.replace("hessian_", "").replace("_", " "))
        panel.set_ylabel(outcome.replace("_", " "))
    axes[0][0].legend(fontsize=7)
    return _save(figure, path)


def plot_spectral_densities(runs: Sequence[PlannedRun], rows, path: Path) -> Path | None:
    """The Hessian spectral densities, averaged over seeds, overlaid per λ (and group, mode)."""
    quadratures: dict[tuple, list[dict]] = {}
    for run, row in zip(runs, rows, strict=True):
        if row["status"] != "finished":
            continue
        content = _json(run.directory / "teacher" / MEASUREMENTS_FILE)
        if content and content.get("density"):
            key = (row["architecture"], row["weight"], row["group"], row["mode"])
            quadratures.setdefault(key, []).append(content["density"])
    if not quadratures:
        return None
    nodes_all = np.concatenate([np.asarray(d["nodes"]).ravel() for ds in quadratures.values()
                                for d in ds])  # fmt: skip
    low, high = float(nodes_all.min()), float(nodes_all.max())
    broadening = next(iter(quadratures.values()))[0].get("broadening", 0.01)
    sigma = broadening * max(high - low, 1e-12)
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, 1000)
    figure, axes = _figure(1, width=6.5, height=4.2)
    panel = axes[0][0]
    for (architecture, weight, group, mode), densities in sorted(quadratures.items()):
        nodes = np.concatenate([np.asarray(d["nodes"]) for d in densities])
        weights = np.concatenate([np.asarray(d["weights"]) for d in densities])
        z = (grid[:, None, None] - nodes[None]) / sigma
        kernel = np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
        density = (kernel * weights[None]).sum(axis=(1, 2)) / nodes.shape[0]
        label = f"λ={weight:g}" + ("" if group == "none" else f" {group} {mode}")
        panel.semilogy(grid, np.clip(density, 1e-12, None),
                       label=f"{label} ({architecture}, {len(densities)} seeds)")  # fmt: skip
    panel.set_xlabel(r"Hessian eigenvalue $\lambda_H$")
    panel.set_ylabel(r"spectral density $\rho(\lambda_H)$")
    panel.set_title("Hessian spectral density of the task loss, final teachers")
    panel.legend(fontsize=7)
    return _save(figure, path)


# -- writing -----------------------------------------------------------------------------------


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return "" if math.isnan(value) else str(value)
        return f"{value:.4g}"
    return str(value)


def write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: list[str] | None = None):
    columns = columns or columns_of(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _main_columns(columns: Sequence[str]) -> list[str]:
    """The columns of the runs table in Markdown: all but the per-strength robustness (a table
    of its own) and the OOD rejections (in the CSV)."""

    def shown(column: str) -> bool:
        per_strength = column.startswith("robustness_") and column != "robustness_mean_delta"
        return not per_strength and (column == "test_rej30" or not column.endswith("_rej30"))

    return [c for c in columns if shown(c)]


def _per_lambda_markdown(table: Sequence[dict[str, Any]], rows) -> str:
    columns = summary_columns(rows)
    header = ["architecture", "group", "mode", "λ", "seeds", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [entry["architecture"], entry["group"], entry["mode"], f"{entry['weight']:g}",
                 str(entry["seeds"])]  # fmt: skip
        for column in columns:
            mean, error = entry[f"{column}_mean"], entry[f"{column}_se"]
            cell = _format(mean) + (f" ± {_format(error)}" if math.isfinite(error) else "")
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(config: StudyConfig, output: str | Path | None = None) -> dict[str, Any]:
    """Aggregates the study's runs into ``output`` (default ``<study>/report``).

    Returns:
        ``rows``, ``per_lambda``, ``correlations``, ``findings`` and ``directory``.
    """
    directory = Path(output) if output else config.directory / "report"
    runs, rows = collect_runs(config)
    columns = columns_of(rows)
    table = per_lambda(rows)
    correlation_table = correlations(rows, config)
    texts = findings(rows, correlation_table, config)

    write_csv(rows, directory / "results.csv", columns)
    results_md = markdown_table(rows, _main_columns(columns))
    (directory / "results.md").write_text(results_md + "\n")
    write_csv(table, directory / "per_lambda.csv")
    write_csv(correlation_table, directory / "correlations.csv")
    figures = {}
    if any(r["status"] == "finished" for r in rows):
        figures["complexity_vs_lambda"] = plot_complexity_vs_lambda(
            rows, table, directory / "complexity_vs_lambda.png"
        )
        figures["outcome_vs_complexity"] = plot_outcome_vs_complexity(
            rows, correlation_table, directory / "outcome_vs_complexity.png"
        )
        density = plot_spectral_densities(runs, rows, directory / "spectral_density.png")
        if density is not None:
            figures["spectral_density"] = density

    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("finished", "failed", "incomplete", "pending")}  # fmt: skip
    sections = [f"# λ-scan study `{config.name}`", "",
                "Runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + "."]  # fmt: skip
    unfinished = [r for r in rows if r["status"] in ("failed", "incomplete")]
    if unfinished:
        sections += ["", "## Runs that did not finish", ""]
        sections += [f"- `{r['run_id']}`: {r['status']}, log `{r['log']}`" for r in unfinished]
    sections += ["", "## Findings", "", *[f"{t}\n" for t in texts]]
    sections += [
        "## Per λ (mean ± standard error over seeds)",
        "",
        _per_lambda_markdown(table, rows),
    ]
    correlation_columns = ["complexity", "against", "rho", "low", "high", "n"]
    sections += ["", f"## Spearman ρ with {100 * config.confidence_level:g}% percentile "
                 f"bootstrap intervals ({config.bootstrap_resamples} resamples, seed "
                 f"{config.bootstrap_seed})", "",
                 markdown_table(correlation_table, correlation_columns)]  # fmt: skip
    sections += ["", "## Runs", "", results_md]
    robustness_columns = ["run_id"] + [c for c in columns if c.startswith("robustness_")]
    if len(robustness_columns) > 1:
        sections += ["", "## Robustness at each strength", "",
                     markdown_table(rows, robustness_columns)]  # fmt: skip
    if figures:
        sections += ["", "## Figures", ""]
        sections += [f"![{name}]({path.name})" for name, path in figures.items()]
    (directory / "report.md").write_text("\n".join(sections) + "\n")
    log.info("report of study %s: %s (%s)", config.name, directory / "report.md",
             ", ".join(f"{v} {k}" for k, v in counts.items()))  # fmt: skip
    return {"rows": rows, "per_lambda": table, "correlations": correlation_table,
            "findings": texts, "directory": directory}  # fmt: skip


__all__ = [
    "COMPLEXITY",
    "FINDINGS",
    "Correlation",
    "bootstrap_indices",
    "collect_runs",
    "correlations",
    "findings",
    "mean_and_error",
    "per_lambda",
    "read_metrics_csv",
    "spearman_bootstrap",
    "spearman_rows",
    "write_report",
]
