"""Indexing and lattice symmetry on real ED spots against DIALS' own results.

Lysozyme cRED sweeps (experiments 14 and 24) were indexed by their owner with DIALS 2.1.1
(fft3d, same algorithm as 3.5); the expected numbers are read from dials.index.log and
dials.refine_bravais_settings.log.  The quartz sweep was indexed with a DIALS 3 development
version; its indexed.refl holds DIALS' Miller indices.
"""
import re

import numpy as np
import pytest

from algorithms.geometry.prediction import reciprocal_lattice_points
from algorithms.indexing import index_reflections
from algorithms.symmetry import bravais_settings
from pipeline.formats.expt import read_experiments
from pipeline.formats.refl import read_reflections


def spots_in_reciprocal_space(experiment, reflections):
    xyz = np.asarray(reflections["xyzobs.px.value"], float)
    e = experiment
    rlp = reciprocal_lattice_points(xyz, e.beam, e.detector, e.goniometer, e.scan)
    phi = np.radians(e.scan.angle_from_array_index(xyz[:, 2]))
    s1 = e.detector.pixel_to_s1(xyz[:, :2], e.beam.s0)
    entering = (s1 @ np.cross(e.beam.s0, e.goniometer.rotation_axis_lab)) < 0
    return rlp, phi, entering


def log_number(text, pattern):
    return float(re.search(pattern, text).group(1))


@pytest.mark.parametrize("crystal", ["experiment_14", "experiment_24"])
def test_lysozyme_indexing_matches_dials(shared_data, crystal):
    folder = shared_data / "ed_lysozyme_cred" / "reference_dials" / crystal
    log = (folder / "dials.index.log").read_text()
    experiment = read_experiments(folder / "imported.expt")[0]
    reflections = read_reflections(folder / "strong.refl")
    rlp, phi, entering = spots_in_reciprocal_space(experiment, reflections)
    result = index_reflections(rlp, None, phi, entering, bboxes=np.asarray(reflections["bbox"]))

    assert result.max_cell == pytest.approx(log_number(log, r"Found max_cell: ([\d.]+)"), abs=0.06)
    assert result.d_min_fft == pytest.approx(log_number(log, r"Setting d_min: ([\d.]+)"), abs=0.006)
    assert result.n_centroids == int(log_number(log, r"Number of centroids used: (\d+)"))
    n_indexed_dials = int(re.findall(r"\|\s+0 \|\s+(\d+) \|\s+\d+ \|", log)[-1])
    assert abs(result.indexed_mask.sum() - n_indexed_dials) <= 0.01 * n_indexed_dials

    dials_crystal = read_experiments(folder / "indexed.expt")[0].crystal
    T = np.linalg.inv(result.crystal.A) @ dials_crystal.A  # h_ewald = T·h_dials
    assert np.abs(T - np.rint(T)).max() < 0.02 and abs(abs(np.linalg.det(np.rint(T))) - 1) < 1e-9
    ours, theirs = np.array(result.crystal.unit_cell.parameters), np.array(dials_crystal.unit_cell.parameters)
    # DIALS refined the detector-fixed geometry; ewald fitted A to the rlps: same cell within 0.5 %
    np.testing.assert_allclose(np.sort(ours[:3]), np.sort(theirs[:3]), rtol=0.005)


@pytest.mark.parametrize("crystal", ["experiment_14", "experiment_24"])
def test_bravais_settings_match_dials_metric_fits(shared_data, crystal):
    folder = shared_data / "ed_lysozyme_cred" / "reference_dials" / crystal
    log = (folder / "dials.refine_bravais_settings.log").read_text()
    rows = re.findall(r"\|\s+\*?\s+\d+ \|\s+([\d.]+)\s+\|.*?\| (\w\w)\s+\|.*?\| ([-+abc*\d,]+)\s+\|", log)
    expected = sorted((lattice, round(float(delta), 4)) for delta, lattice, _ in rows)
    cell = read_experiments(folder / "indexed.expt")[0].crystal.unit_cell
    settings = bravais_settings(cell)
    found = sorted((s.bravais, round(s.max_delta_deg, 4)) for s in settings)
    assert found == expected
    # settings whose cb_op DIALS prints the same way (orthorhombic and tetragonal)
    dials_ops = {(lattice, round(float(delta), 4)): op for delta, lattice, op in rows if lattice[0] in "ot"}
    for s in settings:
        if s.bravais[0] in "ot":
            assert s.cb_op.as_string() == dials_ops[(s.bravais, round(s.max_delta_deg, 4))]


def test_quartz_indexing_matches_dials_indices(shared_data):
    folder = shared_data / "quartz_processed"
    experiment = read_experiments(folder / "imported.expt")[0]
    reflections = read_reflections(folder / "indexed.refl")
    rlp, phi, entering = spots_in_reciprocal_space(experiment, reflections)
    dials_indexed = np.asarray(reflections["id"]) >= 0
    dials_hkl = np.asarray(reflections["miller_index"])
    dials_crystal = read_experiments(folder / "indexed.expt")[0].crystal
    for space_group in (None, "P 31 2 1"):
        result = index_reflections(rlp, None, phi, entering, known_space_group=space_group)
        T = np.linalg.inv(result.crystal.A) @ dials_crystal.A
        assert np.abs(T - np.rint(T)).max() < 0.02
        both = dials_indexed & result.indexed_mask
        assert both.sum() >= 0.99 * dials_indexed.sum()
        np.testing.assert_array_equal(result.miller_index[both], dials_hkl[both] @ np.rint(T).astype(int).T)
    assert result.crystal.space_group.hm == "P 31 2 1"
    np.testing.assert_allclose(result.crystal.unit_cell.parameters, dials_crystal.unit_cell.parameters,
                               rtol=0.003, atol=0.01)
