"""Sample-generation rate against Pythia alone, and the gain from a second worker.

Runs, side by side in one process: ``generate_sample`` with one worker and with two (events/s
and jets/s, clustering, matching and ROOT writing included), and Pythia 8 alone generating the
same numbers of tt̄ and QCD events with the same settings.

    python benchmarks/generation.py [--jets 4000] [--shard-size 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from softsymlit.data.generate import GeneratorSettings, _make_pythia, generate_sample


def run_generator(folder: Path, jets: int, shard_size: int, workers: int) -> tuple[float, dict]:
    start = time.perf_counter()
    generate_sample(folder, num_jets=jets, seed=1, shard_size=shard_size, workers=workers,
                    progress=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    return elapsed, json.loads((folder / "manifest.json").read_text())["events"]


def run_pythia_alone(events: dict[str, int]) -> float:
    settings = GeneratorSettings()
    start = time.perf_counter()
    for process, count in events.items():
        pythia = _make_pythia(settings, process, seed=1)
        for _ in range(count):
            pythia.next()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jets", type=int, default=4000)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        one, events = run_generator(Path(tmp) / "one", args.jets, args.shard_size, workers=1)
        two, _ = run_generator(Path(tmp) / "two", args.jets, args.shard_size, workers=2)
    alone = run_pythia_alone(events)

    total_events = sum(events.values())
    rows = [
        ("Pythia alone (1 process)", alone, None),
        ("softsymlit generate, 1 worker", one, args.jets),
        ("softsymlit generate, 2 workers", two, args.jets),
    ]
    print(f"{args.jets} jets from {total_events} events ({events}), shards of {args.shard_size}")
    print(f"{'run':<32}{'s':>8}{'events/s':>10}{'jets/s':>8}{'vs Pythia':>11}{'vs 1 worker':>13}")
    for name, seconds, jets in rows:
        jets_rate = f"{jets / seconds:8.1f}" if jets else f"{'':>8}"
        print(f"{name:<32}{seconds:8.1f}{total_events / seconds:10.1f}{jets_rate}"
              f"{alone / seconds:11.2f}{one / seconds:13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
