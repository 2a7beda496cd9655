"""ewald scale on simulated integrated data with known intensities and scales, and on real DIALS data."""
import json
import os

import gemmi
import numpy as np
import pytest

from algorithms.errors import DataError
from algorithms.reflection_table import Flags
from integrated_data import make_datasets
from pipeline.formats.expt import read_experiments, write_experiments
from pipeline.formats.refl import read_reflections, write_reflections
from pipeline.params import parse_parameters
from pipeline.steps import scale


def _combined(datasets):
    return scale.combine_inputs([[d.experiment] for d in datasets], [d.reflections for d in datasets],
                                [f"{k}/integrated.refl" for k in range(len(datasets))])


def _params(*args):
    return parse_parameters(scale.Params, list(args))[0]


def _corrupt_image(table, image, seed=3):
    """Scramble the intensities of every reflection observed on ``image`` (1-based)."""
    rows = np.floor(table["xyzobs.px.value"][:, 2]).astype(int) + 1 == image
    factor = np.random.default_rng(seed).uniform(0.0, 3.0, len(table))
    for column in ("intensity.sum.value", "intensity.prf.value"):
        table[column] = np.where(rows, table[column] * factor, table[column])
    return rows.sum()


@pytest.fixture(scope="module")
def datasets():
    return make_datasets(4, shared_identifier=True)


@pytest.fixture(scope="module")
def scaled(datasets):
    experiments, table = _combined(datasets)
    return scale.run(experiments, table, _params())


def test_reused_identifiers_become_unique_and_ids_consecutive(datasets):
    experiments, table = _combined(datasets)
    identifiers = [e.identifier for e in experiments]
    assert len(set(identifiers)) == 4 and "0" not in identifiers
    assert table.experiment_identifiers == dict(enumerate(identifiers))
    sizes = [d.reflections.get_flags(Flags.integrated, all=False).sum() for d in datasets]
    assert np.array_equal(np.bincount(table["id"]), sizes)


def test_inconsistent_lattice_and_missing_intensities_are_errors_naming_the_file(datasets):
    other = make_datasets(1, space_group="P 1 21 1", cell=(12, 15, 18, 90, 100, 90))[0]
    with pytest.raises(DataError, match=r"^3/integrated.refl: space group P 1 21 1"):
        _combined([*datasets[:3], other])
    empty = make_datasets(1)[0]
    empty.reflections.unset_flags(np.ones(len(empty.reflections), bool), Flags.integrated)
    with pytest.raises(DataError, match=r"^1/integrated.refl: no integrated reflections"):
        _combined([datasets[0], empty])


def test_input_preparation_batches_phi_and_exclusions(datasets):
    experiments, table = _combined(datasets)
    prepared = scale.prepare_scaling_input(experiments, table, _params("d_min=1.6"))
    t = prepared.reflections
    assert [e.scan.batch_offset for e in prepared.experiments] == [0, 100, 200, 300]
    image = np.floor(t["xyzobs.px.value"][:, 2]).astype(int) + 1
    np.testing.assert_array_equal(t["batch"], image + 100 * t["id"])
    np.testing.assert_allclose(t["phi"], 10.0 * t["id"] + t["xyzobs.px.value"][:, 2], atol=1e-9)  # 1°/image from 10k°
    excluded = t.get_flags(Flags.excluded_for_scaling)
    np.testing.assert_array_equal(excluded, (t["partiality"] < 0.4) | (t["d"] < 1.6))
    # Summation intensities are LP-corrected and divided by the partiality, profile ones only LP-corrected.
    c = prepared.data.intensities
    np.testing.assert_allclose(c.intensity_sum, t["intensity.sum.value"] * t["lp"] / t["partiality"])
    has_prf = t.get_flags(Flags.integrated_prf)
    np.testing.assert_allclose(c.intensity_prf[has_prf], (t["intensity.prf.value"] * t["lp"])[has_prf])
    assert np.all(np.isnan(c.intensity_prf[~has_prf]))
    np.testing.assert_allclose(np.linalg.norm(prepared.data.s1c, axis=1), 1.0)


