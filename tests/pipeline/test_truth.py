"""compare_with_truth finds the right alternative indexing and measures CC by resolution."""
import gemmi
import numpy as np
import pytest

from pipeline.truth import compare_with_truth, format_truth_comparison


def _write(path, hkl, values, cell, sg):
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.SpaceGroup(sg)
    mtz.set_cell_for_all(gemmi.UnitCell(*cell))
    mtz.add_dataset("d")
    mtz.add_column("IMEAN", "J")
    mtz.add_column("SIGIMEAN", "Q")
    data = np.column_stack([hkl, values, np.ones(len(values))]).astype(np.float32)
    mtz.set_data(data)
    mtz.write_to_file(str(path))


@pytest.fixture
def tetragonal(tmp_path):
    cell, sg = (79.0, 79.0, 38.0, 90, 90, 90), "P 4"
    asu = gemmi.ReciprocalAsu(gemmi.SpaceGroup(sg))
    hkl = np.array([h for h in np.ndindex(20, 20, 10) if asu.is_in(h) and any(h)], dtype=int)
    rng = np.random.default_rng(0)
    truth = rng.exponential(100.0, len(hkl))
    _write(tmp_path / "true.mtz", hkl, truth, cell, sg)
    return tmp_path, hkl, truth, cell, sg


def test_identical_data_correlate_perfectly(tetragonal):
    folder, hkl, truth, cell, sg = tetragonal
    result = compare_with_truth(folder / "true.mtz", folder / "true.mtz")
    assert result["cc"] == pytest.approx(1.0) and result["indexing"] == "x,y,z"
    assert result["n_common"] == len(hkl)
    assert "CC(merged, true) = 1.0000" in format_truth_comparison(result)


def test_alternative_indexing_is_found(tetragonal):
    folder, hkl, truth, cell, sg = tetragonal
    # the same data indexed the other way round (k,h,-l is the P4 twin law on a tetragonal lattice)
    noisy = truth * np.random.default_rng(1).normal(1, 0.1, len(truth))
    _write(folder / "merged.mtz", hkl[:, [1, 0, 2]] * [1, 1, -1], noisy, cell, sg)
    result = compare_with_truth(folder / "merged.mtz", folder / "true.mtz", n_bins=4)
    assert result["indexing"] != "x,y,z"
    assert 0.95 < result["cc"] < 1.0
    assert len(result["bins"]) == 4 and sum(b["n"] for b in result["bins"]) == result["n_common"]
