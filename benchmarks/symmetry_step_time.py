"""Training-step time of the soft-symmetry penalties relative to the plain step.

For the particle-flow network and the transformer, and for 1, 3 and 6 generators (``so2_z``,
``so3``, ``lorentz``), one optimisation step of :class:`~softsymlit.models.JetClassifier`
(loss, backward, AdamW update) is timed for the plain objective and for each penalty:
``sampled``, ``infinitesimal`` through a JVP and through the input gradient (exact), and the
finite-difference estimate of the infinitesimal penalty with one random direction per jet and
the default steps, forward (``fd-forward``, a batch of 2B jets) and central (``fd-central``,
3B jets).
All variants of one network start from the same weights and are measured side by side in one
process: each repeat runs every variant once, in turn, and the table reports the median over
repeats divided by the median of the plain step. On the CPU the default clock is the CPU time of
this process (with one thread), which other jobs on a shared machine do not inflate; ``--clock
wall`` measures elapsed time instead (always used on a GPU).

Usage::

    python benchmarks/symmetry_step_time.py --batch-size 128 --particles 64 --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from softsymlit.models import JetClassifier, ParticleFlowNetwork, ParticleTransformer
from softsymlit.symmetry import SoftSymmetryPenalty

GROUPS = (("so2_z", 1), ("so3", 3), ("lorentz", 6))
PENALTIES = (
    ("sampled", {"mode": "sampled"}),
    ("infinitesimal-jvp", {"mode": "infinitesimal", "implementation": "jvp"}),
    ("infinitesimal-input_gradient", {"mode": "infinitesimal", "implementation": "input_gradient"}),
    ("fd-forward", {"mode": "infinitesimal", "implementation": "finite_difference"}),
    (
        "fd-central",
        {
            "mode": "infinitesimal",
            "implementation": "finite_difference",
            "difference_scheme": "central",
        },
    ),
)


def synthetic_batch(num_jets: int, max_particles: int, seed: int, device: str) -> dict:
    """Jets of a few hundred GeV with 20–``max_particles`` constituents, float32."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(20, max_particles + 1, (num_jets,), generator=generator)
    mask = torch.arange(max_particles)[None, :] < counts[:, None]
    axis_eta = torch.empty(num_jets, 1).uniform_(-2.0, 2.0, generator=generator)
    axis_phi = torch.empty(num_jets, 1).uniform_(-3.1, 3.1, generator=generator)
    eta = axis_eta + 0.3 * torch.randn(num_jets, max_particles, generator=generator)
    phi = axis_phi + 0.3 * torch.randn(num_jets, max_particles, generator=generator)
    pt = 1.0 + 30.0 * torch.rand(num_jets, max_particles, generator=generator)
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)
    energy = torch.sqrt(px**2 + py**2 + pz**2 + 0.0195)
    p4 = torch.stack((energy, px, py, pz), dim=-1) * mask.unsqueeze(-1)
    label = torch.randint(0, 2, (num_jets,), generator=generator)
    batch = {"p4": p4, "mask": mask, "label": label, "weight": torch.ones(num_jets)}
    return {key: value.to(device) for key, value in batch.items()}


def make_step(model: JetClassifier, batch: dict):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.compute_losses(batch).loss.backward()
        optimizer.step()

    return step


def variants(network: torch.nn.Module) -> dict[str, JetClassifier]:
    """The plain classifier and one per (penalty, group), all with the same initial weights."""
    models = {"plain": JetClassifier(copy.deepcopy(network))}
    for group, _ in GROUPS:
        for name, options in PENALTIES:
            penalty = SoftSymmetryPenalty(weight=0.1, group=group, **options)
            models[f"{name}/{group}"] = JetClassifier(copy.deepcopy(network), penalty)
    return models


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(network, batch, repeats: int, steps: int, device: str, clock) -> dict[str, float]:
    """Median seconds per step of every variant, interleaved over ``repeats``."""
    steppers = {key: make_step(model.to(device), batch) for key, model in variants(network).items()}
    for step in steppers.values():
        step()
    times: dict[str, list[float]] = {key: [] for key in steppers}
    for _ in range(repeats):
        for key, step in steppers.items():
            synchronise(device)
            start = clock()
            for _ in range(steps):
                step()
            synchronise(device)
            times[key].append((clock() - start) / steps)
    return {key: statistics.median(values) for key, values in times.items()}


def table(results: dict[str, dict[str, float]]) -> str:
    names = [name for name, _ in PENALTIES]
    widths = [max(len(name), 8) for name in names]
    header = f"{'network':<12} {'generators':>10} {'plain ms':>9} " + " ".join(
        f"{name:>{width}}" for name, width in zip(names, widths, strict=True)
    )
    lines = [header, "-" * len(header)]
    for network, medians in results.items():
        plain = medians["plain"]
        for group, count in GROUPS:
            ratios = " ".join(
                f"{medians[f'{name}/{group}'] / plain:>{width - 1}.2f}x"
                for name, width in zip(names, widths, strict=True)
            )
            lines.append(f"{network:<12} {count:>10} {1e3 * plain:>9.1f} {ratios}")
    return "\n".join(lines)


def recommendation(results: dict[str, dict[str, float]]) -> str:
    lines = ["faster infinitesimal implementation with 6 generators:"]
    for network, medians in results.items():
        jvp = medians["infinitesimal-jvp/lorentz"]
        gradient = medians["infinitesimal-input_gradient/lorentz"]
        lines.append(f"  {network}: {'jvp' if jvp < gradient else 'input_gradient'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=("process", "wall"), default="process")
    args = parser.parse_args()
    on_cpu = args.device == "cpu"
    clock = time.process_time if on_cpu and args.clock == "process" else time.perf_counter

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = synthetic_batch(args.batch_size, args.particles, seed=0, device=args.device)
    networks = {
        "PFN": ParticleFlowNetwork(num_classes=2),
        "transformer": ParticleTransformer(num_classes=2),
    }
    results = {
        name: measure(network, batch, args.repeats, args.steps, args.device, clock)
        for name, network in networks.items()
    }

    clock_name = "process CPU" if clock is time.process_time else "wall"
    print(
        f"step time / plain step; batch {args.batch_size} jets x {args.particles} slots, "
        f"{args.device}, {args.threads} thread(s), {clock_name} time, median of {args.repeats} "
        "interleaved repeats"
    )
    print(table(results))
    print(recommendation(results))


if __name__ == "__main__":
    main()
