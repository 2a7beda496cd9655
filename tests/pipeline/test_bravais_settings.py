"""``ewald refine_bravais_settings`` on P1 indexing results with exact truth (C2 indexed at the
walk-through's wrong distance, P4₃2₁2, P1) and on DIALS' real cRED lysozyme result."""
import json

import numpy as np
import pytest

from algorithms.indexing.assign import assign_indices
from algorithms.symmetry import ChangeOfBasis
from indexed_p1_data import indexed_p1
from pipeline.cli import main
from pipeline.formats.expt import read_experiments, write_experiments
from pipeline.formats.refl import read_reflections, write_reflections
from pipeline.params import parse_parameters
from pipeline.steps import refine_bravais_settings as rbs
from pipeline.steps.reindex import reindex_reflections

DISTANCE_SCALE = 2193.0 / 1762.0


def _run(data, *args):
    params, _ = parse_parameters(rbs.Params, list(args))
    return rbs.run([data.experiment], data.reflections, params)


def _by_lattice(result, symbol):
    return [s for s in result.summary["solutions"] if s.setting.setting_symbol == symbol]


@pytest.fixture(scope="module")
def myd88_like():
    return indexed_p1(seed=1, index_distance_mm=2193.0)


@pytest.fixture(scope="module")
def c2_result(myd88_like):
    return _run(myd88_like, "detector.fix=distance", "best_monoclinic_beta=False")


def test_c2_lattice_is_found_and_recommended(c2_result):
    solutions = c2_result.summary["solutions"]
    assert {s.setting.setting_symbol for s in solutions} == {"aP", "mC"}
    mc = _by_lattice(c2_result, "mC")[0]
    assert mc.setting.max_delta_deg < 2.0 and mc.recommended
    assert mc.number == 2 and _by_lattice(c2_result, "aP")[0].number == 1
    # the refined C2 cell is the true one scaled by the wrong distance (distance fixed)
    cell = np.array(mc.experiment.crystal.unit_cell.parameters)
    expected = np.array([99.06 * DISTANCE_SCALE, 31.01 * DISTANCE_SCALE, 54.30 * DISTANCE_SCALE, 90, 107.7, 90])
    assert np.allclose(cell[:3], expected[:3], rtol=2e-3) and np.allclose(cell[3:], expected[3:], atol=0.05)
    assert mc.experiment.crystal.space_group.hm == "C 1 2 1"
    assert mc.experiment.detector.distance_mm == pytest.approx(2193.0)
    # symmetry-related strong spots agree (intensities are a function of the unique index)
    assert mc.min_cc > 0.9 and mc.cc_nrefs[0] > 10
    assert mc.rmsd_mm < 0.03 and mc.nspots > 600  # noise 0.3 px = 0.0165 mm per axis


def test_reindexing_with_the_printed_cb_op_gives_the_setting_cell(myd88_like, c2_result):
    mc = _by_lattice(c2_result, "mC")[0]
    cb_op = ChangeOfBasis.from_string(mc.setting.cb_op.as_string())
    table, dropped = reindex_reflections(myd88_like.reflections, cb_op)
    assert dropped == 0
    crystal = cb_op.apply_to_crystal(myd88_like.experiment.crystal)
    assert np.allclose(crystal.unit_cell.parameters, mc.experiment.crystal.unit_cell.parameters, rtol=2e-3, atol=0.1)
    # the re-indexed indices are the true C2 indices (up to the cell's own symmetry)
    truth_hkl = np.rint(myd88_like.reflections["miller_index"] @ np.linalg.inv(myd88_like.to_p1).T).astype(int)
    same = np.all(table["miller_index"] == truth_hkl, axis=1)
    twofold = np.all(table["miller_index"] == truth_hkl * [-1, 1, -1], axis=1)
    assert same.all() or twofold.all()


def test_best_monoclinic_beta_gives_the_i2_cell(myd88_like):
    result = _run(myd88_like, "detector.fix=distance")
    mi = _by_lattice(result, "mI")[0]
    cell = mi.experiment.crystal.unit_cell
    # tutorial: I2 cell 64.31 37.02 115.99 90 104.37 90 (β 104.4° instead of 107.5°)
    assert 90.0 <= cell.beta < 107.7 and mi.experiment.crystal.space_group.hm == "I 1 2 1"
    assert mi.recommended


def test_tetragonal_lattice_and_its_subgroups():
    data = indexed_p1(seed=2, cell=(57.8, 57.8, 150.0, 90, 90, 90), space_group="P 43 21 2", xray=True,
                      n_reflections=3000)
    result = _run(data)
    symbols = sorted(s.setting.setting_symbol for s in result.summary["solutions"])
    # P4/mmm: tP, oP, oC, 3 × mP (two-folds along a, b, c), 2 × mC (along a ± b), aP
    assert symbols == sorted(["tP", "oC", "oP", "mC", "mC", "mP", "mP", "mP", "aP"])
    tp = _by_lattice(result, "tP")[0]
    assert tp.recommended and tp.setting.max_delta_deg < 0.01 and tp.min_cc > 0.9
    assert len(tp.correlation_coefficients) == 7  # the 7 non-identity rotations of 422
    cell = tp.experiment.crystal.unit_cell.parameters
    assert np.allclose(cell, (57.8, 57.8, 150.0, 90, 90, 90), atol=0.05)


def test_triclinic_cell_has_only_ap():
    data = indexed_p1(seed=3, cell=(31.0, 42.0, 55.0, 79.0, 84.0, 71.0), space_group="P 1", n_reflections=600)
    result = _run(data, "detector.fix=distance")  # ED: cell and distance are degenerate
    (only,) = result.summary["solutions"]
    assert only.setting.bravais == "aP" and only.recommended and only.min_cc is None
    assert np.allclose(sorted(only.experiment.crystal.unit_cell.parameters[:3]), [31.0, 42.0, 55.0], atol=0.05)


