"""``ewald calibrate_distance`` against exact truth: data sets indexed in P1 at the walk-through's
wrong distance (2193 mm) give back the true 1762 mm; a crystal of another lattice is excluded."""
import json

import numpy as np
import pytest

from indexed_p1_data import indexed_p1
from pipeline.cli import main
from pipeline.formats.expt import write_experiments
from pipeline.formats.refl import write_reflections
from pipeline.steps.calibrate_distance import calibrate_distance, calibration_table

KNOWN = (99.06, 31.01, 54.30, 90, 107.7, 90)


@pytest.fixture(scope="module")
def datasets():
    good = [indexed_p1(seed=s, index_distance_mm=2193.0, n_reflections=500) for s in range(10, 14)]
    other = indexed_p1(seed=20, cell=(80.0, 40.0, 60.0, 90, 100.0, 90), index_distance_mm=2193.0, n_reflections=500)
    return good, other


def test_each_distance_and_the_median_are_the_true_distance(datasets):
    good, other = datasets
    pairs = [(d.experiment, d.reflections) for d in good] + [(other.experiment, other.reflections)]
    summary = calibrate_distance(pairs, KNOWN, (0.01,), "C2")
    assert summary["n_used"] == 4 and summary["n_excluded"] == 1
    assert summary["datasets"][-1]["status"] == "excluded" and "does not match" in summary["datasets"][-1]["reason"]
    assert summary["distances"][-1] is None
    for d in summary["datasets"][:4]:
        assert d["distance_mm"] == pytest.approx(1762.0, rel=0.01)
        assert np.allclose(d["unit_cell"], KNOWN, atol=0.05)
        assert d["initial_distance_mm"] == pytest.approx(2193.0)
    assert summary["distance_mm"] == pytest.approx(1762.0, rel=0.005)
    assert summary["min_distance_mm"] <= summary["distance_mm"] <= summary["max_distance_mm"]
    text = calibration_table(summary)
    assert "Calibrated detector distance (median):" in text and "excluded" in text


def test_space_group_none_finds_the_monoclinic_lattice(datasets):
    good, _ = datasets
    summary = calibrate_distance([(good[0].experiment, good[0].reflections)], KNOWN)
    (d,) = summary["datasets"]
    assert d["status"] == "ok" and d["space_group"] == "C 1 2 1"
    assert d["distance_mm"] == pytest.approx(1762.0, rel=0.01)


def test_cli_folders_and_pairs(tmp_path, monkeypatch, datasets):
    good, other = datasets
    for i, d in enumerate(good[:2] + [other]):
        folder = tmp_path / str(i + 1)
        folder.mkdir()
        write_experiments([d.experiment], folder / "indexed.expt")
        write_reflections(d.reflections, folder / "indexed.refl")
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate_distance", "1", "2", "3/indexed.expt", "3/indexed.refl",
                 "unit_cell=99.06,31.01,54.30,90,107.7,90", "sigmas=0.01", "space_group=C2"]) == 0
    result = json.loads((tmp_path / "calibrated_distance.json").read_text())
    assert result["distance_mm"] == pytest.approx(1762.0, rel=0.005) and result["n_excluded"] == 1
    assert "Calibrated detector distance (median)" in (tmp_path / "calibrate_distance.log").read_text()
    assert main(["calibrate_distance", "1"]) == 2  # no unit_cell
    assert main(["calibrate_distance", "3", "unit_cell=99.06,31.01,54.30,90,107.7,90", "space_group=C2",
                 "output.json=none.json"]) == 2
    assert not (tmp_path / "none.json").exists()