def test_crystal_frame_directions_put_the_axis_along_z_and_undo_the_rotation():
    from algorithms.scaling.absorption import crystal_frame_directions

    axis = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    s0 = np.array([0.0, 0.0, -1.0])
    s1 = np.array([[0.3, -0.2, 0.9], [0.3, -0.2, 0.9]])
    unit_s1 = s1 / np.linalg.norm(s1, axis=1, keepdims=True)
    s0c, s1c = crystal_frame_directions(s1, np.array([0.0, 0.7]), axis, -s0)
    np.testing.assert_allclose(s1c[:, 2], unit_s1 @ axis, atol=1e-12)  # the axis component becomes z
    np.testing.assert_allclose(np.sum(s1c * s0c, axis=1), unit_s1 @ -s0, atol=1e-12)  # angles are kept
    # The same lab vector seen 0.7 rad later lies 0.7 rad back around the axis (z) in the crystal frame.
    turn = np.arctan2(s1c[1, 1], s1c[1, 0]) - np.arctan2(s1c[0, 1], s1c[0, 0])
    assert np.angle(np.exp(1j * turn)) == pytest.approx(-0.7, abs=1e-12)


def test_scaled_reflections_have_dials_columns_flags_and_recover_the_truth(datasets, scaled):
    t = scaled.reflections
    for column in ("inverse_scale_factor", "inverse_scale_factor_variance", "intensity.scale.value",
                   "intensity.scale.variance", "batch", "phi"):
        assert column in t
    ok = t.get_flags(Flags.scaled)
    assert ok.sum() > 0.9 * len(t)
    assert not np.any(ok & t.get_flags(Flags.bad_for_scaling, all=False))
    assert np.all(t.get_flags(Flags.excluded_for_scaling)[t["partiality"] < 0.4])
    truth_i = np.concatenate([d.true_intensity[d.reflections.get_flags(Flags.integrated, all=False)] for d in datasets])
    truth_g = np.concatenate([d.true_inverse_scale[d.reflections.get_flags(Flags.integrated, all=False)] for d in datasets])
    i_scaled = t["intensity.scale.value"][ok] / t["inverse_scale_factor"][ok]
    assert np.corrcoef(i_scaled, truth_i[ok])[0, 1] > 0.95
    # The crystals' scales relative to each other are the true ones (an overall scale/B is free).
    ratio = t["inverse_scale_factor"][ok] / truth_g[ok]
    per_crystal = np.array([np.median(ratio[t["id"][ok] == k]) for k in range(4)])
    np.testing.assert_allclose(per_crystal / per_crystal.mean(), 1.0, atol=0.03)
    assert np.all(t["inverse_scale_factor_variance"][ok] > 0)


def test_scaling_model_written_in_dials_structure(scaled, shared_data, tmp_path):
    dials = json.loads((shared_data / "quartz_processed" / "scaled.expt").read_text())["scaling_model"][0]
    write_experiments(scaled.experiments, tmp_path / "scaled.expt")
    ours = json.loads((tmp_path / "scaled.expt").read_text())["scaling_model"][0]
    assert ours["__id__"] == "physical"
    assert set(ours["scale"]) == set(dials["scale"]) and set(ours["decay"]) == set(dials["decay"])
    config, dials_config = ours["configuration_parameters"], dials["configuration_parameters"]
    assert set(config) == set(dials_config) - {"lmax", "abs_surface_weight"}  # 30° wedges: no absorption
    assert config["corrections"] == ["scale", "decay"]
    assert config["valid_image_range"] == [1, 30] and config["valid_osc_range"] == [0.0, 30.0]
    # 30° wedge → scale interval 8° → 4 bins of 7.5° and 6 parameters; decay 10° → 3 bins, 5 parameters.
    assert ours["scale"]["n_parameters"] == 6 and config["scale_rot_interval"] == pytest.approx(7.5)
    assert config["s_norm_fac"] == pytest.approx(0.999 / 7.5)
    assert ours["decay"]["n_parameters"] == 5 and config["decay_rot_interval"] == pytest.approx(10.0)
    assert len(config["error_model_parameters"]) == 2 and config["error_model_type"] == "BasicErrorModel"
    back = read_experiments(tmp_path / "scaled.expt")
    assert back[0].scaling_model == scaled.experiments[0].scaling_model


