"""Integration against the simulator's per-observation truth.

Strong spots are indexed with the true model (tests/pipeline/truth_indexing.py) so that these
tests measure integration alone.
"""
from pathlib import Path

import numpy as np
import pytest

from integration_truth import simulated_and_indexed, truth_pairs

from algorithms.reflection_table import Flags
from pipeline.formats.expt import read_experiments
from pipeline.params import parse_parameters
from pipeline.steps import integrate


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    return simulated_and_indexed(tmp_path_factory.mktemp("sim") / "sim", 1, "preset=tiny", "n_crystals=1",
                                 "dynamical_error=0", "seed=7")


def _integrate(simulated, *args):
    experiments, indexed, _ = simulated
    params, _ = parse_parameters(integrate.Params, list(args))
    return integrate.run(experiments, indexed, params)


@pytest.fixture(scope="module")
def integrated(simulated):
    return _integrate(simulated)


@pytest.fixture(scope="module")
def integrated_plain(simulated):
    return _integrate(simulated, "summation.correct_profile_fraction=False")


@pytest.fixture(scope="module")
def integrated_refined_sigma(simulated):
    return _integrate(simulated, "refine_sigma=True")


def test_profile_model_estimates_are_near_the_truth(integrated, integrated_refined_sigma):
    dials_like = integrated.summary["experiments"][0]["profile_model"]
    # DIALS' estimators see only strong pixels and so run narrow (8-11 %)
    assert 0.85 * 0.004 < dials_like["sigma_b_deg"] < 0.95 * 0.004
    assert 0.85 * 1.1 < dials_like["sigma_m_deg"] < 0.95 * 1.1
    assert integrated.experiments[0].profile["sigma_m"] == dials_like["sigma_m_deg"]
    # re-measured on the whole background-subtracted reference shoeboxes: within a few per cent
    refined = integrated_refined_sigma.summary["experiments"][0]["profile_model"]
    assert refined["dials_sigma_b_deg"] == dials_like["sigma_b_deg"]
    assert refined["sigma_b_deg"] == pytest.approx(0.004, rel=0.04)
    assert refined["sigma_m_deg"] == pytest.approx(1.1, rel=0.04)


def test_most_predicted_reflections_are_integrated(integrated):
    t = integrated.reflections
    integrable = ~t.get_flags(Flags.dont_integrate)
    nx, ny = integrated.experiments[0].detector.image_size
    inside = integrable & (t["bbox"][:, 0] >= 0) & (t["bbox"][:, 1] <= nx) & (t["bbox"][:, 2] >= 0) & (t["bbox"][:, 3] <= ny)
    assert t.get_flags(Flags.integrated_sum)[inside].mean() >= 0.95
    assert t.get_flags(Flags.integrated_prf)[integrable].mean() >= 0.90


def test_corrected_intensities_correlate_with_the_truth(integrated, simulated):
    t = integrated.reflections
    truth = simulated[2]
    i_t, j_t = truth_pairs(t, truth)
    # recorded counts of the whole reflection = true I · scale · decay · partiality / lp
    expected_full = truth["counts"][j_t] / truth["partiality"][j_t]
    for value, variance, flag in (("intensity.sum.value", "intensity.sum.variance", Flags.integrated_sum),
                                  ("intensity.prf.value", "intensity.prf.variance", Flags.integrated_prf)):
        ok = t.get_flags(flag)[i_t] & (truth["partiality"][j_t] > 0.5)
        intensity = t[value][i_t] / np.where(value.startswith("intensity.sum"), t["partiality"][i_t], 1.0)
        sigma = np.sqrt(t[variance][i_t])
        significant = ok & (expected_full / np.maximum(sigma, 1e-9) >= 3)
        cc = np.corrcoef(intensity[significant], expected_full[significant])[0, 1]
        assert significant.sum() > 200
        assert cc >= 0.95, (value, cc)


def test_profile_fitting_beats_summation_on_weak_reflections(integrated, simulated):
    t = integrated.reflections
    i_t, j_t = truth_pairs(t, simulated[2])
    both = (t.get_flags(Flags.integrated_sum) & t.get_flags(Flags.integrated_prf))[i_t]
    weak = both & (simulated[2]["counts"][j_t] < np.percentile(simulated[2]["counts"][j_t], 50))
    i_over_s = lambda v, s: np.mean(t[v][i_t][weak] / np.sqrt(t[s][i_t][weak]))  # noqa: E731
    assert i_over_s("intensity.prf.value", "intensity.prf.variance") > i_over_s("intensity.sum.value", "intensity.sum.variance")


def _z_scores(result, truth, value, variance, flag, divide):
    """(I − I_true)/σ of fully recorded reflections, and their true I/σ."""
    t = result.reflections
    i_t, j_t = truth_pairs(t, truth)
    ok = (truth["partiality"][j_t] > 0.99) & t.get_flags(flag)[i_t]
    expected = truth["counts"][j_t] / truth["partiality"][j_t]
    scale = t["partiality"][i_t] if divide else 1.0
    sigma = np.sqrt(np.abs(t[variance][i_t])) / scale
    return ((t[value][i_t] / scale - expected) / sigma)[ok], (expected / sigma)[ok]


