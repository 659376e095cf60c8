"""Streaming jets from ROOT files into padded batches."""

from __future__ import annotations

import glob
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue

import awkward as ak
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from softsymlit.data.schemas import SCHEMAS, Schema, resolve_schema

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input: the message names the file, the tree or branch, and the entry range."""


def expand_files(files: str | Sequence[str]) -> list[str]:
    """Expand a path, glob or list of them into an ordered list of existing files."""
    patterns = [files] if isinstance(files, (str, Path)) else list(files)
    paths: list[str] = []
    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"no ROOT file matches {pattern!r}")
            paths.extend(matches)
        elif not Path(pattern).is_file():
            raise FileNotFoundError(f"ROOT file {pattern!r} does not exist")
        else:
            paths.append(pattern)
    if not paths:
        raise FileNotFoundError("no ROOT files given")
    return paths


@dataclass(frozen=True)
class EntryRange:
    """Entries ``[start, stop)`` of one file."""

    path: str
    start: int
    stop: int


def count_entries(path: str, schema: Schema) -> int:
    """Open ``path``, check its tree and branches against ``schema``, and count its entries."""
    import uproot

    try:
        file = uproot.open(path)
    except Exception as error:
        raise DataError(f"{path}: cannot be opened as a ROOT file ({error})") from error
    with file:
        trees = [key.split(";")[0] for key, cls in file.classnames().items() if cls == "TTree"]
        if schema.tree not in trees:
            raise DataError(
                f"{path}: no tree {schema.tree!r} (schema {schema.name!r}); "
                f"trees in the file: {', '.join(trees) or 'none'}"
            )
        tree = file[schema.tree]
        available = set(tree.keys())
        missing = [b for b in schema.branches if b not in available]
        if missing:
            raise DataError(
                f"{path}: tree {schema.tree!r} lacks branches {missing} needed by schema "
                f"{schema.name!r}{_layout_hint(available, schema)}; "
                f"branches available: {', '.join(sorted(available))}"
            )
        return int(tree.num_entries)


def _layout_hint(available: set[str], schema: Schema) -> str:
    matching = [
        name for name, other in SCHEMAS.items()
        if other is not schema and all(b in available for b in other.branches)
    ]  # fmt: skip
    return f" (the file matches schema {matching[0]!r})" if matching else ""


def partition(
    entries: Sequence[tuple[str, int]], rank: int, world_size: int, worker: int, num_workers: int
) -> tuple[list[EntryRange], int]:
    """The entry ranges one data-loader worker of one rank reads.

    The files' entries, in the given order, form one stream. It is cut into ``world_size``
    contiguous pieces of equal size (the few entries left over are skipped), so every rank sees
    the same number of jets; each piece is cut the same way among the rank's workers.

    Returns:
        The ranges for ``(rank, worker)``, and the number of entries skipped for equal sizes.
    """
    total = sum(n for _, n in entries)
    per_rank = total // world_size
    start = rank * per_rank + (per_rank * worker) // num_workers
    stop = rank * per_rank + (per_rank * (worker + 1)) // num_workers

    ranges, offset = [], 0
    for path, n in entries:
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            ranges.append(EntryRange(path, lo - offset, hi - offset))
        offset += n
    return ranges, total - per_rank * world_size


def flatten_constituents(columns: Sequence[ak.Array]) -> tuple[np.ndarray, np.ndarray]:
    """Jagged constituent columns sharing one counter → ``(flat [total, C], counts [n])``."""
    counts = ak.to_numpy(ak.num(columns[0], axis=1)).astype(np.int64)
    flat = np.stack(
        [np.asarray(ak.flatten(column, axis=None), dtype=np.float32) for column in columns], axis=-1
    )
    return flat, counts


def pad_flat(
    flat: np.ndarray, counts: np.ndarray, max_particles: int, order: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """Pad or truncate per-jet runs of ``flat`` rows to ``max_particles`` slots.

    Args:
        flat: ``[total, C]`` rows of all jets, jet after jet.
        counts: ``[n]`` rows per jet.
        max_particles: slots per jet; rows beyond it are dropped.
        order: optional permutation of the jets, applied while padding at no extra cost.

    Returns:
        ``(values [n, max_particles, C], filled [n, max_particles] bool)``.
    """
    num_jets, width = len(counts), flat.shape[-1]
    starts = np.cumsum(counts) - counts
    if order is not None:
        counts, starts = counts[order], starts[order]
    slot = np.arange(max_particles)[None, :]
    filled = slot < counts[:, None]
    # Gather every slot from the flat rows, with an appended zero row standing in for padding.
    # Each row moves as one opaque element, several times faster than moving its components.
    row = np.dtype((np.void, width * flat.dtype.itemsize))
    source = np.concatenate([flat, np.zeros((1, width), dtype=flat.dtype)]).view(row).reshape(-1)
    index = np.where(filled, starts[:, None] + slot, len(flat))
    values = source[index].view(flat.dtype).reshape(num_jets, max_particles, width)
    return values, filled


def pad_constituents(columns: Sequence[ak.Array], max_particles: int) -> tuple[np.ndarray, ...]:
    """Pad or truncate jagged constituent columns (sharing counts) to ``max_particles``.

    Returns:
        ``(values [n, max_particles, len(columns)] float32, filled [n, max_particles] bool)``.
    """
    return pad_flat(*flatten_constituents(columns), max_particles)


class JetStream(IterableDataset):
    """Batches of jets streamed from ROOT files in chunks; memory does not grow with the files.

    Each batch is a dict: ``p4 [B, N, 4]`` float32 (E, px, py, pz) in GeV, zero where masked;
    ``mask [B, N]`` bool; ``label [B]`` int64; ``weight [B]`` float32. Constituents beyond
    ``max_particles`` are dropped (files are expected sorted by decreasing pT), and slots with
    zero energy count as padding.

    Work is divided by :func:`partition` over the global rank and the data-loader workers, so
    every rank yields the same number of batches. Shuffling permutes the file order per epoch
    and shuffles jets within a buffer of ``shuffle_buffer`` jets.

    Args:
        files: paths or globs of ROOT files.
        schema: ``"jetclass"``, ``"atlas"``, a :class:`Schema` or a mapping of its fields.
        max_particles: constituent slots per jet.
        batch_size: jets per batch.
        shuffle: shuffle files and jets (seeded by ``seed`` and the epoch).
        shuffle_buffer: jets held for shuffling.
        seed: shuffling seed.
        step_size: entries read per chunk.
        read_ahead: chunks read (and decompressed) ahead in a background thread while the
            previous ones are converted and consumed (0: read in the consuming thread).
        drop_nonfinite: drop jets with NaN/inf momenta (logged count) instead of raising.
        drop_last: drop each worker's last incomplete batch.

    Raises:
        FileNotFoundError: a file or glob does not exist.
        DataError: a file cannot be read, lacks the tree or branches, or holds bad values.

    Limitation: with ``drop_nonfinite`` the ranks of a DDP run can yield different numbers of
    batches if the dropped jets are unevenly spread; clean the files for multi-process runs.
    """

    def __init__(
        self,
        files: str | Sequence[str],
        schema: str | Schema | dict = "jetclass",
        max_particles: int = 128,
        batch_size: int = 256,
        shuffle: bool = False,
        shuffle_buffer: int = 20000,
        seed: int = 0,
        step_size: int = 10000,
        drop_nonfinite: bool = False,
        drop_last: bool = False,
        read_ahead: int = 1,
    ) -> None:
        super().__init__()
        self.schema = resolve_schema(schema)
        self.files = expand_files(files)
        self.entries = [(path, count_entries(path, self.schema)) for path in self.files]
        self.max_particles = max_particles
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shuffle_buffer = max(shuffle_buffer, batch_size)
        self.seed = seed
        self.step_size = step_size
        self.read_ahead = read_ahead
        self.drop_nonfinite = drop_nonfinite
        self.drop_last = drop_last
        self.epoch = 0
        self.rank, self.world_size = 0, 1

    @property
    def num_entries(self) -> int:
        return sum(n for _, n in self.entries)

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Read this global rank's share of the entries."""
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        """Batches this rank yields per epoch, summed over data-loader workers of one process."""
        return self.batches_per_epoch(num_workers=1)

    def batches_per_epoch(self, num_workers: int) -> int:
        per_rank = self.num_entries // self.world_size
        total = 0
        for worker in range(num_workers):
            jets = (per_rank * (worker + 1)) // num_workers - (per_rank * worker) // num_workers
            total += jets // self.batch_size if self.drop_last else -(-jets // self.batch_size)
        return total

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        entries = list(self.entries)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(entries))
            entries = [entries[i] for i in order]
        ranges, skipped = partition(entries, self.rank, self.world_size, worker, num_workers)
        if skipped and worker == 0 and self.rank == 0:
            log.debug("skipping %d entries so that all ranks see equal numbers of jets", skipped)

        chunks = self._chunks(ranges)
        if self.shuffle:
            chunks = self._shuffle_buffered(chunks, rng)
        yield from self._rebatch(self._pad(chunk, order) for chunk, order in chunks)

    def _shuffle_buffered(self, chunks, rng: np.random.Generator):
        """Gather chunks until ``shuffle_buffer`` jets are held, then release them with a random
        order of their jets."""
        buffer, buffered = [], 0
        for chunk, _ in chunks:
            buffer.append(chunk)
            buffered += len(chunk["label"])
            if buffered >= self.shuffle_buffer:
                yield _concatenate(buffer), rng.permutation(buffered)
                buffer, buffered = [], 0
        if buffer:
            yield _concatenate(buffer), rng.permutation(buffered)

    def _pad(self, jets: dict[str, np.ndarray], order: np.ndarray | None) -> dict[str, np.ndarray]:
        """Flat constituent rows → the padded batch layout, jets in ``order`` if given."""
        p4, mask = pad_flat(jets["flat"], jets["counts"], self.max_particles, order)
        label, weight = jets["label"], jets["weight"]
        if order is not None:
            label, weight = label[order], weight[order]
        return {"p4": p4, "mask": mask, "label": label, "weight": weight}

    def _rebatch(self, pieces) -> Iterator[dict[str, torch.Tensor]]:
        """Cut a stream of jet arrays into batches; only a batch that straddles two pieces is
        copied, every other batch is a view."""
        size, pending = self.batch_size, None
        for jets in pieces:
            count, start = len(jets["label"]), 0
            if pending is not None:
                start = min(size - len(pending["label"]), count)
                pending = _concatenate([pending, _rows(jets, 0, start)])
                if len(pending["label"]) < size:
                    continue
                yield _to_batch(pending)
                pending = None
            stop = start + (count - start) // size * size
            for lo in range(start, stop, size):
                yield _to_batch(_rows(jets, lo, lo + size))
            if stop < count:
                pending = _rows(jets, stop, count)
        if pending is not None and not self.drop_last:
            yield _to_batch(pending)

    def _chunks(self, ranges: list[EntryRange]) -> Iterator[tuple[dict[str, np.ndarray], None]]:
        raw = self._read(ranges)
        if self.read_ahead:
            raw = read_ahead(raw, self.read_ahead)
        for chunk, path, first_entry in raw:
            yield self._convert(chunk, path, first_entry), None

    def _read(self, ranges: list[EntryRange]) -> Iterator[tuple[ak.Array, str, int]]:
        """Raw chunks of the branches, with the file and the entry number of their first jet."""
        import uproot

        for piece in ranges:
            try:
                tree = uproot.open(piece.path)[self.schema.tree]
                arrays = tree.iterate(
                    self.schema.branches,
                    entry_start=piece.start,
                    entry_stop=piece.stop,
                    step_size=self.step_size,
                    library="ak",
                    report=True,
                )
                for chunk, report in arrays:
                    yield chunk, piece.path, report.tree_entry_start
            except Exception as error:
                raise DataError(
                    f"{piece.path}: tree {self.schema.tree!r}, entries {piece.start}-{piece.stop}:"
                    f" cannot be read (truncated or corrupt file?): {error}"
                ) from error

    def _convert(self, chunk: ak.Array, path: str, first_entry: int) -> dict[str, np.ndarray]:
        """One chunk of a file → checked flat constituent rows (E, px, py, pz) in GeV, counts,
        labels and weights.

        Checks and unit conversions run on the flat constituent rows, before padding, so that
        their cost scales with the constituents rather than with the padded slots.
        """
        schema = self.schema
        where = f"{path}: tree {schema.tree!r}"
        flat, counts = flatten_constituents([chunk[b] for b in schema.constituents])
        entry = first_entry + np.arange(len(counts))

        finite = np.ones(len(counts), dtype=bool)
        # NaN propagates through min and max, and inf is their value: a cheap first look.
        if len(flat) and not (np.isfinite(flat.min()) and np.isfinite(flat.max())):
            finite_rows = np.isfinite(flat).all(axis=1)
            jet_of_row = np.repeat(np.arange(len(counts)), counts)
            finite[jet_of_row[~finite_rows]] = False
            bad = entry[~finite]
            branch = schema.constituents[int(np.argmax(~np.isfinite(flat).all(axis=0)))]
            if not self.drop_nonfinite:
                raise DataError(
                    f"{where}, branch {branch!r}, entries {_ranges(bad)}: NaN or inf momenta "
                    "(set drop_nonfinite=True to drop such jets)"
                )
            log.warning("%s: dropped %d jets with NaN or inf momenta (entries %s)",
                        where, len(bad), _ranges(bad))  # fmt: skip
            flat, counts = _keep_rows(flat, counts, finite[jet_of_row])

        flat = _to_e_px_py_pz(flat, schema)
        if schema.energy_unit != 1.0:
            flat *= np.float32(schema.energy_unit)
        # Slots with no energy are padding in fixed-length layouts.
        physical = flat[:, 0] > 0.0
        if not physical.all():
            flat, counts = _keep_rows(flat, counts, physical)

        empty = finite & (counts == 0)
        if empty.any():
            raise DataError(
                f"{where}, branch {schema.constituents[0]!r}, entries {_ranges(entry[empty])}: "
                "jets with no constituents"
            )
        label = self._labels(chunk, where, entry)
        weight = np.ones(len(counts), dtype=np.float32)
        if schema.weight is not None:
            weight = np.asarray(chunk[schema.weight], dtype=np.float32)
            if not np.isfinite(weight).all():
                bad = entry[~np.isfinite(weight)]
                raise DataError(f"{where}, branch {schema.weight!r}, entries {_ranges(bad)}: "
                                "NaN or inf weights")  # fmt: skip

        if not finite.all():
            counts, label, weight = counts[finite], label[finite], weight[finite]
        return {"flat": flat, "counts": counts, "label": label, "weight": weight}

    def _labels(self, chunk: ak.Array, where: str, entry: np.ndarray) -> np.ndarray:
        schema = self.schema
        if not schema.labels:
            label = np.asarray(chunk[schema.label])
            if label.dtype.kind == "f" and not np.all(label == np.round(label)):
                bad = entry[label != np.round(label)]
                raise DataError(f"{where}, branch {schema.label!r}, entries {_ranges(bad)}: "
                                "labels are not integers")  # fmt: skip
            return label.astype(np.int64)
        one_hot = np.stack([np.asarray(chunk[b]) for b in schema.labels], axis=1)
        valid = np.isin(one_hot, (0, 1)).all(axis=1) & (one_hot.sum(axis=1) == 1)
        if not valid.all():
            raise DataError(
                f"{where}, branches {list(schema.labels)}, entries {_ranges(entry[~valid])}: "
                "labels are not exactly one-hot"
            )
        return one_hot.argmax(axis=1).astype(np.int64)


