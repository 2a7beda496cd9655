"""``ewald reindex``: operators in every DIALS syntax, exact indices, dropped non-integral rows, crystals."""
import gemmi
import numpy as np
import pytest

from algorithms.symmetry import ChangeOfBasis
from indexed_p1_data import indexed_p1
from pipeline.cli import main
from pipeline.formats.expt import read_experiments, write_experiments
from pipeline.formats.refl import read_reflections, write_reflections
from pipeline.params import parse_parameters
from pipeline.steps import reindex


def _run(experiments, table, *args):
    params, _ = parse_parameters(reindex.Params, list(args))
    return reindex.run(experiments, table, params)


@pytest.fixture(scope="module")
def data():
    return indexed_p1(seed=1, n_reflections=400)


def test_p1_to_c2_gives_the_true_indices_and_cell(data):
    to_c2 = ChangeOfBasis(np.linalg.inv(data.to_p1))
    result = _run([data.experiment], data.reflections, f"change_of_basis_op={to_c2.as_string()}", "space_group=C2")
    truth_hkl = np.rint(data.reflections["miller_index"] @ np.linalg.inv(data.to_p1).T).astype(int)
    np.testing.assert_array_equal(result.reflections["miller_index"], truth_hkl)
    assert result.summary["n_dropped"] == 0
    crystal = result.experiments[0].crystal
    assert crystal.space_group.hm == "C 1 2 1"
    assert np.allclose(crystal.unit_cell.parameters, (99.06, 31.01, 54.30, 90, 107.7, 90), atol=1e-6)


@pytest.mark.parametrize("text", ["a-2*b,a,c", "h-2*k,h,l", "-1/2*y,x+1/2*y,z"])
def test_operator_syntaxes_agree(data, text):
    result = _run([], data.reflections, f"change_of_basis_op={text}")
    h = np.asarray(data.reflections["miller_index"])
    expected = np.column_stack([h[:, 0] - 2 * h[:, 1], h[:, 0], h[:, 2]])
    np.testing.assert_array_equal(result.reflections["miller_index"], expected)
    assert result.experiments == []


def test_non_integral_indices_are_dropped_with_a_count(data, caplog):
    c2 = _run([data.experiment], data.reflections, f"change_of_basis_op={ChangeOfBasis(np.linalg.inv(data.to_p1)).as_string()}",
              "space_group=C2")
    # C → a primitive cell of half the volume keeps every index; C → "a/2" style halves drop the odd ones
    back = _run([], c2.reflections, "change_of_basis_op=1/2*a,b,c")
    odd = np.asarray(c2.reflections["miller_index"])[:, 0] % 2 != 0
    assert back.summary["n_dropped"] == int(odd.sum()) > 0
    assert len(back.reflections) == len(c2.reflections) - int(odd.sum())
    assert "non-integral" in caplog.text


def test_space_group_follows_the_basis_and_must_fit(data):
    c2 = _run([data.experiment], data.reflections, f"change_of_basis_op={ChangeOfBasis(np.linalg.inv(data.to_p1)).as_string()}",
              "space_group=C2")
    i2 = _run(c2.experiments, c2.reflections, "change_of_basis_op=c,b,-a-c")
    assert i2.experiments[0].crystal.space_group.hm == "I 1 2 1"
    assert reindex.space_group_in_new_basis(gemmi.SpaceGroup("P 43 21 2"), ChangeOfBasis.from_string("b,a,-c")).hm == "P 43 21 2"
    with pytest.raises(Exception, match="does not fit"):
        _run(c2.experiments, c2.reflections, "change_of_basis_op=a,b,c", "space_group=P422")


def test_cli_writes_reindexed_files(tmp_path, monkeypatch, data):
    write_experiments([data.experiment], tmp_path / "indexed.expt")
    write_reflections(data.reflections, tmp_path / "indexed.refl")
    monkeypatch.chdir(tmp_path)
    assert main(["reindex", "indexed.refl", "change_of_basis_op=a-2*b,a,c"]) == 0
    assert (tmp_path / "reindexed.refl").exists() and not (tmp_path / "reindexed.expt").exists()
    out = read_reflections(tmp_path / "reindexed.refl")
    h = np.asarray(data.reflections["miller_index"])
    np.testing.assert_array_equal(out["miller_index"][:, 1], h[:, 0])
    assert main(["reindex", "indexed.refl", "indexed.expt", "change_of_basis_op=a-2*b,a,c"]) == 0
    crystal = read_experiments(tmp_path / "reindexed.expt")[0].crystal
    expected = data.experiment.crystal.change_basis(np.array([[1, -2, 0], [1, 0, 0], [0, 0, 1]]))
    assert np.allclose(crystal.A, expected.A)
    assert main(["reindex", "indexed.refl", "change_of_basis_op=a,b,q"]) == 2
