"""export → scaled.mtz and merge → merged.mtz on simulated, ideally scaled data; statistics checked by an
independent gemmi + numpy path over scaled.mtz."""
import os

import gemmi
import numpy as np
import pytest

from algorithms.reflection_table import Flags
from pipeline.formats.expt import write_experiments
from pipeline.formats.refl import write_reflections
from pipeline.steps import export, merge
from integrated_data import ideally_scaled, make_datasets

UNMERGED_LABELS = ["H", "K", "L", "M_ISYM", "BATCH", "I", "SIGI", "SCALEUSED", "SIGSCALEUSED", "BG", "SIGBG",
                   "FRACTIONCALC", "XDET", "YDET", "ROT", "LP", "QE"]
UNMERGED_TYPES = ["H", "H", "H", "Y", "B", "J", "Q", "R", "R", "R", "R", "R", "R", "R", "R", "R", "R"]
MERGED_LABELS = ["H", "K", "L", "IMEAN", "SIGIMEAN", "I(+)", "SIGI(+)", "I(-)", "SIGI(-)", "N(+)", "N(-)",
                 "F", "SIGF", "F(+)", "SIGF(+)", "F(-)", "SIGF(-)"]
MERGED_TYPES = ["H", "H", "H", "J", "Q", "K", "M", "K", "M", "I", "I", "F", "Q", "G", "L", "G", "L"]


@pytest.fixture(scope="module")
def scaled():
    experiments, table = ideally_scaled(make_datasets(3))
    return experiments, table


@pytest.fixture(scope="module")
def scaled_mtz(scaled, tmp_path_factory):
    experiments, table = scaled
    path = tmp_path_factory.mktemp("export") / "scaled.mtz"
    result = export.run(experiments, table, export.Params())
    result.summary["mtz"].write_to_file(str(path))
    return gemmi.read_mtz_file(str(path)), result.summary


def _expected_rows(table):
    keep = ~table.get_flags(Flags.bad_for_scaling, all=False) & (table["partiality"] >= 0.4)
    return table.select(keep)


def test_unmerged_columns_in_dials_order_with_types(scaled_mtz):
    mtz, _ = scaled_mtz
    assert mtz.column_labels() == UNMERGED_LABELS
    assert [c.type for c in mtz.columns] == UNMERGED_TYPES
    assert mtz.spacegroup.hm == "P 21 21 21"


def test_batches_per_image_with_offsets_angles_cell_and_u(scaled, scaled_mtz):
    experiments, _ = scaled
    mtz, summary = scaled_mtz
    assert summary["batch_offsets"] == [0, 100, 200]  # three sweeps numbered 1-30
    assert [b.number for b in mtz.batches] == [k * 100 + i for k in range(3) for i in range(1, 31)]
    for batch in mtz.batches:
        k, image = divmod(batch.number, 100)
        scan, crystal = experiments[k].scan, experiments[k].crystal
        floats = np.array(batch.floats)
        assert list(batch.ints)[:3] == [185, 29, 156] and len(batch.floats) == 156
        assert floats[36] == pytest.approx(scan.angle_from_image_index(image), abs=1e-4)  # phistt
        assert floats[37] == pytest.approx(scan.angle_from_image_index(image + 1), abs=1e-4)  # phiend
        assert floats[47] == pytest.approx(1.0)  # phirange
        np.testing.assert_allclose(floats[0:6], crystal.unit_cell.parameters, rtol=1e-5)
        u = floats[6:15].reshape(3, 3).T  # stored column-wise
        np.testing.assert_allclose(u, crystal.U, atol=1e-5)  # orthorhombic: Mosflm U = DIALS U
        assert batch.dataset_id == 1
        assert floats[86] == pytest.approx(0.9)
    data = np.array(mtz.array)
    assert set(np.unique(data[:, 4]).astype(int)) <= {b.number for b in mtz.batches}


