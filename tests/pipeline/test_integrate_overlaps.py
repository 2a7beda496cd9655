"""Integration where neighbouring reflections share foreground, against the simulator's truth.

On ED data a reciprocal-lattice row close to the beam puts its reflections on nearly the same
pixels, a few images apart; with rocking curves several images wide their foregrounds overlap.
The second crystal of the myd88 simulation (seed 0) is oriented so: DIALS-style sums, which count
shared foreground into every reflection claiming it, were twice the truth on a third of its
strong reflections.
"""
import numpy as np
import pytest

from integration_truth import simulated_and_indexed, truth_pairs

from algorithms.reflection_table import Flags
from pipeline.params import parse_parameters
from pipeline.steps import integrate


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    experiments, indexed, truth = simulated_and_indexed(
        tmp_path_factory.mktemp("overlaps") / "sim", 2, "preset=myd88", "n_crystals=2", "seed=0", "dynamical_error=0",
        "n_corrupted_images=0", "n_bad_crystals=0")
    t = integrate.run(experiments, indexed, parse_parameters(integrate.Params, [])[0]).reflections
    return t, truth, truth_pairs(t, truth)


def _strong_full(t, truth, pairs, flag):
    i_t, j_t = pairs
    expected = truth["counts"][j_t] / truth["partiality"][j_t]
    ok = t.get_flags(flag)[i_t] & (truth["partiality"][j_t] > 0.99)
    sigma = np.sqrt(np.abs(t["intensity.sum.variance"][i_t]))
    return ok & (expected / np.maximum(sigma, 1e-9) >= 10), expected


def test_shared_foreground_is_not_summed_twice(overlapping):
    t, truth, pairs = overlapping
    i_t, _ = pairs
    strong, expected = _strong_full(t, truth, pairs, Flags.integrated_sum)
    unshared = t["foreground.unshared_fraction"][i_t]
    shared = strong & t.get_flags(Flags.overlapped_fg)[i_t] & (unshared < 0.9)
    assert shared.sum() >= 100  # this orientation's overlaps are many and heavy
    ratio = (t["intensity.sum.value"][i_t] / t["partiality"][i_t] / expected)[shared]
    # measured 0.966 and 1.08; summing shared foreground into both: 1.05 and 1.34 over all
    # overlapped strong reflections. The few per cent low: the scale-up takes the model
    # profile's share from DIALS' σb, which runs narrow.
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.percentile(ratio, 90) < 1.15


def test_profile_fitting_agrees_with_summation_where_foreground_is_shared(overlapping):
    t, truth, pairs = overlapping
    i_t, _ = pairs
    strong, expected = _strong_full(t, truth, pairs, Flags.integrated_prf)
    strong &= t.get_flags(Flags.integrated_sum)[i_t] & t.get_flags(Flags.overlapped_fg)[i_t]
    prf = t["intensity.prf.value"][i_t][strong]
    summed = (t["intensity.sum.value"][i_t] / t["partiality"][i_t])[strong]
    assert np.median(prf / expected[strong]) == pytest.approx(1.0, abs=0.03)  # measured 1.016
    # measured 2.9 %; 12 % when shared foreground was summed into both
    assert np.mean(np.abs(prf / summed - 1) > 0.2) < 0.05
