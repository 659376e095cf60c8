"""Streaming ROOT data: layouts, coverage, DDP shares, and errors on bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from softsymlit.data import DataError, JetDataModule, JetStream, partition


def _jetclass_arrays(sample: Path, split: str = "val"):
    path = next((sample / split).glob("*.root"))
    return path, uproot.open(path)["tree"].arrays()


def _write(path: Path, branches: dict, tree: str = "tree") -> Path:
    with uproot.recreate(path) as file:
        file[tree] = branches
    return path


def _write_jagged(path: Path, jagged: dict, flat: dict, counter: str = "npart") -> Path:
    """Write jagged branches sharing one counter, named exactly as given."""
    with uproot.recreate(path) as file:
        types = {"c": ak.zip(jagged).type.content} | {k: v.dtype for k, v in flat.items()}
        tree = file.mktree(
            "tree", types, counter_name=lambda _: counter, field_name=lambda _, inner: inner
        )
        tree.extend({"c": ak.zip(jagged)} | flat)
    return path


def _all_jets(stream) -> dict[str, torch.Tensor]:
    batches = list(stream)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_jetclass_and_atlas_layouts_of_the_same_jets_give_the_same_batches(
    generated_sample, tmp_path
):
    path, jets = _jetclass_arrays(generated_sample)
    pt = np.hypot(jets.part_px, jets.part_py)
    atlas = _write_jagged(
        tmp_path / "atlas.root",
        {
            "fjet_clus_pt": 1e3 * pt,
            "fjet_clus_eta": np.arcsinh(jets.part_pz / pt),
            "fjet_clus_phi": np.arctan2(jets.part_py, jets.part_px),
            "fjet_clus_E": 1e3 * jets.part_energy,
        },
        {"labels": ak.to_numpy(jets.label_Tbqq).astype(np.int32),
         "weights": np.full(len(jets), 0.5, dtype=np.float32)},
    )  # fmt: skip
    reference = _all_jets(JetStream(str(path), batch_size=100, max_particles=64))
    converted = _all_jets(JetStream(str(atlas), schema="atlas", batch_size=100, max_particles=64))

    torch.testing.assert_close(converted["mask"], reference["mask"])
    torch.testing.assert_close(converted["label"], reference["label"])
    torch.testing.assert_close(converted["p4"], reference["p4"], rtol=1e-4, atol=1e-3)
    assert torch.all(converted["weight"] == 0.5) and torch.all(reference["weight"] == 1.0)
    assert reference["p4"].shape == (len(jets), 64, 4)


def test_padding_truncates_to_max_particles_in_file_order(generated_sample):
    path, jets = _jetclass_arrays(generated_sample)
    batch = next(iter(JetStream(str(path), batch_size=len(jets), max_particles=16)))
    counts = np.minimum(ak.to_numpy(ak.num(jets.part_px)), 16)
    np.testing.assert_array_equal(batch["mask"].sum(1).numpy(), counts)
    np.testing.assert_allclose(batch["p4"][0, :counts[0], 1].numpy(),
                               ak.to_numpy(jets.part_px[0][:counts[0]]))  # fmt: skip
    assert torch.all(batch["p4"][~batch["mask"]] == 0)


@pytest.fixture(scope="module")
def many_files(generated_sample, tmp_path_factory):
    """Seven small files of uneven sizes cut from the training sample, each jet tagged by an id."""
    folder = tmp_path_factory.mktemp("many")
    jets = ak.concatenate(
        [uproot.open(f)["tree"].arrays() for f in sorted((generated_sample / "train").glob("*"))]
    )
    sizes = [37, 120, 5, 64, 250, 9, 77]
    start = 0
    for k, size in enumerate(sizes):
        piece = jets[start : start + size]
        # The id rides in the weight branch so it comes back through the batch.
        ids = np.arange(start, start + size, dtype=np.float32)
        _write_jagged(
            folder / f"part_{k}.root",
            {f"part_{c}": piece[f"part_{c}"] for c in ("px", "py", "pz", "energy")},
            {"label_QCD": ak.to_numpy(piece.label_QCD), "label_Tbqq": ak.to_numpy(piece.label_Tbqq),
             "jet_id": ids},
        )  # fmt: skip
        start += size
    return folder, start


SCHEMA_WITH_ID = {"name": "with_id", "weight": "jet_id"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_many_files_yields_every_jet_once_per_epoch(many_files, num_workers):
    folder, total = many_files
    data = JetDataModule(
        train_files=str(folder / "*.root"), schema=SCHEMA_WITH_ID, batch_size=32,
        shuffle_buffer=100, num_workers=num_workers, seed=3,
    )  # fmt: skip
    data.setup("fit")
    loader = data.train_dataloader()
    epochs = []
    for epoch in range(2):
        loader.dataset.epoch = epoch
        loader._epoch = lambda e=epoch: e
        ids = torch.cat([b["weight"] for b in loader]).long()
        assert sorted(ids.tolist()) == list(range(total))
        epochs.append(ids)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    assert not torch.equal(epochs[0], torch.arange(total))


def test_ranks_get_disjoint_equal_shares_from_uneven_files():
    entries = [("a", 37), ("b", 120), ("c", 5), ("d", 64), ("e", 250), ("f", 9), ("g", 77)]
    shares = []
    for rank in range(2):
        for worker in range(3):
            ranges, skipped = partition(entries, rank, 2, worker, 3)
            shares.append({(r.path, i) for r in ranges for i in range(r.start, r.stop)})
    assert skipped == 562 % 2
    rank_sizes = [sum(len(s) for s in shares[:3]), sum(len(s) for s in shares[3:])]
    assert rank_sizes == [281, 281]
    union = set().union(*shares)
    assert len(union) == sum(len(s) for s in shares) == 562 - skipped


def _ddp_worker(rank: int, folder: str, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    from types import SimpleNamespace

    progress = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))

    class FakeTrainer:
        global_rank, world_size, fit_loop = rank, 2, progress

    data = JetDataModule(train_files=f"{folder}/*.root", schema=SCHEMA_WITH_ID, batch_size=16)
    data.trainer = FakeTrainer()
    data.setup("fit")
    loader = data.train_dataloader()
    batches = list(loader)
    count = torch.tensor([len(batches)])
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(2)]
    dist.all_gather(counts, count)
    ids = torch.cat([b["weight"] for b in batches]).long()
    torch.save({"ids": ids, "counts": counts, "len": len(loader)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_ranks_get_disjoint_jets_and_equal_batch_counts(many_files, tmp_path):
    import socket

    import torch.multiprocessing as mp

    folder, total = many_files
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(str(folder), port, str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert results[0]["counts"][0] == results[0]["counts"][1] == results[0]["len"]
    first, second = (set(r["ids"].tolist()) for r in results)
    assert not first & second
    assert len(first) == len(second) == total // 2


# Bad input ---------------------------------------------------------------------------------


def test_missing_file_and_empty_glob_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.root"):
        JetStream(str(tmp_path / "nothing.root"))
    with pytest.raises(FileNotFoundError, match=r"no ROOT file matches .*\*\.root"):
        JetStream(str(tmp_path / "*.root"))


def test_unreadable_and_truncated_files_are_named(generated_sample, tmp_path):
    garbage = tmp_path / "garbage.root"
    garbage.write_bytes(b"this is not a ROOT file" * 10)
    with pytest.raises(DataError, match="garbage.root: cannot be opened"):
        JetStream(str(garbage))

    path, _ = _jetclass_arrays(generated_sample)
    truncated = tmp_path / "truncated.root"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.root") as error:
        list(JetStream(str(truncated)))
    assert "tree 'tree'" in str(error.value) or "cannot be opened" in str(error.value)


def test_missing_tree_and_branch_list_what_is_there(generated_sample, tmp_path):
    path, jets = _jetclass_arrays(generated_sample)
    with pytest.raises(DataError, match=r"no tree 'jets'.*trees in the file: tree"):
        JetStream(str(path), schema={"tree": "jets"})

    lacking = _write_jagged(
        tmp_path / "lacking.root",
        {f"part_{c}": jets[f"part_{c}"] for c in ("px", "py", "pz")},
        {"label_QCD": ak.to_numpy(jets.label_QCD), "label_Tbqq": ak.to_numpy(jets.label_Tbqq)},
    )
    with pytest.raises(DataError, match=r"lacks branches \['part_energy'\].*available: .*part_px"):
        JetStream(str(lacking))


def test_schema_that_does_not_match_names_the_matching_one(generated_sample):
    path, _ = _jetclass_arrays(generated_sample)
    with pytest.raises(DataError, match=r"schema 'atlas'.*matches schema 'jetclass'"):
        JetStream(str(path), schema="atlas")


def _corrupted(generated_sample, tmp_path, change) -> tuple[Path, int]:
    path, jets = _jetclass_arrays(generated_sample)
    columns = {f"part_{c}": jets[f"part_{c}"] for c in ("px", "py", "pz", "energy")}
    labels = {"label_QCD": ak.to_numpy(jets.label_QCD).copy(),
              "label_Tbqq": ak.to_numpy(jets.label_Tbqq).copy()}  # fmt: skip
    change(columns, labels)
    return _write_jagged(tmp_path / "bad.root", columns, labels), len(jets)


def test_nan_momenta_raise_with_entries_or_are_dropped_and_counted(
    generated_sample, tmp_path, caplog
):
    def poison(columns, labels):
        energy = ak.to_list(columns["part_energy"])
        energy[3][0] = float("nan")
        energy[4][2] = float("inf")
        columns["part_energy"] = ak.Array(energy)

    path, n = _corrupted(generated_sample, tmp_path, poison)
    with pytest.raises(DataError, match=r"bad.root.*branch 'part_energy', entries 3-4: NaN or inf"):
        list(JetStream(str(path)))
    with caplog.at_level(logging.WARNING):
        jets = _all_jets(JetStream(str(path), drop_nonfinite=True))
    assert len(jets["label"]) == n - 2
    assert "dropped 2 jets" in caplog.text


def test_empty_jets_and_bad_labels_are_named(generated_sample, tmp_path):
    def empty(columns, labels):
        for name in columns:
            values = ak.to_list(columns[name])
            values[6] = []
            columns[name] = ak.Array(values)

    path, _ = _corrupted(generated_sample, tmp_path, empty)
    with pytest.raises(DataError, match=r"entries 6: jets with no constituents"):
        list(JetStream(str(path)))

    def two_hot(columns, labels):
        labels["label_QCD"][[2, 9]] = 1
        labels["label_Tbqq"][[2, 9]] = 1

    path, _ = _corrupted(generated_sample, tmp_path, two_hot)
    with pytest.raises(DataError, match=r"label_QCD.*entries 2, 9: labels are not exactly one-hot"):
        list(JetStream(str(path)))


def test_read_ahead_keeps_order_raises_in_place_and_stops_when_closed():
    import threading

    from softsymlit.data.dataset import read_ahead

    def items():
        yield from range(5)
        raise RuntimeError("broken at 5")

    received = []
    with pytest.raises(RuntimeError, match="broken at 5"):
        for item in read_ahead(items(), depth=2):
            received.append(item)
    assert received == [0, 1, 2, 3, 4]

    endless = read_ahead(iter(range(10**9)), depth=1)
    assert [next(endless) for _ in range(3)] == [0, 1, 2]
    endless.close()
    assert not any(t.name == "softsymlit-read-ahead" for t in threading.enumerate())


def test_streams_with_and_without_read_ahead_give_the_same_batches(many_files):
    folder, _ = many_files
    streams = [JetStream(str(folder / "*.root"), schema=SCHEMA_WITH_ID, batch_size=50,
                         step_size=40, shuffle=True, shuffle_buffer=90, read_ahead=depth)
               for depth in (0, 3)]  # fmt: skip
    first, second = (_all_jets(stream) for stream in streams)
    for key in first:
        torch.testing.assert_close(first[key], second[key])
