"""The whole job on a small simulated data set, as the README's demo runs it: simulate, process
(finding the rotation axis and the distance), merge, and compare with the true intensities."""
import json
import shutil

import gemmi
import numpy as np
import pytest

from pipeline.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        status = main(["demo", "folder=.", "preset=tiny", "n_workers=1"])
    assert status == 0
    return folder


def test_demo_merges_close_to_the_truth(demo):
    from pipeline.truth import compare_with_truth

    proc = demo / "proc"
    merged = gemmi.read_mtz_file(str(proc / "scale" / "merged.mtz"))
    assert {"IMEAN", "SIGIMEAN", "F", "SIGF"} <= set(merged.column_labels())
    assert merged.spacegroup.hm == "C 1 2 1"
    comparison = compare_with_truth(proc / "scale" / "merged.mtz", demo / "sim" / "true_merged.mtz", d_min=3.0)
    # two 24-image crystals with 15 % per-observation (dynamical) error give CC ≈ 0.95
    assert comparison["cc"] >= 0.9, comparison
    log = (demo / "demo.log").read_text()
    assert f"CC(merged, true) = {comparison['cc']:.4f}" in log
    assert "Summary of merging statistics" in log and "Data sets:" in log


def test_demo_found_the_axis_and_distance(demo):
    truth = json.loads((demo / "sim" / "1" / "truth.json").read_text())
    imported = json.loads((demo / "proc" / "1" / "imported.expt").read_text())
    axis = np.array(imported["goniometer"][0]["rotation_axis"])
    true_axis = np.array(truth["rotation_axis"])
    assert np.degrees(np.arccos(np.clip(axis @ true_axis, -1, 1))) < 1.0
    panel = imported["detector"][0]["panels"][0]
    normal = np.cross(panel["fast_axis"], panel["slow_axis"])
    distance = abs(np.dot(panel["origin"], normal / np.linalg.norm(normal)))
    assert distance == pytest.approx(truth["distance_mm"], rel=0.01)


def test_every_step_left_its_files(demo):
    for crystal in ("1", "2"):
        folder = demo / "proc" / crystal
        for name in ("imported.expt", "strong.refl", "indexed.expt", "indexed.refl", "refined.expt", "refined.refl",
                     "integrated.expt", "integrated.refl"):
            assert (folder / name).is_file(), name
    for name in ("scaled.expt", "scaled.refl", "scaled.mtz", "merged.mtz", "scaled.html"):
        assert (demo / "proc" / "scale" / name).is_file(), name


def test_a_broken_data_set_is_reported_and_the_others_merged(demo, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(demo / "sim" / "2", broken)
    image = broken / "00005.img"
    image.write_bytes(image.read_bytes()[:1000])  # truncated
    monkeypatch.chdir(tmp_path)
    status = main(["process", str(demo / "sim" / "1"), str(demo / "sim" / "2"), str(broken),
                   "goniometer.axis=-107,-122,0", "space_group=C2", "d_min=3.0", f"workdir={tmp_path / 'proc'}",
                   "n_workers=1"])
    assert status == 0
    log = (tmp_path / "process.log").read_text()
    line = next(l for l in log.splitlines() if l.startswith("broken"))
    assert "failed" in line and "import" in line and "00005.img" in line
    assert (tmp_path / "proc" / "scale" / "merged.mtz").is_file()
    scaled = json.loads((tmp_path / "proc" / "scale" / "scaled.expt").read_text())
    assert len(scaled["experiment"]) == 2
