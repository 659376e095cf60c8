"""Generated jets are physical, stored completely, and reproducible from the seed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import awkward as ak
import numpy as np
import pytest
import uproot

from softsymlit.data.generate import generate_sample, read_metadata


def _read(sample, split="train"):
    files = sorted((sample / split).glob("*.root"))
    return ak.concatenate([uproot.open(f)["tree"].arrays() for f in files])


def test_top_jets_have_the_top_mass_and_qcd_jets_do_not(generated_sample):
    jets = _read(generated_sample)
    top = jets.jet_mass[jets.label_Tbqq == 1]
    qcd = jets.jet_mass[jets.label_QCD == 1]
    assert 160.0 < np.median(top) < 185.0
    assert np.median(qcd) < 110.0
    assert len(top) == len(qcd)


def test_constituents_sum_to_the_jet_and_respect_the_window(generated_sample):
    jets = _read(generated_sample)
    total = {c: ak.to_numpy(ak.sum(jets[f"part_{c}"], axis=1)) for c in ("px", "py", "pz")}
    energy = ak.to_numpy(ak.sum(jets.part_energy, axis=1))
    scale = ak.to_numpy(jets.jet_energy)
    np.testing.assert_allclose(energy, scale, rtol=2e-5)
    np.testing.assert_allclose(np.hypot(total["px"], total["py"]), jets.jet_pt, rtol=2e-4)
    assert ak.all((jets.jet_pt > 550.0) & (jets.jet_pt < 650.0))
    assert ak.all(abs(jets.jet_eta) < 2.0)
    pt = np.hypot(jets.part_px, jets.part_py)
    assert ak.all(pt[:, 1:] <= pt[:, :-1])
    assert ak.all(ak.num(jets.part_px) == jets.jet_nparticles)


def test_files_store_the_settings_and_the_manifest_lists_them(generated_sample):
    manifest = json.loads((generated_sample / "manifest.json").read_text())
    assert [len(manifest["files"][s]) for s in ("train", "val", "test")] == [4, 1, 1]
    metadata = read_metadata(generated_sample / manifest["files"]["val"][0])
    assert metadata["seed"] == 7 and metadata["split"] == "val"
    assert metadata["settings"]["pt_min"] == 550.0 and metadata["settings"]["mpi"] is True
    assert manifest["events"]["ttbar"] > 0


def _arrays(folder):
    return [uproot.open(f)["tree"].arrays().tolist() for f in sorted(folder.rglob("*.root"))]


def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path):
    generate_sample(tmp_path / "a", num_jets=60, seed=3, shard_size=20, workers=1, progress=False)
    generate_sample(tmp_path / "b", num_jets=60, seed=3, shard_size=20, workers=2, progress=False)
    generate_sample(tmp_path / "c", num_jets=60, seed=4, shard_size=20, workers=1, progress=False)
    assert _arrays(tmp_path / "a") == _arrays(tmp_path / "b")
    assert _arrays(tmp_path / "a") != _arrays(tmp_path / "c")


def test_an_interrupted_run_leaves_no_whole_looking_file_and_resumes(tmp_path):
    code = (
        "from softsymlit.data.generate import generate_sample as g;"
        f"g({str(tmp_path / 'run')!r}, num_jets=160, seed=5, shard_size=20, progress=False)"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while not list((tmp_path / "run").rglob("shard_*.root")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert not (tmp_path / "run" / "manifest.json").exists()
    for path in (tmp_path / "run").rglob("shard_*.root"):
        assert uproot.open(path)["tree"].num_entries == 20

    generate_sample(tmp_path / "run", num_jets=160, seed=5, shard_size=20, progress=False)
    generate_sample(tmp_path / "ref", num_jets=160, seed=5, shard_size=20, progress=False)
    assert _arrays(tmp_path / "run") == _arrays(tmp_path / "ref")
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_other_settings_in_an_existing_sample_are_refused(generated_sample):
    with pytest.raises(FileExistsError, match="other settings"):
        generate_sample(generated_sample, num_jets=2400, seed=8, shard_size=400, progress=False)