def _keep_rows(flat: np.ndarray, counts: np.ndarray, keep: np.ndarray):
    """Drop flat rows where ``keep`` is False and recount the rows of every jet."""
    jet_of_row = np.repeat(np.arange(len(counts)), counts)
    return flat[keep], np.bincount(jet_of_row[keep], minlength=len(counts)).astype(np.int64)


def _to_e_px_py_pz(values: np.ndarray, schema: Schema) -> np.ndarray:
    if schema.representation == "e_px_py_pz":
        return values
    pt, eta, phi, energy = np.moveaxis(values, -1, 0)
    return np.stack((energy, pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)), axis=-1)


def _ranges(entries: np.ndarray, limit: int = 5) -> str:
    """Entry numbers as compact ranges: ``3-5, 9, 12-20``."""
    entries = np.sort(np.asarray(entries))
    breaks = np.nonzero(np.diff(entries) != 1)[0]
    starts = np.concatenate(([entries[0]], entries[breaks + 1]))
    stops = np.concatenate((entries[breaks], [entries[-1]]))
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts, stops, strict=True)]
    more = f" and {len(parts) - limit} more ranges" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def read_ahead(items: Iterator, depth: int) -> Iterator:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    Reading and decompression release the GIL for most of their time, so they overlap with the
    consumer's work. Items arrive in order; an exception from ``items`` is raised at its place.
    Closing the returned generator early stops the thread after its current item.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.05)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            put((end, error))

    thread = threading.Thread(target=produce, name="softsymlit-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _rows(jets: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {key: value[start:stop] for key, value in jets.items()}


def _to_batch(jets: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in jets.items()}


def _concatenate(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(chunks) == 1:
        return chunks[0]
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
