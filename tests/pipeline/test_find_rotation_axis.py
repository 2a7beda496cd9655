"""``ewald find_rotation_axis`` on a simulated ED sweep (preset tiny, 30 images): started from the
Timepix header's axis, it must recover the true axis direction and sense."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.formats.expt import read_experiments, write_experiments
from pipeline.formats.refl import write_reflections
from pipeline.params import parse_parameters
from pipeline.steps import find_rotation_axis, find_spots, import_, simulate


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim") / "tiny"
    simulate.run(parse_parameters(simulate.Params, ["preset=tiny", "n_crystals=1", "n_images=30"])[0], folder)
    imported = import_.run([str(folder / "1")], import_.Params())  # the header's axis, not the true one
    strong = find_spots.run(imported.experiments, None, parse_parameters(find_spots.Params, ["d_max=20"])[0])
    return imported.experiments[0], strong.reflections, simulate.read_truth(folder / "1").experiment


def test_recovers_the_true_axis_and_sense_from_the_header_axis(sweep):
    experiment, strong, truth = sweep
    true_axis = truth.goniometer.rotation_axis
    assert np.degrees(np.arccos(abs(experiment.goniometer.rotation_axis @ true_axis))) > 30  # the header is wrong
    params, _ = parse_parameters(find_rotation_axis.Params, ["azimuth_step=10"])
    best, table = find_rotation_axis.find_rotation_axis(experiment, strong, params)
    axis = best.goniometer.rotation_axis
    assert np.degrees(np.arccos(np.clip(axis @ true_axis, -1, 1))) < 1.0  # direction and sense
    assert np.isclose(np.linalg.norm(axis), 1.0) and abs(axis @ best.beam.direction) < 1e-9
    sense = {row["stage"]: row for row in table if row["stage"].startswith("sense")}
    (chosen,) = [row for row in table if row.get("chosen")]
    assert set(sense) == {"sense +", "sense −"} and chosen["stage"] in {"sense +", "sense −", "refined"}
    # the chosen sense predicts the rotation angles better (Clabbers et al. 2018)
    right = min(sense.values(), key=lambda row: abs((row["azimuth_deg"] - chosen["azimuth_deg"] + 180) % 360 - 180))
    wrong = sense["sense −"] if right is sense["sense +"] else sense["sense +"]
    assert right["rmsd_z_images"] < 0.8 * wrong["rmsd_z_images"]
    assert {row["stage"] for row in table} <= {"coarse", "fine", "sense +", "sense −", "refined"}
    coarse = [row for row in table if row["stage"] == "coarse"]
    assert len(coarse) == 36
    # the cheap lattice score alone puts the true axis (either sense: a flat Ewald sphere) near the top
    best_coarse = max(coarse, key=lambda row: row["lattice_score"])
    assert np.degrees(np.arccos(abs(np.array(best_coarse["axis"]) @ true_axis))) <= 10.0


def test_axis_helpers_are_inverse():
    from algorithms.geometry.models import Beam, Detector, Experiment

    experiment = Experiment(beam=Beam(), detector=Detector(origin=np.array([-10.0, 10.0, -100.0])))
    for azimuth in (0.0, 48.75, 228.75, 359.0):
        assert np.isclose(find_rotation_axis.azimuth_of(experiment, find_rotation_axis.axis_at(experiment, azimuth)),
                          azimuth)
    assert np.allclose(find_rotation_axis.axis_at(experiment, 90.0), [0, 1, 0])


def test_cli_writes_the_optimised_experiments(sweep, tmp_path, monkeypatch):
    experiment, strong, truth = sweep
    monkeypatch.chdir(tmp_path)
    write_experiments([experiment], "imported.expt")
    write_reflections(strong, "strong.refl")
    assert main(["find_rotation_axis", "imported.expt", "strong.refl", "azimuth_step=15"]) == 0
    (best,) = read_experiments("optimised.expt")
    assert best.goniometer.rotation_axis @ truth.goniometer.rotation_axis > np.cos(np.radians(1.0))
    assert "sense +" in (tmp_path / "find_rotation_axis.log").read_text()


def test_xray_sweep_from_a_wrong_axis(tmp_path):
    """The X-ray preset (curved Ewald sphere, 1000² detector, lysozyme): nothing in the search is
    specific to electrons; started from an axis 53° off, in the wrong sense's half-turn."""
    simulate.run(parse_parameters(simulate.Params, ["preset=xray", "n_crystals=1", "n_images=20"])[0], tmp_path)
    imported = import_.run([str(tmp_path / "1")], import_.Params())
    strong = find_spots.run(imported.experiments, None, find_spots.Params())
    experiment = imported.experiments[0]
    experiment.goniometer.rotation_axis = np.array([-0.6, 0.8, 0.0])
    true_axis = simulate.read_truth(tmp_path / "1").experiment.goniometer.rotation_axis
    best, table = find_rotation_axis.find_rotation_axis(experiment, strong.reflections, find_rotation_axis.Params())
    axis = best.goniometer.rotation_axis
    assert np.degrees(np.arccos(np.clip(axis @ true_axis, -1, 1))) < 0.2


def test_real_quartz_ed_sweep_from_a_turned_axis(shared_data):
    """DIALS' quartz 3D ED data (real spots): started from the imported axis turned by 130° about
    the beam, the search comes back to the axis DIALS processed it with, in the right sense."""
    from algorithms.geometry.models import rotation_matrix
    from pipeline.formats.refl import read_reflections

    folder = shared_data / "quartz_processed"
    (imported,) = read_experiments(str(folder / "imported.expt"))
    (refined,) = read_experiments(str(folder / "refined.expt"))
    strong = read_reflections(str(folder / "strong.refl"))
    experiment = imported.copy()
    experiment.goniometer.rotation_axis = rotation_matrix(imported.beam.direction, np.radians(130.0)) @ \
        imported.goniometer.rotation_axis
    best, table = find_rotation_axis.find_rotation_axis(experiment, strong, find_rotation_axis.Params())
    dials_axis = refined.goniometer.rotation_axis_lab
    assert np.degrees(np.arccos(np.clip(best.goniometer.rotation_axis_lab @ dials_axis, -1, 1))) < 0.2
    sense = {row["stage"]: row["rmsd_z_images"] for row in table if row["stage"].startswith("sense")}
    assert max(sense.values()) > 3 * min(sense.values())  # real curvature evidence: 0.22 vs 2.1 images