def test_errors_are_calibrated_against_the_true_counts(integrated, simulated):
    """(I − I_true)/σ of fully recorded reflections: unbiased with unit spread, for profile
    fitting and for summation corrected for the profile fraction outside the foreground (the
    default)."""
    truth = simulated[2]
    # measured: profile fitting +0.09 (SD 1.01), summation −0.04 (SD 1.09); with DIALS' background
    # (no radial shape, no guard band: background.radial_profile=False background.guard_sigmas=0)
    # the sums were −0.11 (SD 1.14): the ring means' Bragg-free background and the guard band
    # keep the spots' own tails and their neighbours' out of the background
    for value, variance, flag, divide, bias in (
            ("intensity.prf.value", "intensity.prf.variance", Flags.integrated_prf, False, 0.1),
            ("intensity.sum.value", "intensity.sum.variance", Flags.integrated_sum, True, 0.1)):
        z, _ = _z_scores(integrated, truth, value, variance, flag, divide)
        assert len(z) > 1000
        assert abs(np.mean(z)) < bias and 0.9 < np.std(z) < 1.2, (value, np.mean(z), np.std(z))


def test_plain_sums_lose_the_profile_outside_the_foreground(integrated, integrated_plain, simulated):
    """DIALS' plain sums (summation.correct_profile_fraction=False): its narrow σb's ±3σ
    foreground loses ~2 % of every reflection, many σ on strong ones; the measured fraction is
    that loss."""
    z, _ = _z_scores(integrated_plain, simulated[2], "intensity.sum.value", "intensity.sum.variance",
                     Flags.integrated_sum, True)
    assert np.mean(z) < -0.2
    fraction = integrated.summary["experiments"][0]["summation_fraction"]
    assert 0.95 < fraction < 0.99
    plain, corrected = integrated_plain.reflections, integrated.reflections
    summed = plain.get_flags(Flags.integrated_sum)
    np.testing.assert_allclose(corrected["intensity.sum.value"][summed] * fraction, plain["intensity.sum.value"][summed],
                               rtol=1e-12)
    np.testing.assert_allclose(corrected["intensity.sum.variance"][summed] * fraction**2,
                               plain["intensity.sum.variance"][summed], rtol=1e-12)
    np.testing.assert_array_equal(corrected["intensity.prf.value"], plain["intensity.prf.value"])


def test_results_do_not_depend_on_the_chunking(simulated, integrated):
    reference = integrated.reflections
    for chunk in (4, 72):  # the reference run used the default, 8
        other = _integrate(simulated, f"chunk_images={chunk}").reflections
        for column in ("intensity.sum.value", "intensity.sum.variance", "intensity.prf.value", "background.mean", "flags",
                       "foreground.unshared_fraction"):
            np.testing.assert_array_equal(other[column], reference[column], err_msg=f"{column}, chunk_images={chunk}")


def test_summary_table_counts_add_up(integrated):
    rows = integrated.summary["experiments"][0]["table"]["rows"]
    overall = rows["Overall"]
    bins = [r for k, r in rows.items() if k != "Overall"]
    for item in ("number processed with summation", "number processed with profile fitting", "number fully recorded"):
        assert sum(b[item] for b in bins) == overall[item]
    text = integrate.format_integration_summary(integrated.summary["experiments"][0]["table"])
    assert "i/sigi (profile fitting)" in text and "number processed with summation" in text


def _write_refined(simulated, folder: Path) -> None:
    """refined.expt and refined.refl of the simulated crystal in ``folder``."""
    from pipeline.formats.expt import write_experiments
    from pipeline.formats.refl import write_reflections

    experiments, indexed, _ = simulated
    experiment = experiments[0].copy()
    experiment.imageset["template"] = str(Path(experiment.directory) / experiment.imageset["template"])
    write_experiments([experiment], folder / "refined.expt")
    write_reflections(indexed, folder / "refined.refl")


def test_cli_writes_integrated_files(simulated, tmp_path, monkeypatch):
    from pipeline.cli import main
    from pipeline.formats.refl import read_reflections

    monkeypatch.chdir(tmp_path)
    _write_refined(simulated, tmp_path)
    assert main(["integrate", "refined.expt", "refined.refl"]) == 0
    table = read_reflections("integrated.refl")
    assert table.get_flags(Flags.integrated_sum).sum() > 1000
    log = Path("integrate.log").read_text()
    assert "sigma b:" in log and "sigma m:" in log and "Summary of integration results" in log
    assert read_experiments("integrated.expt")[0].profile["__id__"] == "gaussian_rs"


def test_missing_input_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["integrate", "refined.expt", "refined.refl"]) == 2
    err = capsys.readouterr().err
    assert "refined.expt: file not found" in err and err.count("\n") == 1
    assert not Path("integrated.refl").exists()


def test_negative_guard_is_a_clear_error(simulated, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    _write_refined(simulated, tmp_path)
    assert main(["integrate", "refined.expt", "refined.refl", "background.guard_sigmas=-1"]) == 2
    err = capsys.readouterr().err
    assert "background.guard_sigmas=-1.0: give a number ≥ 0" in err and err.count("\n") == 1
    assert not Path("integrated.refl").exists() and not Path("integrated.expt").exists()
