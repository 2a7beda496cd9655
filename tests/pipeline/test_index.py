"""``ewald index`` on simulated sweeps (preset tiny: 24 ED images of the MyD88 C2 cell), through
the real pipeline import → find_spots → index, against the simulator's true models."""
from __future__ import annotations

import json

import gemmi
import numpy as np
import pytest

from algorithms.geometry.models import Crystal
from algorithms.reflection_table import Flags
from algorithms.symmetry.reduction import niggli_reduce_crystal
from pipeline.cli import main
from pipeline.formats.expt import read_experiments, write_experiments
from pipeline.formats.refl import read_reflections, write_reflections
from pipeline.params import parse_parameters
from pipeline.steps import find_spots, import_, index, simulate
from truth_indexing import orientation_error_deg


def _run(module, args, *positional):
    params, _ = parse_parameters(module.Params, args)
    return module.run(*positional, params) if positional else params


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(imported experiment, strong spots, truth record, true experiment) of crystal 1."""
    folder = tmp_path_factory.mktemp("sim") / "tiny"
    simulate.run(parse_parameters(simulate.Params, ["preset=tiny", "n_crystals=1", "n_images=30"])[0], folder)
    imported = import_.run([str(folder / "1")], parse_parameters(import_.Params, ["goniometer.axis=-107,-122,0"])[0])
    strong = find_spots.run(imported.experiments, None, parse_parameters(find_spots.Params, ["d_max=20"])[0])
    truth = simulate.read_truth(folder / "1")
    return imported.experiments[0], strong.reflections, truth.record, truth.experiment


def _index(experiment, strong, *args):
    params, _ = parse_parameters(index.Params, ["detector.fix=distance", "goniometer.fix=None", *args])
    return index.run([experiment], strong, params)


def _integer_transform(A_found: np.ndarray, A_true: np.ndarray) -> np.ndarray:
    """T with h_found = T·h_true (A_true = A_found·T); must be integral with |det| = 1."""
    T = np.linalg.inv(A_found) @ A_true
    assert np.abs(T - np.rint(T)).max() < 0.05, T
    assert abs(abs(np.linalg.det(np.rint(T))) - 1) < 1e-9
    return np.rint(T).astype(int)


def _primitive(crystal: Crystal) -> Crystal:
    """The Niggli-reduced primitive P1 crystal of a C-centred one: a' = (a − b)/2, b' = (a + b)/2."""
    a, b, c = crystal.real_space_vectors
    reduced, _ = niggli_reduce_crystal(Crystal.from_real_space_vectors((a - b) / 2, (a + b) / 2, c))
    return reduced


def test_p1_indexing_recovers_the_true_lattice(sweep):
    experiment, strong, record, truth = sweep
    result = _index(experiment, strong)
    (indexed_experiment,), table = result.experiments, result.reflections
    summary = result.summary["sweeps"][0]
    crystal = indexed_experiment.crystal
    assert crystal.space_group.number == 1
    true_primitive = _primitive(truth.crystal)
    found = np.array(crystal.unit_cell.parameters)
    expected = np.array(true_primitive.unit_cell.parameters)
    assert np.allclose(found[:3], expected[:3], rtol=0.005)
    assert np.allclose(np.minimum(found[3:], 180 - found[3:]), np.minimum(expected[3:], 180 - expected[3:]), atol=0.5)
    # every indexed spot carries the true reflection's indices in the found basis
    T = _integer_transform(crystal.A, true_primitive.A)
    indexed = table["id"] == 0
    assert indexed.mean() >= 0.85
    rlp_true = table["rlp"][indexed] @ np.linalg.inv(true_primitive.A).T
    h_true = np.rint(rlp_true).astype(int)
    agree = np.all(table["miller_index"][indexed] == h_true @ T.T, axis=1)
    assert agree.mean() > 0.98
    rmsds = summary["rmsds"]
    assert rmsds["x_px"] <= 0.6 and rmsds["y_px"] <= 0.6 and rmsds["z_images"] <= 0.35
    # DIALS' columns and flags
    assert np.array_equal(table.get_flags(Flags.indexed), indexed)
    used = table.get_flags(Flags.used_in_refinement)
    outlier = table.get_flags(Flags.centroid_outlier)
    assert not np.any(used & outlier) and np.all(indexed[used | outlier]) and used.sum() == rmsds["nref"]
    assert np.all(table.get_flags(Flags.strong))
    assert np.all(table["miller_index"][~indexed] == 0) and np.all(table["xyzcal.px"][~indexed] == 0)
    dxy = np.linalg.norm(table["xyzcal.px"][used, :2] - table["xyzobs.px.value"][used, :2], axis=1)
    assert np.sqrt(np.mean(dxy**2)) < 1.0
    assert "shoebox" in table and len(table) == len(strong)
    assert table.experiment_identifiers == {0: indexed_experiment.identifier}
    s1_length = np.linalg.norm(table["s1"], axis=1)
    assert np.allclose(s1_length, 1 / indexed_experiment.beam.wavelength)
    assert summary["cycles"] and summary["candidates"]


def test_space_group_c2_gives_the_true_cell_and_orientation(sweep):
    experiment, strong, record, truth = sweep
    result = _index(experiment, strong, "space_group=C2")
    crystal = result.experiments[0].crystal
    assert crystal.space_group.hm == gemmi.SpaceGroup("C 1 2 1").hm
    assert np.allclose(crystal.unit_cell.parameters, record["unit_cell"], rtol=0.005)
    # orientation up to the lattice's 2-fold about b (the only indexing ambiguity of C2, β ≠ 90°),
    # relative to the detector at the scan centre (orientation_error_deg says why)
    assert orientation_error_deg(result.experiments[0], truth, (np.eye(3), np.diag([-1, 1, -1]))) < 0.2


def test_the_wrong_rotation_sense_has_the_larger_rmsd_z(sweep):
    experiment, strong, _, _ = sweep
    right = _index(experiment, strong, "self_check.enabled=False").summary["sweeps"][0]["rmsds"]
    wrong_experiment = experiment.copy()
    wrong_experiment.goniometer.invert()
    wrong = _index(wrong_experiment, strong, "self_check.enabled=False").summary["sweeps"][0]["rmsds"]
    assert wrong["z_images"] > 1.3 * right["z_images"]


def test_self_check_reverses_a_wrong_rotation_sense(sweep):
    experiment, strong, _, truth = sweep
    wrong_experiment = experiment.copy()
    wrong_experiment.goniometer.invert()
    result = _index(wrong_experiment, strong, "goniometer.fix=all", "max_rmsd_z_images=0.3")
    check = result.summary["sweeps"][0]["self_check"]
    assert check["chosen"] == "rotation axis reversed" and check["accepted"]
    axis = result.experiments[0].goniometer.rotation_axis
    assert np.dot(axis, truth.goniometer.rotation_axis) > 0.999


def test_a_cell_that_does_not_fit_the_known_one_is_an_error(sweep):
    experiment, strong, _, _ = sweep
    with pytest.raises(Exception, match="no candidate lattice|known cell"):
        _index(experiment, strong, "space_group=P4", "unit_cell=60,60,60,90,90,90")


def test_cli_writes_dials_files_and_reports(sweep, tmp_path, monkeypatch, capsys):
    experiment, strong, _, _ = sweep
    monkeypatch.chdir(tmp_path)
    write_experiments([experiment], "imported.expt")
    write_reflections(strong, "strong.refl")
    assert main(["index", "imported.expt", "strong.refl", "detector.fix=distance", "goniometer.fix=None"]) == 0
    log = (tmp_path / "index.log").read_text()
    for text in ("Candidate solutions:", "% indexed", "RMSDs by experiment:", "Refined crystal models:",
                 "U matrix:", "B matrix:", "A = UB:", "Saving refined experiments to indexed.expt"):
        assert text in log
    indexed = read_experiments("indexed.expt")
    table = read_reflections("indexed.refl")
    assert len(indexed) == 1 and indexed[0].crystal is not None and len(table) == len(strong)
    assert json.loads((tmp_path / "indexed.expt").read_text())["crystal"]
    capsys.readouterr()
    assert main(["index", "imported.expt"]) == 2
    assert "one experiment file" in capsys.readouterr().err


def _two_lattices(strong, shift_images=12):
    """The spots plus a copy moved ``shift_images`` later in the scan: a second lattice, the
    first rotated by that angle about the axis, so that indexing has two candidate lattices."""
    z = np.asarray(strong["xyzobs.px.value"])[:, 2]
    copy = strong.select(z < z.max() - shift_images)
    copy["xyzobs.px.value"] = np.asarray(copy["xyzobs.px.value"]) + [0.0, 0.0, shift_images]
    both = strong.concat([strong, copy])
    both["id"] = np.zeros(len(both), np.int32)
    return both


def test_the_self_check_retries_the_next_ranked_candidate_lattices(sweep):
    experiment, strong, record, _ = sweep
    strong = _two_lattices(strong)
    settings = index.settings_from_params(_run(index, ["detector.fix=distance", "goniometer.fix=None"]))
    first = index.index_sweep(experiment, strong, settings)
    assert len(first.candidates) == len(first.summary["candidates"]) >= 2
    # restarting from the chosen candidate's lattice reproduces the solution
    again = index.index_sweep(experiment, strong, settings, start_crystal=first.candidates[0].p1_crystal)
    np.testing.assert_allclose(again.experiment.crystal.A, first.experiment.crystal.A, atol=1e-9)
    # an unattainable RMSD_Z makes every solution poor: the next-ranked lattices are tried, the best kept
    check = index.SelfCheck(max_rmsd_z_images=0.01)
    outcome = index.index_with_self_check(experiment, strong, settings, check)
    attempts = outcome.summary["self_check"]["attempts"]
    n_next = min(len(first.candidates) - 1, index.NEXT_CANDIDATES)
    assert [a["attempt"].split(" (")[0] for a in attempts[1:1 + n_next]] == [
        f"as given, candidate {k}" for k in range(2, 2 + n_next)]
    second = attempts[1]
    assert (second["unit_cell"], second["fraction_indexed"]) != (attempts[0]["unit_cell"], attempts[0]["fraction_indexed"])
    assert not outcome.summary["self_check"]["accepted"]


def test_split_pieces_carry_their_reflections_indices_and_are_not_refined(sweep):
    """Spots that DIALS' duplicate rule leaves unindexed but that sit where an indexed spot of the
    same h is (a reflection the spot finder split in z) are indexed as pieces of it."""
    experiment, strong, _, truth = sweep
    dials = _index(experiment, strong, "split_pieces=False")
    result = _index(experiment, strong)
    table, summary = result.reflections, result.summary["sweeps"][0]
    indexed = table.get_flags(Flags.indexed)
    pieces = table.get_flags(Flags.excluded_for_refinement)
    assert summary["n_split_pieces"] == pieces.sum() > 0
    # the same refinement and assignment as DIALS' rule, plus the pieces
    np.testing.assert_array_equal(indexed & ~pieces, dials.reflections.get_flags(Flags.indexed))
    assert summary["rmsds"] == dials.summary["sweeps"][0]["rmsds"]
    assert not np.any(pieces & table.get_flags(Flags.used_in_refinement))
    # each piece has the true indices (in the found basis) and shares its reflection's prediction
    # with a refined spot at the same detector place
    crystal = result.experiments[0].crystal
    T = _integer_transform(crystal.A, _primitive(truth.crystal).A)
    h_true = np.rint(table["rlp"][pieces] @ np.linalg.inv(_primitive(truth.crystal).A).T).astype(int)
    np.testing.assert_array_equal(table["miller_index"][pieces], h_true @ T.T)
    kept = indexed & ~pieces
    for row in np.nonzero(pieces)[0]:
        same = np.nonzero(kept & np.all(table["miller_index"] == table["miller_index"][row], axis=1)
                          & np.all(table["xyzcal.px"] == table["xyzcal.px"][row], axis=1))[0]
        assert len(same) >= 1 and np.abs(table["xyzobs.px.value"][same, :2]
                                          - table["xyzobs.px.value"][row, :2]).max() < 6