@pytest.fixture(scope="module")
def corrupted():
    datasets = make_datasets(4)
    assert _corrupt_image(datasets[1].reflections, 15) > 10
    return datasets


def test_image_group_filtering_removes_a_corrupted_image_inside_a_sweep(corrupted):
    experiments, table = _combined(corrupted)
    result = scale.run(experiments, table, _params("filtering.method=deltacchalf", "deltacchalf.mode=image_group",
                                                   "deltacchalf.group_size=1", "filtering.nonisomorphism.remove=False"))
    ranges = result.experiments[1].scan.valid_image_ranges[result.experiments[1].identifier]
    assert not any(a <= 15 <= b for a, b in ranges) and ranges[0][0] == 1 and ranges[-1][1] == 30
    assert "Removing image range (15, 15) from experiment 1" in result.summary["filtering_log"]
    t = result.reflections
    image = np.floor(t["xyzobs.px.value"][:, 2]).astype(int) + 1
    on_15 = (t["id"] == 1) & (image == 15)
    assert np.all(t.get_flags(Flags.user_excluded_in_scaling)[on_15])
    assert not np.any(t.get_flags(Flags.scaled)[on_15])
    report = result.summary["report"]["filtering"]
    assert ["crystal 1", 15, 15] in report["removed_image_ranges"]


def test_dials_end_trimming_keeps_interior_images(corrupted):
    experiments, table = _combined(corrupted)
    result = scale.run(experiments, table, _params("filtering.method=deltacchalf", "deltacchalf.mode=image_group",
                                                   "deltacchalf.group_size=1", "dials_end_trimming=True",
                                                   "filtering.nonisomorphism.remove=False"))
    log = result.summary["filtering_log"]
    assert "Image range (15, 15) of experiment 1 is below the cutoff, but not at the edge of a sweep" in log
    assert "Removing image range (15, 15)" not in log


def test_cli_writes_scaled_files_report_json_and_log(tmp_path):
    datasets = make_datasets(3)
    _corrupt_image(datasets[2].reflections, 30)
    files = []
    for k, d in enumerate(datasets):
        (tmp_path / str(k)).mkdir()
        write_experiments([d.experiment], tmp_path / str(k) / "integrated.expt")
        write_reflections(d.reflections, tmp_path / str(k) / "integrated.refl")
        files += [f"{k}/integrated.expt", f"{k}/integrated.refl"]
    from pipeline.cli import main

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        status = main(["scale", *files, "filtering.method=deltacchalf", "deltacchalf.mode=image_group",
                       "deltacchalf.group_size=1", "d_min=1.5"])
        log = (tmp_path / "scale.log").read_text()
        assert main(["scale", "0/integrated.expt", "0/integrated.refl", "9/integrated.expt", "9/integrated.refl",
                     "output.experiments=other.expt"]) == 2
    finally:
        os.chdir(cwd)
    assert status == 0
    for name in ("scaled.expt", "scaled.refl", "scaled.html", "scale_and_filter_results.json"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "other.expt").exists()
    assert "9/integrated.expt: file not found" in (tmp_path / "scale.log").read_text()
    summary_at = log.index("Summary of merging statistics")
    assert log.index("Merging statistics by resolution bin") < summary_at
    assert "Total unique" in log[summary_at:] and "ΔCC½" in log
    assert "Removing image range (30, 30) from experiment 2" in log
    table = read_reflections(tmp_path / "scaled.refl")
    d = table["d"][table.get_flags(Flags.scaled)]
    assert d.min() >= 1.5
    html = (tmp_path / "scaled.html").read_text()
    assert html.count("<svg") >= 7 and "<script" not in html
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    results = json.loads((tmp_path / "scale_and_filter_results.json").read_text())
    assert results["cycles"] and ["crystal 2", 30, 30] in results["removed_image_ranges"]


