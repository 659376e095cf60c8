"""Data-module throughput (ROOT → padded batches) against a bare ``uproot.iterate``.

Both read the same branches of the same files, interleaved, several rounds; the table shows the
median rate and the ratio. Uses ``data/top_tagging/train`` if present, else makes a sample.

    python benchmarks/data_throughput.py [--files 'data/top_tagging/train/*.root'] [--rounds 3]
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time

import uproot

from softsymlit.data import JetStream
from softsymlit.data.schemas import JETCLASS


def bare_iterate(files: list[str], step_size: int) -> int:
    jets = 0
    for arrays in uproot.iterate([f"{f}:tree" for f in files], JETCLASS.branches,
                                 step_size=step_size, library="ak"):  # fmt: skip
        jets += len(arrays)
    return jets


def data_module(files: list[str], step_size: int, shuffle: bool) -> int:
    stream = JetStream(files, batch_size=256, step_size=step_size, shuffle=shuffle)
    return sum(len(batch["label"]) for batch in stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default="data/top_tagging/train/*.root")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-size", type=int, default=10000)
    args = parser.parse_args()

    files = sorted(glob.glob(args.files))
    if not files:
        from softsymlit.data.generate import generate_sample

        folder = tempfile.mkdtemp()
        generate_sample(folder, num_jets=6000, shard_size=1000, workers=2)
        files = sorted(glob.glob(f"{folder}/train/*.root"))

    candidates = {
        "uproot.iterate (bare)": lambda: bare_iterate(files, args.step_size),
        "JetStream, file order": lambda: data_module(files, args.step_size, shuffle=False),
        "JetStream, shuffled": lambda: data_module(files, args.step_size, shuffle=True),
    }
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, run in candidates.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            jets = run()
            wall[name].append(jets / (time.perf_counter() - start))
            cpu[name].append(jets / (time.process_time() - start_cpu))

    reference = "uproot.iterate (bare)"
    print(f"{len(files)} files, {jets} jets, {args.rounds} interleaved rounds (median)")
    print(f"{'reader':<26}{'jets/s wall':>12}{'ratio':>7}{'jets/s CPU':>12}{'ratio':>7}")
    for name in candidates:
        rate, rate_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<26}{rate:>12.0f}{rate / statistics.median(wall[reference]):>7.2f}"
              f"{rate_cpu:>12.0f}{rate_cpu / statistics.median(cpu[reference]):>7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
