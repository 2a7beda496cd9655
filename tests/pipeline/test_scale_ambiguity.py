"""ewald scale brings crystals indexed in the other setting of a P4 lattice back before scaling."""
import numpy as np

from algorithms.merging import map_to_asu
from algorithms.reflection_table import Flags
from integrated_data import make_datasets, true_intensities
from pipeline.params import parse_parameters
from pipeline.steps import scale

TWIN = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])  # k,h,-l


def _flip(dataset):
    """Index one crystal in the other setting: h' = P·h, A' = A·P⁻¹ (what an independent indexing may give)."""
    t = dataset.reflections
    t["miller_index"] = (t["miller_index"].astype(np.int64) @ TWIN.T).astype(t["miller_index"].dtype)
    dataset.experiment.crystal = dataset.experiment.crystal.change_basis(TWIN)


def _run(datasets, *args):
    experiments, table = scale.combine_inputs([[d.experiment] for d in datasets], [d.reflections for d in datasets],
                                              [f"{k}/integrated.refl" for k in range(len(datasets))])
    return scale.run(experiments, table, parse_parameters(scale.Params, list(args))[0])


def _merged_cc_with_truth(result):
    """CC of the merged intensities with the true I_h of the same ASU index in the true basis."""
    t = result.reflections
    ok = t.get_flags(Flags.scaled)
    crystal = result.experiments[0].crystal
    mapping = map_to_asu(t["miller_index"][ok], crystal.space_group)
    scaled = t["intensity.scale.value"][ok] / t["inverse_scale_factor"][ok]
    merged = np.bincount(mapping.group, scaled) / np.bincount(mapping.group)
    d = np.asarray(crystal.unit_cell.calculate_d_array(mapping.unique_asu_index.astype(np.int32)))
    return np.corrcoef(merged, true_intensities(mapping.unique_asu_index, d))[0, 1]


def test_p4_crystals_indexed_by_the_twin_law_are_reindexed_back(caplog):
    original = make_datasets(5, space_group="P 4", cell=(14.0, 14.0, 18.0, 90, 90, 90))
    flipped = make_datasets(5, space_group="P 4", cell=(14.0, 14.0, 18.0, 90, 90, 90))
    for k in (1, 3):
        _flip(flipped[k])
    with caplog.at_level("INFO"):
        result = _run(flipped)
    assert result.summary["reindexed"] == [[1, "k,h,-l"], [3, "k,h,-l"]]
    assert "Reindexing crystal 1 with k,h,-l" in caplog.text and "Reindexing crystal 3 with k,h,-l" in caplog.text
    t = result.reflections
    for k, d in enumerate(original):  # reflections and crystal models back in the original basis
        rows = t["id"] == k
        np.testing.assert_array_equal(t["miller_index"][rows], d.reflections.select(
            d.reflections.get_flags(Flags.integrated, all=False))["miller_index"])
        np.testing.assert_allclose(result.experiments[k].crystal.A, d.experiment.crystal.A, atol=1e-12)
    assert _merged_cc_with_truth(result) > 0.95
    # Without the check the flipped crystals are scaled in the wrong basis.
    unchecked = _run(flipped, "check_consistent_indexing=False")
    assert unchecked.summary["reindexed"] == []
    assert _merged_cc_with_truth(unchecked) < _merged_cc_with_truth(result) - 0.1


def test_c2_without_alternative_indexings_is_unaffected():
    datasets = make_datasets(3, space_group="C 1 2 1", cell=(20.0, 12.0, 15.0, 90, 100, 90))
    checked = _run(datasets, "check_consistent_indexing=True")
    default = _run(datasets)
    assert checked.summary["reindexed"] == [] and default.summary["reindexed"] == []
    np.testing.assert_array_equal(checked.reflections["miller_index"], default.reflections["miller_index"])
    np.testing.assert_allclose(checked.reflections["inverse_scale_factor"], default.reflections["inverse_scale_factor"])
