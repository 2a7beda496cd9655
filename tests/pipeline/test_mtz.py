"""MTZ helpers: DIALS' batch-offset rule, Mosflm U, and a gemmi round trip."""
import gemmi
import numpy as np
import pytest

from algorithms.geometry.models import b_matrix
from pipeline.formats.mtz import (MtzColumn, MtzNames, batch_offsets, build_mtz, mosflm_u_matrix, next_batch_start,
                                  write_mtz)


@pytest.mark.parametrize("previous, expected", [(72, 101), (99, 101), (100, 201), (172, 201), (199, 201), (1, 101)])
def test_next_batch_start_ends_in_01_and_is_not_consecutive(previous, expected):
    assert next_batch_start(previous) == expected


def test_batch_offsets_follow_the_plus_101_rule_only_when_ranges_overlap():
    assert batch_offsets([(1, 72)] * 3, [0, 0, 0]) == [0, 100, 200]
    assert batch_offsets([(1, 10), (1, 10)], [0, 0]) == [0, 100]
    assert batch_offsets([(1, 99), (1, 50)], [0, 0]) == [0, 100]
    assert batch_offsets([(1, 100), (1, 50)], [0, 0]) == [0, 200]
    # Non-overlapping ranges (also via existing offsets) are kept as they are.
    assert batch_offsets([(1, 72), (101, 172)], [0, 0]) == [0, 0]
    assert batch_offsets([(1, 72), (1, 72)], [0, 100]) == [0, 100]


def _rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.diag(r)) * (np.linalg.det(q) > 0 or -1)


@pytest.mark.parametrize("cell", [(99.06, 31.01, 54.30, 90, 107.7, 90), (12, 15, 18, 90, 90, 90),
                                  (37.07, 61.62, 64.40, 72.89, 89.26, 73.47)])
def test_mosflm_u_is_a_rotation_giving_the_same_ub(cell):
    uc = gemmi.UnitCell(*cell)
    u = _rotation(3)
    assert np.isclose(np.linalg.det(u), 1.0)
    u_mosflm = mosflm_u_matrix(u, uc)
    a, b, c, al, be, ga = uc.parameters
    ra, rb, rc, ral, rbe, rga = uc.reciprocal().parameters
    b_mosflm = np.array([[ra, rb * np.cos(np.radians(rga)), rc * np.cos(np.radians(rbe))],
                         [0, rb * np.sin(np.radians(rga)), -rc * np.sin(np.radians(rbe)) * np.cos(np.radians(al))],
                         [0, 0, 1 / c]])
    np.testing.assert_allclose(u_mosflm @ b_mosflm, u @ b_matrix(uc), atol=1e-12)
    np.testing.assert_allclose(u_mosflm @ u_mosflm.T, np.eye(3), atol=1e-9)
    if al == be == ga == 90:  # both B conventions coincide for orthogonal cells
        np.testing.assert_allclose(u_mosflm, u, atol=1e-12)


def test_build_and_write_round_trip_keeps_columns_types_and_missing_values(tmp_path):
    hkl = np.array([[1, 2, 3], [0, 0, 4], [2, 1, 1]])
    columns = [MtzColumn("IMEAN", "J", [10.0, 20.0, np.nan]), MtzColumn("N(+)", "I", [1, 2, 0])]
    mtz = build_mtz(gemmi.SpaceGroup("P 21 21 21"), gemmi.UnitCell(12, 15, 18, 90, 90, 90),
                    MtzNames("P", "X", "D"), 0.0251, hkl, columns, "title", ["history line"])
    write_mtz(mtz, tmp_path / "a.mtz")
    back = gemmi.read_mtz_file(str(tmp_path / "a.mtz"))
    assert back.column_labels() == ["H", "K", "L", "IMEAN", "N(+)"]
    assert [c.type for c in back.columns] == ["H", "H", "H", "J", "I"]
    data = np.array(back.array)
    np.testing.assert_array_equal(data[:, :3], hkl)
    assert data[0, 3] == 10 and np.isnan(data[2, 3])
    assert back.datasets[1].dataset_name == "D" and back.datasets[1].crystal_name == "X"
    assert back.datasets[1].wavelength == pytest.approx(0.0251)
    assert back.spacegroup.hm == "P 21 21 21" and back.history == ["history line"]
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_batch_headers_equal_those_dials_wrote_for_real_3d_ed_data(shared_data, tmp_path):
    """DIALS 2.1 exported this sweep after reindexing a' = −c, b' = −b, c' = −a (P4 → P 1 2 1 setting);
    with the same basis every header float (scan-varying cell, Mosflm U, angles, axes, beam, detector)
    and integer must agree."""
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.mtz import batch_headers

    folder = shared_data / "ed_lysozyme_cred" / "reference_dials" / "experiment_14"
    dials = gemmi.read_mtz_file(str(folder / "scaled.mtz"))
    experiment = read_experiments(folder / "integrated.expt")[0]
    experiment.crystal = experiment.crystal.change_basis(np.array([[0, 0, -1], [0, -1, 0], [-1, 0, 0]]))
    ours = batch_headers(experiment, 0, 1)
    assert [b.number for b in ours] == [b.number for b in dials.batches]
    for mine, theirs in zip(ours, dials.batches):
        assert list(mine.ints) == list(theirs.ints)
        np.testing.assert_allclose(np.array(mine.floats), np.array(theirs.floats), atol=2e-5)
        assert list(mine.axes) == list(theirs.axes) == ["AXIS"]
    path = tmp_path / "batches.mtz"
    mtz = build_mtz(gemmi.SpaceGroup("P 1 2 1"), dials.cell, MtzNames("DIALS", "XTAL", "FROMDIALS"), 0.0251,
                    np.zeros((1, 3)), [], "t", [])
    for header in ours:
        mtz.batches.append(header)
    write_mtz(mtz, path)
    assert [b.title for b in gemmi.read_mtz_file(str(path)).batches] == [b.title for b in dials.batches]