def test_real_l_cysteine_wedges_scale_and_merge(shared_data, tmp_path):
    from pipeline.steps import merge

    folder = shared_data / "l_cysteine_narrow_wedge"
    names = ("11", "23")
    experiments, table = scale.combine_inputs([read_experiments(folder / f"{n}_integrated.expt") for n in names],
                                              [read_reflections(folder / f"{n}_integrated.refl") for n in names],
                                              [str(folder / f"{n}_integrated.refl") for n in names])
    result = scale.run(experiments, table, _params())
    assert [e.scan.batch_offset for e in result.experiments] == [0, 100]  # both sweeps are images 1-10
    stats = result.summary["merging_statistics"]
    assert stats.overall.n_obs == result.reflections.get_flags(Flags.scaled).sum() > 30
    assert np.all(np.isfinite(result.reflections["inverse_scale_factor"]))
    merged = merge.run(result.experiments, result.reflections, merge.Params()).summary
    assert merged["n_unique"] == stats.overall.n_unique
    assert gemmi.SpaceGroup(merged["space_group"]).point_group_hm() == "222"


def test_intensity_choice_profile_leaves_out_reflections_without_profile_intensities(datasets):
    experiments, table = _combined(datasets)
    result = scale.run(experiments, table, _params("intensity_choice=profile"))
    t = result.reflections
    no_profile = ~t.get_flags(Flags.integrated_prf)
    assert no_profile.sum() > 20
    assert np.all(t.get_flags(Flags.excluded_for_scaling)[no_profile])
    assert result.experiments[0].scaling_model["configuration_parameters"]["Imid"] == 0.0


def test_real_quartz_scaling_matches_dials_model_layout_and_intensities(shared_data):
    folder = shared_data / "quartz_processed"
    experiments, table = scale.combine_inputs([read_experiments(folder / "integrated.expt")],
                                              [read_reflections(folder / "integrated.refl")], ["integrated.refl"])
    result = scale.run(experiments, table, _params())
    ours = result.experiments[0].scaling_model
    dials = json.loads((folder / "scaled.expt").read_text())["scaling_model"][0]
    for component in ("scale", "decay", "absorption"):
        assert ours[component]["n_parameters"] == dials[component]["n_parameters"]
    skip = {"error_model_parameters", "Imid"}
    for key, value in dials["configuration_parameters"].items():
        if key not in skip:
            assert ours["configuration_parameters"][key] == pytest.approx(value), key
    # The same observations, scaled by DIALS and by ewald, agree (overall scale and B are free).
    t, reference = result.reflections, read_reflections(folder / "scaled.refl")
    key = lambda tb: [tuple(h) + (round(z, 2),) for h, z in zip(tb["miller_index"].tolist(), tb["xyzobs.px.value"][:, 2].tolist())]
    row = dict(zip(key(t), range(len(t))))
    pairs = np.array([(row[k], i) for i, k in enumerate(key(reference)) if k in row])
    both = t.get_flags(Flags.scaled)[pairs[:, 0]] & reference.get_flags(Flags.scaled)[pairs[:, 1]]
    assert both.sum() > 1200
    ours_i = (t["intensity.scale.value"] / t["inverse_scale_factor"])[pairs[both, 0]]
    dials_i = (reference["intensity.scale.value"] / reference["inverse_scale_factor"])[pairs[both, 1]]
    assert np.corrcoef(ours_i, dials_i)[0, 1] > 0.98


def test_r_merge_by_image_by_hand():
    group = np.array([0, 0, 1, 1, 2])
    image = np.array([1, 2, 1, 2, 2])
    intensity = np.array([10.0, 20.0, 5.0, 5.0, 7.0])
    variance = np.array([1.0, 1.0, 1.0, 4.0, 1.0])
    images, r_merge = scale.r_merge_by_image(group, image, intensity, variance)
    # means: group 0 → 15, group 1 → 5 (weighted), group 2 is single (left out)
    np.testing.assert_array_equal(images, [1, 2])
    np.testing.assert_allclose(r_merge, [(5 + 0) / 15, (5 + 0) / 25])
