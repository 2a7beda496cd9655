"""The simulator against its own exact truth: spot positions, counts, partialities, symmetry,
Lorentz factor, drift, corruption and determinism (tiny noiseless simulations)."""
from __future__ import annotations

import gemmi
import numpy as np
import pytest
from scipy.spatial import cKDTree

from algorithms.geometry.models import rotation_matrix, unit_cell_from_a_matrix
from algorithms.simulate import PRESETS, make_structures, plan_crystals, simulate_crystal
from algorithms.simulate.render import background_image
from algorithms.simulate.structure import asu_miller_indices

NOISELESS = dict(poisson=False, background_flat=0.0, inelastic_peak=0.0, n_corrupted_images=0, n_bad_crystals=0)


@pytest.fixture(scope="module", params=[0.002, 0.0008], ids=["spot_1.1px", "spot_0.45px_subsampled"])
def noiseless(request):
    """One tiny ED crystal: no noise, no background, no dynamical error, with drift; spots
    smaller than the preset's so that many are isolated (the narrower one is sub-sampled)."""
    spec = PRESETS["tiny"].replace(n_crystals=1, n_images=20, sigma_m=0.5, sigma_b=request.param, d_min=2.5,
                                   dynamical_error=0.0, drift_cell_percent=0.5, drift_rotation_deg=0.5, seed=3,
                                   **NOISELESS)
    plans = plan_crystals(spec)
    structures = make_structures(spec, plans)
    return spec, simulate_crystal(spec, plans[0], structures)


def _isolated_full_spots(spec, simulated):
    """Rows of observations fully inside the scan and the panel with no neighbour whose ±5σ
    box could reach into their ±5σ box on a shared image."""
    o = simulated.observations
    n_images = spec.n_images
    nf, ns = spec.image_size
    sig = np.sqrt(np.maximum(o.spot_covariance_px[:, 0], o.spot_covariance_px[:, 2]))
    first = o.partial_first_image - 1
    last = first + np.diff(o.partial_offsets) - 1
    x, y = o.xyz_px[:, 0], o.xyz_px[:, 1]
    inside = (o.partiality > 0.999) & (first > 0) & (last < n_images - 1)
    inside &= (x > 6 * sig) & (x < nf - 6 * sig) & (y > 6 * sig) & (y < ns - 6 * sig)
    pairs = cKDTree(o.xyz_px[:, :2]).query_pairs(r=10.5 * sig.max(), output_type="ndarray")
    share = (first[pairs[:, 0]] <= last[pairs[:, 1]]) & (first[pairs[:, 1]] <= last[pairs[:, 0]])
    crowded = np.zeros(len(o), bool)
    crowded[pairs[share].ravel()] = True
    return np.nonzero(inside & ~crowded)[0]


def test_isolated_spot_centroids_and_sums_match_truth(noiseless):
    spec, simulated = noiseless
    o, images = simulated.observations, simulated.images
    rows = _isolated_full_spots(spec, simulated)
    assert len(rows) >= 50
    sig = np.sqrt(np.maximum(o.spot_covariance_px[:, 0], o.spot_covariance_px[:, 2]))
    for i in rows[:200]:
        x, y, z = o.xyz_px[i]
        h = int(np.ceil(5 * sig[i]))
        x0, y0 = int(x) - h, int(y) - h
        z0 = o.partial_first_image[i] - 1
        z1 = z0 + o.partial_offsets[i + 1] - o.partial_offsets[i]
        box = images[z0:z1, y0:y0 + 2 * h + 1, x0:x0 + 2 * h + 1]
        total = box.sum()
        assert total == pytest.approx(o.counts[i], rel=0.01)
        per_image = o.counts[i] / o.partiality[i] * o.partial_fractions[o.partial_offsets[i]:o.partial_offsets[i + 1]]
        np.testing.assert_allclose(box.sum(axis=(1, 2)), per_image, rtol=0.01, atol=1e-3 * o.counts[i])
        zz, yy, xx = np.meshgrid(np.arange(z0, z1) + 0.5, np.arange(box.shape[1]) + y0 + 0.5,
                                 np.arange(box.shape[2]) + x0 + 0.5, indexing="ij")
        assert abs((box * xx).sum() / total - x) < 0.1
        assert abs((box * yy).sum() / total - y) < 0.1
        assert abs((box * zz).sum() / total - z) < 0.1