def test_isym_maps_asu_indices_back_to_the_original_ones(scaled, scaled_mtz):
    experiments, table = scaled
    mtz, _ = scaled_mtz
    data = np.array(mtz.array)
    asu, isym, batch = data[:, :3].astype(int), data[:, 3].astype(int), data[:, 4].astype(int)
    ops = mtz.spacegroup.operations()
    sym_ops = list(ops.sym_ops)
    original = []
    for h, code in zip(asu.tolist(), isym.tolist()):
        op = sym_ops[(code - 1) // 2]
        h_orig = op.inverse().apply_to_hkl(h) if code % 2 == 1 else op.inverse().apply_to_hkl([-v for v in h])
        original.append(h_orig)
        assert gemmi.ReciprocalAsu(mtz.spacegroup).is_in(h)
    original = np.array(original)
    expected = _expected_rows(table)
    offsets = np.array([0, 100, 200])[expected["id"]]
    expected_batch = np.floor(expected["xyzobs.px.value"][:, 2]).astype(int) + 1 + offsets
    got = sorted(map(tuple, np.column_stack([original, batch])))
    want = sorted(map(tuple, np.column_stack([expected["miller_index"], expected_batch])))
    assert got == want


def test_scaled_intensity_is_scale_value_over_g(scaled, scaled_mtz):
    _, table = scaled
    mtz, _ = scaled_mtz
    data = np.array(mtz.array)
    expected = _expected_rows(table)
    i_expected = expected["intensity.scale.value"] / expected["inverse_scale_factor"]
    order_got = np.lexsort((data[:, 13], data[:, 12]))  # by XDET, then YDET
    xy = expected["xyzobs.px.value"]
    order_want = np.lexsort((xy[:, 1].astype(np.float32), xy[:, 0].astype(np.float32)))
    np.testing.assert_allclose(data[order_got, 5], i_expected[order_want], rtol=1e-5)
    np.testing.assert_allclose(data[order_got, 7], expected["inverse_scale_factor"][order_want], rtol=1e-6)
    sigma = np.sqrt(expected["intensity.scale.variance"]) / expected["inverse_scale_factor"]
    np.testing.assert_allclose(data[order_got, 6], sigma[order_want], rtol=1e-5)


def _independent_statistics(mtz: gemmi.Mtz):
    """Rmerge, multiplicity, completeness and σ-τ / half-set CC½ from scaled.mtz with numpy only."""
    data = np.array(mtz.array)
    hkl, i, sig = data[:, :3].astype(int), data[:, 5].astype(float), data[:, 6].astype(float)
    keys, group = np.unique(hkl, axis=0, return_inverse=True)
    group = group.ravel()
    n_obs = np.bincount(group)
    w = 1 / sig**2
    mean = np.bincount(group, w * i) / np.bincount(group, w)
    multi = n_obs[group] >= 2
    r_merge = np.abs(i - mean[group])[multi].sum() / i[multi].sum()
    cell = mtz.cell
    d = np.array([cell.calculate_d(list(h)) for h in keys.tolist()])
    possible = gemmi.make_miller_array(cell, mtz.spacegroup, d.min() * (1 - 1e-6), d.max() * (1 + 1e-6))
    s1, s2 = np.bincount(group, i), np.bincount(group, i * i)
    ok = n_obs >= 2
    means = s1[ok] / n_obs[ok]
    var_mean = (s2[ok] - s1[ok] ** 2 / n_obs[ok]) / (n_obs[ok] - 1) / n_obs[ok]
    var_y, var_e = np.var(means, ddof=1), var_mean.mean()
    cc_tau = (var_y - var_e) / (var_y + var_e)
    rng = np.random.default_rng(5)
    half = np.zeros(len(i), bool)
    for g in np.nonzero(ok)[0]:
        members = np.nonzero(group == g)[0]
        half[rng.permutation(members)[: len(members) // 2]] = True
    with np.errstate(invalid="ignore", divide="ignore"):  # groups with n = 1 have no halves
        a = np.bincount(group[half], (w * i)[half], len(keys)) / np.bincount(group[half], w[half], len(keys))
        b = np.bincount(group[~half], (w * i)[~half], len(keys)) / np.bincount(group[~half], w[~half], len(keys))
    cc_split = np.corrcoef(a[ok], b[ok])[0, 1]
    return dict(r_merge=r_merge, multiplicity=n_obs.mean(), completeness=100 * len(keys) / len(possible),
                n_obs=len(i), n_unique=len(keys), cc_tau=cc_tau, cc_split=cc_split, d_min=d.min(), d_max=d.max())


def test_merging_statistics_agree_with_an_independent_computation_from_scaled_mtz(scaled, scaled_mtz):
    experiments, table = scaled
    mtz, _ = scaled_mtz
    expected = _independent_statistics(mtz)
    stats = merge.run(experiments, table, merge.Params()).summary["merging_statistics"]
    overall = stats.overall
    assert overall.n_obs == expected["n_obs"] and overall.n_unique == expected["n_unique"]
    assert overall.r_merge == pytest.approx(expected["r_merge"], rel=1e-4)
    assert overall.multiplicity == pytest.approx(expected["multiplicity"], rel=1e-6)
    assert overall.completeness == pytest.approx(expected["completeness"], rel=1e-6)
    assert overall.cc_half_sigma_tau == pytest.approx(expected["cc_tau"], abs=1e-4)
    assert overall.cc_half == pytest.approx(expected["cc_split"], abs=0.01)  # different random halves
    assert overall.d_min == pytest.approx(expected["d_min"], rel=1e-4)
    assert overall.d_max == pytest.approx(expected["d_max"], rel=1e-4)
    assert 0.95 < overall.cc_half <= 1.0


@pytest.fixture(scope="module")
def merged(scaled):
    experiments, table = scaled
    result = merge.run(experiments, table, merge.Params())
    return result.summary["mtz"]


def test_merged_columns_types_and_missing_values(merged):
    assert merged.column_labels() == MERGED_LABELS
    assert [c.type for c in merged.columns] == MERGED_TYPES
    data = np.array(merged.array)
    n_minus = data[:, 10]
    assert np.all(np.isnan(data[n_minus == 0, 7]))  # I(-) missing where no I(-) observation
    assert np.all(np.isfinite(data[:, 3]))


def test_imean_is_the_weighted_mean_of_the_equivalents(scaled, merged):
    _, table = scaled
    rows = _expected_rows(table)
    data = np.array(merged.array)
    sg = merged.spacegroup
    asu = gemmi.ReciprocalAsu(sg)
    ops = sg.operations()
    asu_of_row = np.array([asu.to_asu(h, ops)[0] for h in rows["miller_index"].tolist()])
    i = rows["intensity.scale.value"] / rows["inverse_scale_factor"]
    var = rows["intensity.scale.variance"] / rows["inverse_scale_factor"] ** 2
    counts = {}
    for h in map(tuple, asu_of_row):
        counts[h] = counts.get(h, 0) + 1
    checked = 0
    for h in [h for h, n in counts.items() if n >= 3][:8]:
        members = np.all(asu_of_row == h, axis=1)
        w = 1 / var[members]
        row = data[np.all(data[:, :3] == h, axis=1)][0]
        assert row[3] == pytest.approx(np.sum(w * i[members]) / np.sum(w), rel=1e-5)
        assert row[4] == pytest.approx(1 / np.sqrt(np.sum(w)), rel=1e-5)
        assert row[9] + row[10] == members.sum()
        checked += 1
    assert checked == 8


def test_amplitudes_are_root_intensity_for_strong_reflections(merged):
    data = np.array(merged.array)
    strong = data[:, 5] / data[:, 6] > 10  # I(+)/σ
    assert strong.sum() > 100
    np.testing.assert_allclose(data[strong, 13], np.sqrt(data[strong, 5]), rtol=0.01)  # F(+)
    np.testing.assert_allclose(data[strong, 14], data[strong, 6] / (2 * np.sqrt(data[strong, 5])), rtol=0.05)
    strong = data[:, 3] / data[:, 4] > 10
    # F merges F(+) and F(-), so it follows √IMEAN closely but not exactly.
    np.testing.assert_allclose(data[strong, 11], np.sqrt(data[strong, 3]), rtol=0.03)


def test_cli_export_and_merge_write_files_and_logs(scaled, tmp_path):
    experiments, table = scaled
    write_experiments(experiments, tmp_path / "scaled.expt")
    write_reflections(table, tmp_path / "scaled.refl")
    from pipeline.cli import main

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert main(["export", "scaled.expt", "scaled.refl"]) == 0
        assert main(["merge", "scaled.expt", "scaled.refl"]) == 0
        log = (tmp_path / "merge.log").read_text()
        assert main(["merge", "missing.expt", "scaled.refl", "output.mtz=other.mtz"]) == 2
    finally:
        os.chdir(cwd)
    assert gemmi.read_mtz_file(str(tmp_path / "scaled.mtz")).column_labels() == UNMERGED_LABELS
    assert gemmi.read_mtz_file(str(tmp_path / "merged.mtz")).column_labels() == MERGED_LABELS
    assert "Merging statistics by resolution bin" in log and "Summary of merging statistics" in log
    assert "missing.expt: file not found" in (tmp_path / "merge.log").read_text()
    assert not (tmp_path / "other.mtz").exists()
    html = (tmp_path / "merge.html").read_text()
    assert "<svg" in html and "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_merge_refuses_unscaled_data(tmp_path):
    data = make_datasets(1)[0]
    with pytest.raises(Exception, match="not scaled"):
        merge.run([data.experiment], data.reflections, merge.Params())


def test_export_of_integrated_data_writes_summation_and_profile_columns():
    data = make_datasets(1)[0]
    result = export.run([data.experiment], data.reflections, export.Params())
    mtz = result.summary["mtz"]
    labels = mtz.column_labels()
    assert labels[:9] == ["H", "K", "L", "M_ISYM", "BATCH", "I", "SIGI", "IPR", "SIGIPR"]
    t = data.reflections
    both = t.get_flags(Flags.integrated_sum | Flags.integrated_prf) & (t["partiality"] >= 0.4)
    assert mtz.nreflections == both.sum()
    arr = np.array(mtz.array)
    partiality, lp = arr[:, labels.index("FRACTIONCALC")], arr[:, labels.index("LP")]
    # LP-corrected, summation also divided by the partiality: undoing that gives the raw counts back.
    np.testing.assert_allclose(np.sort(arr[:, 5] * partiality / lp), np.sort(t["intensity.sum.value"][both]), rtol=1e-4)
    np.testing.assert_allclose(np.sort(arr[:, 7] / lp), np.sort(t["intensity.prf.value"][both]), rtol=1e-4)


def test_export_of_real_dials_integrated_data(shared_data):
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.refl import read_reflections

    folder = shared_data / "l_cysteine_narrow_wedge"
    experiments = read_experiments(folder / "11_integrated.expt")
    table = read_reflections(folder / "11_integrated.refl")
    mtz = export.run(experiments, table, export.Params()).summary["mtz"]
    assert mtz.column_labels()[5:9] == ["I", "SIGI", "IPR", "SIGIPR"]
    assert [b.number for b in mtz.batches] == list(range(1, 11))
    assert mtz.batches[0].floats[36] == pytest.approx(-145.0) and mtz.batches[9].floats[37] == pytest.approx(-144.0)
    data = np.array(mtz.array)
    assert np.all((data[:, 4] >= 1) & (data[:, 4] <= 10)) and np.all(data[:, 6] > 0)
