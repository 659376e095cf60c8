"""Sample-generation rate against Pythia alone, and the gain from a second worker.

Runs, interleaved over several rounds in one process: Pythia 8 alone generating tt̄ and QCD
events with the sample's settings (one ``Pythia`` per process),
``generate_sample`` with one worker (clustering, top matching and ROOT writing included)
and with two. The one-worker comparison uses this process's CPU time, which other load on the
machine barely changes; the two-worker gain needs wall time, so it is only meaningful on an
otherwise idle machine (the load average is printed), and with a number of shards that the
workers share evenly (the default 8000 jets make four shards of 2000).

    python benchmarks/generation.py [--jets 8000] [--shard-size 2000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from softsymlit.data.generate import GeneratorSettings, _make_pythia, generate_sample


def run_generator(folder: Path, jets: int, shard_size: int, workers: int) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    generate_sample(folder, num_jets=jets, seed=1, shard_size=shard_size, workers=workers,
                    progress=False)  # fmt: skip
    manifest = json.loads((folder / "manifest.json").read_text())
    return {
        "wall": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
        "events": manifest["events"],
    }


def run_pythia_alone(events: dict[str, int]) -> dict:
    """The same events with no clustering, selection or output, from one ``Pythia`` per process
    (the generator initialises one per process and shard, which this leaves out)."""
    settings = GeneratorSettings()
    start, cpu = time.perf_counter(), time.process_time()
    for process, count in events.items():
        pythia = _make_pythia(settings, process, seed=1)
        for _ in range(count):
            pythia.next()
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jets", type=int, default=8000)
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    results: dict[str, list[dict]] = {"alone": [], "one": [], "two": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            one = run_generator(Path(tmp) / "one", args.jets, args.shard_size, workers=1)
            results["one"].append(one)
            results["alone"].append(run_pythia_alone(one["events"]))
            results["two"].append(run_generator(Path(tmp) / "two", args.jets, args.shard_size, 2))

    events = results["one"][0]["events"]
    total = sum(events.values())

    def median(name: str, clock: str) -> float:
        return statistics.median(r[clock] for r in results[name])

    alone_cpu, one_cpu = median("alone", "cpu"), median("one", "cpu")
    one_wall, two_wall = median("one", "wall"), median("two", "wall")
    load = os.getloadavg()[0]
    print(f"{args.jets} jets from {total} events ({events}), shards of {args.shard_size}, "
          f"{args.rounds} interleaved rounds (median), load average {load:.1f}")  # fmt: skip
    print(f"{'run':<32}{'CPU s':>8}{'wall s':>8}{'events/s':>10}{'jets/s':>8}{'ratio':>8}")
    rows = [
        ("Pythia alone (1 process)", alone_cpu, median("alone", "wall"), None, 1.0),
        ("softsymlit generate, 1 worker", one_cpu, one_wall, args.jets, alone_cpu / one_cpu),
        ("softsymlit generate, 2 workers", float("nan"), two_wall, args.jets, one_wall / two_wall),
    ]
    for name, cpu, wall, jets, ratio in rows:
        seconds = cpu if cpu == cpu else wall
        jets_rate = f"{jets / seconds:8.1f}" if jets else f"{'':>8}"
        print(f"{name:<32}{cpu:8.1f}{wall:8.1f}{total / seconds:10.1f}{jets_rate}{ratio:8.2f}")
    print("ratio: 1 worker = Pythia-alone CPU time / generator CPU time (events per CPU second);")
    print("       2 workers = 1-worker wall time / 2-worker wall time")


if __name__ == "__main__":
    main()