def test_partialities_of_full_reflections_sum_to_one_and_counts_follow_the_model(noiseless):
    spec, simulated = noiseless
    o = simulated.observations
    lengths = np.diff(o.partial_offsets)
    sums = np.add.reduceat(o.partial_fractions, o.partial_offsets[:-1])
    np.testing.assert_allclose(sums, o.partiality, rtol=1e-12)
    first = o.partial_first_image - 1
    k = np.abs(o.zeta) / (np.sqrt(2) * np.radians(spec.sigma_m))
    margin = 5.0 / k / np.radians(spec.oscillation_width)  # 5√2 σ of the rocking curve, in images
    full = (o.xyz_px[:, 2] - margin > 0) & (o.xyz_px[:, 2] + margin < spec.n_images)
    assert full.sum() > 100
    np.testing.assert_allclose(o.partiality[full], 1.0, atol=1e-6)  # tails beyond ±5σ dropped
    edge = (o.xyz_px[:, 2] < 0) | (o.xyz_px[:, 2] > spec.n_images)
    assert edge.any() and np.all(o.partiality[edge] < 0.5 + 1e-9)
    assert np.all((first >= 0) & (first + lengths <= spec.n_images))
    model = o.intensity_true * o.scale_factor * o.decay * o.dynamical_factor * o.partiality / o.lp
    np.testing.assert_allclose(o.counts, model, rtol=1e-12)
    np.testing.assert_allclose(o.dynamical_factor, 1.0)