def test_cc_is_low_when_only_the_metric_is_symmetric():
    """A P1 crystal with a monoclinic metric: the mP setting fits the geometry, not the intensities."""
    data = indexed_p1(seed=4, cell=(40.0, 50.0, 60.0, 90.0, 95.0, 90.0), space_group="P 1", n_reflections=1500)
    result = _run(data, "detector.fix=distance")
    mp = _by_lattice(result, "mP")[0]
    assert mp.setting.max_delta_deg < 0.01 and mp.max_cc < 0.3 and mp.cc_nrefs[0] > 10


def test_recommendation_heuristic():
    class Fake:
        def __init__(self, bravais, delta, rmsd, ccs):
            self.setting = type("S", (), {"bravais": bravais, "max_delta_deg": delta})()
            self.rmsd_mm, self.correlation_coefficients, self.recommended = rmsd, ccs, None

        min_cc = property(lambda self: min(self.correlation_coefficients) if self.correlation_coefficients else None)

    p1 = Fake("aP", 0.0, 0.05, [])
    cases = [Fake("mC", 0.3, 0.074, []), Fake("mC", 0.3, 0.076, []), Fake("mC", 0.3, 0.076, [0.6]),
             Fake("oP", 1.0, 0.099, []), Fake("oP", 1.0, 0.101, [0.6]), Fake("oP", 1.0, 0.101, [0.8]),
             Fake("tP", 1.0, 0.151, [0.99])]
    rbs.recommend([p1] + cases)
    assert p1.recommended
    assert [c.recommended for c in cases] == [True, False, True, True, False, True, False]


def test_cli_writes_settings_summary_and_table(tmp_path, monkeypatch, myd88_like):
    write_experiments([myd88_like.experiment], tmp_path / "indexed.expt")
    write_reflections(myd88_like.reflections, tmp_path / "indexed.refl")
    monkeypatch.chdir(tmp_path)
    assert main(["refine_bravais_settings", "indexed.expt", "indexed.refl", "detector.fix=distance",
                 "best_monoclinic_beta=False"]) == 0
    log = (tmp_path / "refine_bravais_settings.log").read_text()
    assert "Chiral space groups corresponding to each Bravais lattice:\naP: P1\nmC: C2\n" in log
    assert "|   Solution |   Metric fit |   rmsd | min/max cc   |   #spots | lattice   | unit_cell" in log
    assert "* = recommended solution" in log
    summary = json.loads((tmp_path / "bravais_summary.json").read_text())
    assert set(summary) == {"1", "2"}
    assert set(summary["2"]) == {"bravais", "max_angular_difference", "rmsd", "min_cc", "max_cc", "nspots",
                                 "unit_cell", "cb_op", "recommended", "correlation_coefficients", "cc_nrefs"}
    assert summary["2"]["bravais"] == "mC" and summary["2"]["recommended"]
    setting = read_experiments(tmp_path / "bravais_setting_2.expt")[0]
    assert setting.crystal.space_group.hm == "C 1 2 1"
    assert setting.crystal.unit_cell.beta == pytest.approx(107.7, abs=0.05)
    line = next(l for l in log.splitlines() if " mC " in l)
    assert summary["2"]["cb_op"] in line and line.strip().startswith("|   *      2 |")


def test_lysozyme_table_matches_dials(shared_data):
    """DIALS 2.1.1 on cRED lysozyme crystal 14 (beam and detector fixed): 9 solutions, tP metric fit
    1.2844 with rmsd 0.094 mm, solutions 1–7 recommended, oC and tP not."""
    from algorithms.geometry.prediction import reciprocal_lattice_points

    folder = shared_data / "ed_lysozyme_cred" / "reference_dials" / "experiment_14"
    experiment = read_experiments(folder / "indexed.expt")[0]
    table = read_reflections(folder / "strong.refl")
    rlp = reciprocal_lattice_points(table["xyzobs.px.value"], experiment.beam, experiment.detector,
                                    experiment.goniometer, experiment.scan)
    hkl, indexed, _ = assign_indices(rlp, experiment.crystal.A, tolerance=0.3)
    table["miller_index"] = hkl.astype(np.int32)
    table["id"] = np.where(indexed, 0, -1)
    params, _ = parse_parameters(rbs.Params, ["beam.fix=all", "detector.fix=all"])
    solutions = rbs.run([experiment], table, params).summary["solutions"]
    assert sorted(s.setting.setting_symbol for s in solutions) == sorted(["tP", "oC", "mC", "oP", "mC", "mP", "mP", "mP", "aP"])
    dials_deltas = sorted([1.2844, 1.2844, 1.2844, 1.1128, 1.107, 1.1128, 0.9818, 0.7109, 0.0])
    assert np.allclose(sorted(s.setting.max_delta_deg for s in solutions), dials_deltas, atol=1e-3)
    tp = next(s for s in solutions if s.setting.bravais == "tP")
    assert tp.rmsd_mm == pytest.approx(0.094, abs=0.005)
    assert np.allclose(tp.experiment.crystal.unit_cell.parameters, (77.77, 77.77, 40.70, 90, 90, 90), atol=0.15)
    assert tp.setting.cb_op.as_string() == "b,c,a"
    not_recommended = {s.setting.bravais for s in solutions if not s.recommended}
    assert not_recommended == {"tP", "oC"}
    p1 = next(s for s in solutions if s.setting.bravais == "aP")
    assert p1.rmsd_mm == pytest.approx(0.036, abs=0.003)
