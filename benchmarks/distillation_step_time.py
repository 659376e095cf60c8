"""Training-step time of a distilled student relative to the same student trained plainly.

For each student size, one optimisation step (loss, backward, AdamW update) of the plain
:class:`~softsymlit.models.JetClassifier` is timed against the same step of a
:class:`~softsymlit.models.DistillationModule` (``alpha=0.5``), whose extra cost is the teacher
forward under ``torch.inference_mode()`` and the KL term. Teachers are the student's own size
and the large PFN of ``configs/top_tagging.yaml``. All variants of one student start from the
same weights and are measured side by side in one process: each repeat runs every variant once,
in turn, and the table reports the median over repeats divided by the median plain step.

Usage::

    python benchmarks/distillation_step_time.py --batch-size 256 --particles 64 --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from softsymlit.models import DistillationModule, JetClassifier, ParticleFlowNetwork

STUDENTS = {
    "pfn_w16_d2": ((16, 16), (16,)),
    "pfn_w64_d3": ((64, 64, 64), (64, 64)),
    "pfn_w100_d3": ((100, 100, 128), (100, 100, 100)),
}
LARGE_TEACHER = ((100, 100, 128), (100, 100, 100))


def synthetic_batch(num_jets: int, max_particles: int, seed: int, device: str) -> dict:
    """Jets of a few hundred GeV around random axes, 20–``max_particles`` constituents."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(20, max_particles + 1, (num_jets,), generator=generator)
    mask = torch.arange(max_particles)[None, :] < counts[:, None]
    eta = torch.empty(num_jets, 1).uniform_(-2, 2, generator=generator)
    eta = eta + 0.3 * torch.randn(num_jets, max_particles, generator=generator)
    phi = 0.3 * torch.randn(num_jets, max_particles, generator=generator)
    pt = 1.0 + 30.0 * torch.rand(num_jets, max_particles, generator=generator)
    momentum = torch.stack((pt * phi.cos(), pt * phi.sin(), pt * eta.sinh()), dim=-1)
    energy = momentum.norm(dim=-1, keepdim=True)
    p4 = torch.cat((energy, momentum), dim=-1) * mask.unsqueeze(-1)
    label = torch.randint(0, 2, (num_jets,), generator=generator)
    batch = {"p4": p4, "mask": mask, "label": label, "weight": torch.ones(num_jets)}
    return {key: value.to(device) for key, value in batch.items()}


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _pfn(sizes, seed: int) -> ParticleFlowNetwork:
    torch.manual_seed(seed)
    phi, f = sizes
    return ParticleFlowNetwork(num_classes=2, phi_sizes=phi, f_sizes=f)


def _step(model, batch):
    optimizer = torch.optim.AdamW(model.network.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.compute_losses(batch).loss.backward()
        optimizer.step()

    return step


def measure(student_sizes, batch, repeats: int, steps: int, device: str) -> dict[str, float]:
    """Median seconds per step of the plain student and of it distilled from each teacher."""
    student = _pfn(student_sizes, seed=0)
    variants = {
        "plain": JetClassifier(copy.deepcopy(student)),
        "kd/same-size": DistillationModule(copy.deepcopy(student), _pfn(student_sizes, 1)),
        "kd/large": DistillationModule(copy.deepcopy(student), _pfn(LARGE_TEACHER, 2)),
    }
    steps_of = {}
    for name, model in variants.items():
        model.to(device).train()
        steps_of[name] = _step(model, batch)
        steps_of[name]()  # warm-up
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, step in steps_of.items():
            synchronise(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            synchronise(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = synthetic_batch(args.batch_size, args.particles, seed=0, device=args.device)
    print(f"device {args.device}, batch {args.batch_size} jets × {args.particles} particles, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} repeats × {args.steps} "
          "steps")  # fmt: skip
    header = f"{'student':<14}{'params':>8}{'plain ms':>10}{'kd same-size':>14}{'kd large':>10}"
    print(header)
    print("-" * len(header))
    for name, sizes in STUDENTS.items():
        medians = measure(sizes, batch, args.repeats, args.steps, args.device)
        plain = medians["plain"]
        parameters = sum(p.numel() for p in _pfn(sizes, 0).parameters())
        same, large = medians["kd/same-size"] / plain, medians["kd/large"] / plain
        print(f"{name:<14}{parameters:>8}{1e3 * plain:>10.2f}{same:>13.2f}×{large:>9.2f}×")


if __name__ == "__main__":
    main()