def test_geometry_of_observations_is_the_drifting_crystal_on_the_ewald_sphere(noiseless):
    _, simulated = noiseless
    plan, o = simulated.plan, simulated.observations
    s0 = plan.beam.s0
    np.testing.assert_allclose(np.linalg.norm(o.s1, axis=1), np.linalg.norm(s0), rtol=1e-12)
    xy, _ = plan.detector.ray_intersection_px(o.s1)
    np.testing.assert_allclose(xy, o.xyz_px[:, :2], atol=1e-8)
    np.testing.assert_allclose(plan.scan.array_index_from_angle(np.degrees(o.phi_rad)), o.xyz_px[:, 2], atol=1e-9)
    # back-rotate the diffraction vector and compare with A(z)·h, A linear between scan points
    axis = plan.goniometer.rotation_axis
    r0 = np.einsum("nij,nj->ni", rotation_matrix(axis, -o.phi_rad), o.s1 - s0)
    A_points = plan.crystal.A_at_scan_points
    z = np.clip(o.xyz_px[:, 2], 0, len(A_points) - 1 - 1e-9)
    k0 = np.floor(z).astype(int)
    t = (z - k0)[:, None, None]
    A = (1 - t) * A_points[k0] + t * A_points[k0 + 1]
    np.testing.assert_allclose(r0, np.einsum("nij,nj->ni", A, o.miller_index), atol=1e-9)
    np.testing.assert_allclose(o.d, 1 / np.linalg.norm(r0, axis=1), rtol=1e-9)
    # the drift itself: mid-scan A is the nominal crystal, the cell changes by ±0.25 % at the ends
    n = len(A_points) - 1
    np.testing.assert_allclose(A_points[n // 2], plan.crystal.A, atol=1e-15)
    a_first, a_last = unit_cell_from_a_matrix(A_points[0]).a, unit_cell_from_a_matrix(A_points[-1]).a
    assert a_first == pytest.approx(99.06 * (1 - 0.0025), rel=1e-9)
    assert a_last == pytest.approx(99.06 * (1 + 0.0025), rel=1e-9)


def test_lp_is_dials_lorentz_polarisation(noiseless):
    _, simulated = noiseless
    o, beam = simulated.observations, simulated.plan.beam
    s0 = beam.s0
    cos2t = (o.s1 @ s0) / (np.linalg.norm(o.s1, axis=1) * np.linalg.norm(s0))
    sin2t = np.sqrt(1 - cos2t**2)
    np.testing.assert_allclose(o.lp, np.abs(o.zeta) * sin2t / (0.5 * (1 + cos2t**2)), rtol=1e-9)
    e1 = np.cross(o.s1, s0)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    np.testing.assert_allclose(o.zeta, e1 @ simulated.plan.goniometer.rotation_axis_lab, atol=1e-12)


def test_symmetry_equivalents_and_friedel_mates_share_one_true_intensity():
    spec = PRESETS["xray"].replace(n_crystals=1, n_images=4, **NOISELESS)
    plans = plan_crystals(spec)
    structure = make_structures(spec, plans)["true"]
    sg = structure.space_group
    ops = sg.operations()
    rng = np.random.default_rng(0)
    picks = structure.asu_hkl[rng.choice(len(structure.asu_hkl), 50, replace=False)]
    for hkl in picks:
        mates = [op.apply_to_hkl(hkl.tolist()) for op in ops.sym_ops]
        mates += [[-m for m in h] for h in mates]
        asu, intensity = structure.lookup(np.array(mates))
        assert np.all(asu == hkl)
        assert np.all(intensity == intensity[0])
    # gemmi's per-reflection ASU agrees with the vectorised mapping
    hkl = rng.integers(-20, 21, size=(300, 3))
    hkl = hkl[np.any(hkl != 0, axis=1) & ~np.asarray(ops.systematic_absences(hkl.astype(np.int32)), bool)]
    asu = gemmi.ReciprocalAsu(sg)
    expected = np.array([asu.to_asu(h.tolist(), ops)[0] for h in hkl])
    np.testing.assert_array_equal(asu_miller_indices(hkl, sg, structure.cell), expected)
    # no systematically absent reflection in the table (P43212: 00l with l ≠ 4n)
    assert not np.any(ops.systematic_absences(structure.asu_hkl.astype(np.int32)))
    # Wilson: acentric I/Σ is Exp(1), centric I/Σ is χ²₁ (means 1 both)
    sigma = spec.mean_intensity * structure.epsilon * np.exp(-spec.wilson_b / (2 * structure.d**2))
    ratio = structure.intensity / sigma
    assert ratio[~structure.centric].mean() == pytest.approx(1.0, abs=0.05)
    assert np.mean(ratio[~structure.centric] ** 2) == pytest.approx(2.0, abs=0.2)  # E[E²] = 2
    assert np.mean(ratio[structure.centric] ** 2) == pytest.approx(3.0, abs=0.6)  # E[z⁴] = 3


def test_observations_of_a_crystal_carry_the_structure_intensities(noiseless):
    spec, simulated = noiseless
    o = simulated.observations
    structure = make_structures(spec, [simulated.plan])["true"]
    asu, intensity = structure.lookup(o.miller_index)
    np.testing.assert_array_equal(asu, o.asu_miller_index)
    np.testing.assert_array_equal(intensity, o.intensity_true)
    keys = np.unique(o.asu_miller_index, axis=0, return_counts=True)[1]
    assert keys.max() > 1  # equivalents observed more than once


def test_corruption_kinds_change_only_their_images():
    spec = PRESETS["tiny"].replace(n_crystals=3, n_images=12, poisson=False, n_corrupted_images=3, seed=5)
    plans = plan_crystals(spec)
    structures = make_structures(spec, plans)
    corrupted = {p.index: p.corrupted_images for p in plans if p.corrupted_images}
    assert 1 not in corrupted and sum(len(c) for c in corrupted.values()) == 3
    kinds = sorted(k for c in corrupted.values() for k in c.values())
    assert kinds == ["noise", "scrambled", "streak"]
    for index, images in corrupted.items():
        plan = plans[index - 1]
        broken = simulate_crystal(spec, plan, structures).images
        plan.corrupted_images = {}
        clean = simulate_crystal(spec, plan, structures).images
        background = background_image(spec, plan.detector.beam_centre_px(plan.beam.s0))
        for image, kind in images.items():
            k = image - 1
            if kind == "noise":
                np.testing.assert_allclose(broken[k], background)
            elif kind == "scrambled":
                np.testing.assert_allclose(np.sort(broken[k], axis=None), np.sort(clean[k], axis=None))
                assert not np.allclose(broken[k], clean[k])
            else:
                extra = broken[k] - clean[k]
                assert extra.max() > 100 and (extra > 0).sum() > 300
            others = [j for j in range(spec.n_images) if j + 1 not in images]
            np.testing.assert_array_equal(broken[others], clean[others])


def test_bad_crystals_are_non_isomorphous_as_recorded():
    spec = PRESETS["tiny"].replace(n_crystals=4, n_images=2, n_bad_crystals=2, bad_crystal_kind="both",
                                   bad_cell_change_percent=3.0, seed=11)
    plans = plan_crystals(spec)
    assert plans[0].bad_kind is None
    bad = [p for p in plans if p.bad_kind]
    assert len(bad) == 2
    for p in bad:
        cell = p.crystal.unit_cell
        changes = np.array([cell.a / 99.06, cell.b / 31.01, cell.c / 54.30]) - 1
        np.testing.assert_allclose(np.abs(changes), 0.03, rtol=1e-9)
        assert len(set(np.sign(changes))) == 2
        assert p.structure_key == "bad"
    structures = make_structures(spec, plans)
    true, impostor = structures["true"], structures["bad"]
    assert np.array_equal(true.asu_hkl, impostor.asu_hkl)
    # same Wilson fall-off, independent normalised intensities
    wilson = true.epsilon * np.exp(-spec.wilson_b / (2 * true.d**2))
    assert abs(np.corrcoef(true.intensity / wilson, impostor.intensity / wilson)[0, 1]) < 0.05


def test_results_depend_only_on_the_seed():
    spec = PRESETS["tiny"].replace(n_crystals=2, n_images=3, seed=7)
    plans = plan_crystals(spec)
    structures = make_structures(spec, plans)
    first = simulate_crystal(spec, plans[1], structures)
    again = simulate_crystal(spec, plan_crystals(spec)[1], make_structures(spec, plans))
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.observations.counts, again.observations.counts)
    other = simulate_crystal(spec.replace(seed=8), plan_crystals(spec.replace(seed=8))[1], structures)
    assert not np.array_equal(first.images, other.images)
    assert first.images.dtype == np.uint16


def test_a_bad_tetragonal_crystal_stays_tetragonal():
    spec = PRESETS["xray"].replace(n_crystals=6, n_images=2, n_bad_crystals=5, bad_crystal_kind="cell", seed=2)
    for plan in plan_crystals(spec)[1:]:
        cell = plan.crystal.unit_cell
        assert cell.a == pytest.approx(cell.b, rel=1e-12)
        assert abs(cell.a / 79.1 - 1) == pytest.approx(0.03) and abs(cell.c / 38.0 - 1) == pytest.approx(0.03)
        assert (cell.a > 79.1) != (cell.c > 38.0)
        assert cell.is_compatible_with_spacegroup(plan.crystal.space_group)


def test_without_drift_the_observations_are_the_static_predictions():
    """Every reflection the static predictor puts inside the scan is in the truth, at the same
    place (apart from the documented cuts: |ζ| < 10⁻³ or < 10⁻³ of the rocking curve inside)."""
    from algorithms.geometry.prediction import miller_indices_to_d_min, predict_rotation

    spec = PRESETS["tiny"].replace(n_crystals=1, n_images=10, d_min=3.0, **NOISELESS)
    plan = plan_crystals(spec)[0]
    o = simulate_crystal(spec, plan, make_structures(spec, [plan])).observations
    hkl = miller_indices_to_d_min(plan.crystal.A, 3.0)
    hkl = hkl[~np.asarray(plan.crystal.space_group.operations().systematic_absences(hkl.astype(np.int32)), bool)]
    p = predict_rotation(hkl, plan.crystal.A, plan.beam, plan.detector, plan.goniometer, plan.scan)
    p = p.select(1 / np.linalg.norm(p.s1 - plan.beam.s0, axis=1) >= 3.0)
    truth = {(tuple(h), bool(e)): i for i, (h, e) in enumerate(zip(o.miller_index, o.entering))}
    rows = np.array([truth.get((tuple(h), bool(e)), -1) for h, e in zip(p.miller_index, p.entering)])
    assert len(p) > 300 and np.all(rows >= 0)
    np.testing.assert_allclose(o.xyz_px[rows], p.xyzcal_px, atol=1e-9)
    np.testing.assert_allclose(o.s1[rows], p.s1, atol=1e-12)
    inside = (o.xyz_px[:, 2] >= 0) & (o.xyz_px[:, 2] < spec.n_images)
    assert inside.sum() == len(p)
