"""Integration in three pure functions, so that the pipeline can map the middle one over
image blocks: :func:`predict_reflections` (every reflection with its shoebox), then
:func:`integrate_image_block` (background, summation and the Kabsch-grid mapping of the
reflections a block owns), then :func:`fit_reference_profiles` (learn profiles from the fully
recorded strong reflections and fit every reflection).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.geometry.models import Experiment
from algorithms.geometry.prediction import (
    miller_indices_to_d_min,
    predict_rotation,
    predict_rotation_scan_varying,
)
from algorithms.integration import kernels
from algorithms.integration.background_shape import radial_background_profiles, root_shape_tables
from algorithms.integration.kabsch import kabsch_frame, lorentz_polarisation
from algorithms.integration.profiles import (
    learn_reference_profiles,
    nearest_available_profile,
    sampler_coordinates,
    support_cells,
)
from algorithms.integration.shoebox_geometry import compute_bboxes, partiality
from algorithms.shoebox import ragged_take


@dataclass
class ProfileModel:
    """DIALS' ``gaussian_rs`` profile model (angles in degrees)."""

    sigma_b_deg: float
    sigma_m_deg: float
    n_sigma: float = 3.0

    def grid_steps_rad(self) -> tuple[float, float]:
        """Kabsch-grid cell sizes: half-extent 1.5·n_sigma·σ over 5.5 cells."""
        extent = 1.5 * self.n_sigma / (kernels.GRID_HALF + 0.5)
        return np.radians(self.sigma_b_deg) * extent, np.radians(self.sigma_m_deg) * extent


def predict_reflections(
    experiment: Experiment, profile: ProfileModel, d_min: float | None = None, d_max: float | None = None,
    min_zeta: float = 0.05, sigma_b_multiplier: float = 2.0,
) -> dict[str, np.ndarray]:
    """Every reflection predicted in the scan with its Kabsch frame, bounding box, partiality
    and LP factor; the scan-varying crystal model is used when the crystal has one."""
    beam, det, gonio, scan, crystal = (experiment.beam, experiment.detector, experiment.goniometer,
                                       experiment.scan, experiment.crystal)
    s0 = beam.s0
    if d_min is None:
        d_min = det.max_resolution(s0)
    A_ref = crystal.A if crystal.A_at_scan_points is None else crystal.A_at_scan_points.mean(axis=0)
    hkl = miller_indices_to_d_min(A_ref * 0.995, d_min, None)  # a margin for cells varying in the scan
    # as DIALS' index generator: no systematically absent reflections (their empty foregrounds
    # would only take pixels from their neighbours' backgrounds)
    absent = crystal.space_group.operations().systematic_absences(np.ascontiguousarray(hkl, dtype=np.int32))
    hkl = hkl[~np.asarray(absent, dtype=bool)]
    if crystal.A_at_scan_points is not None:
        pred = predict_rotation_scan_varying(hkl, crystal.A_at_scan_points, beam, det, gonio, scan)
    else:
        pred = predict_rotation(hkl, crystal.A, beam, det, gonio, scan)
    d = 1.0 / np.linalg.norm(pred.s1 - s0, axis=1)
    keep = d >= d_min
    if d_max is not None:
        keep &= d <= d_max
    pred = pred.select(keep)
    d = d[keep]
    axis_lab = gonio.rotation_axis_lab
    e1, e2, _, zeta = kabsch_frame(pred.s1, s0, axis_lab)
    is_electron = beam.probe == "electron" or (beam.probe is None and beam.wavelength < 0.1)
    lp = lorentz_polarisation(pred.s1, s0, axis_lab, beam.polarization_normal, beam.polarization_fraction,
                              apply_polarisation=not is_electron)
    predicted = {
        "miller_index": pred.miller_index,
        "s1": pred.s1,
        "entering": pred.entering,
        "xyzcal.px": pred.xyzcal_px,
        "xyzcal.mm": pred.xyzcal_mm,
        "d": d,
        "e1": e1,
        "e2": e2,
        "zeta": zeta,
        "lp": lp,
        "dont_integrate": np.abs(zeta) < min_zeta,
    }
    return with_profile_model(predicted, experiment, profile, sigma_b_multiplier)


def with_profile_model(predicted: dict[str, np.ndarray], experiment: Experiment, profile: ProfileModel,
                       sigma_b_multiplier: float = 2.0) -> dict[str, np.ndarray]:
    """The predictions with the parts that depend on the profile model (re)computed: bounding
    boxes, partialities and foreground masks."""
    det, scan = experiment.detector, experiment.scan
    e1, e2, zeta = predicted["e1"], predicted["e2"], predicted["zeta"]
    phi = predicted["xyzcal.mm"][:, 2]
    bbox = compute_bboxes(predicted["s1"], phi, e1, e2, zeta, det, scan, profile.sigma_b_deg,
                          profile.sigma_m_deg, profile.n_sigma, sigma_b_multiplier)
    masks, mask_offsets = kernels.foreground_masks(
        np.ascontiguousarray(bbox, dtype=np.int64), e1, e2, det.origin, det.fast_axis, det.slow_axis, det.pixel_size[0],
        det.pixel_size[1], np.radians(profile.n_sigma * profile.sigma_b_deg))
    return {**predicted, "bbox": bbox, "partiality": partiality(phi, zeta, bbox, scan, profile.sigma_m_deg),
            "foreground_masks": masks, "foreground_mask_offsets": mask_offsets}


def pixel_validity_mask(experiment: Experiment) -> np.ndarray:
    """Static mask (n_slow, n_fast): True where pixels may be used (detector mask rectangles)."""
    nf, ns = experiment.detector.image_size
    valid = np.ones((ns, nf), dtype=bool)
    for x0, x1, y0, y1 in experiment.detector.mask:
        valid[y0:y1, x0:x1] = False
    return valid


BACKGROUND_MODELS = {"constant3d": kernels.CONSTANT3D, "loglinear3d": kernels.LOGLINEAR3D}
N_BACKGROUND_PARAMETERS = {kernels.CONSTANT3D: 1, kernels.LOGLINEAR3D: 4}
# profile cells a fit may use: within 4.5 cells of the centre, beyond the 2 % contour of a
# Gaussian 25 % wider than the model (3.4 cells for the model's own width)
SUPPORT_RADIUS_CELLS = 4.5


def max_frames(bbox: np.ndarray) -> int:
    """The most frames any box spans (the width of the per-frame reference arrays)."""
    return int(max(1, (bbox[:, 5] - bbox[:, 4]).max(initial=1)))


def image_background_profiles(images: np.ndarray, z_first: int, pixel_valid: np.ndarray, experiment: Experiment,
                              predicted: dict[str, np.ndarray], ring_u: np.ndarray) -> np.ndarray:
    """ln of each image's radial background profile about the beam (background_shape.py):
    (nz, n_rings) for ``images`` (nz, n_slow, n_fast) from array index ``z_first``, over the
    valid pixels that no predicted reflection claims as foreground (Bragg spots' wings below
    the clipping level would otherwise raise the rings where spots crowd; whole shoeboxes
    would leave too few pixels there). Each image's profile depends on that image alone."""
    claimed = kernels.paint_foreground(images.shape, int(z_first), np.ascontiguousarray(predicted["bbox"], dtype=np.int64),
                                       predicted["foreground_masks"], predicted["foreground_mask_offsets"])
    return np.log(radial_background_profiles(images, pixel_valid, ring_u, experiment.detector.trusted_range, claimed))


def integrate_image_block(
    images: np.ndarray, z_first: int, pixel_valid: np.ndarray, experiment: Experiment, profile: ProfileModel,
    predicted: dict[str, np.ndarray], rows: np.ndarray, reference_rows: np.ndarray, min_background_pixels: int = 10,
    background_model: str = "loglinear3d", guard_sigmas: float = 4.5, ring_u: np.ndarray | None = None,
    log_ring_profiles: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Background, summation and Kabsch-grid mapping for the reflections ``rows`` of
    ``predicted`` (whose boxes lie in ``images`` (nz, n_slow, n_fast), the first of which has
    array index ``z_first``); all of ``predicted`` is used to keep others' foreground out of
    each reflection's background. Rows also in ``reference_rows`` (candidates for profile
    modelling) get their whole grid in ``ref_*`` arrays, in the order of ``ref_rows``.
    Given ``ring_u`` (:func:`~algorithms.integration.background_shape.ring_coordinate`) and
    ``log_ring_profiles`` (:func:`image_background_profiles` of the same frames), the background
    model is scaled by each image's radial background profile about the beam; without, it is
    DIALS'. Background voxels lie beyond ``guard_sigmas``·σb of the reflection's centre (unless
    too few do)."""
    det, scan = experiment.detector, experiment.scan
    n = len(rows)
    delta_b = np.radians(profile.n_sigma * profile.sigma_b_deg)
    bbox_all = np.ascontiguousarray(predicted["bbox"], dtype=np.int64)
    masks, mask_offsets = predicted["foreground_masks"], predicted["foreground_mask_offsets"]
    # only reflections whose boxes meet one of these rows' can claim voxels the rows use; for a
    # few rows (the reference pass) painting just those is much cheaper
    painted = (kernels.boxes_meeting(bbox_all, bbox_all[rows]) if 8 * len(rows) < len(bbox_all)
               else np.arange(len(bbox_all)))
    painted_masks, painted_offsets = ragged_take(masks, mask_offsets, painted)
    claimed = kernels.paint_foreground(images.shape, int(z_first), np.ascontiguousarray(bbox_all[painted]),
                                       painted_masks, painted_offsets)
    if log_ring_profiles is None:
        ring_u, log_ring_profiles = np.zeros(images.shape[1:], np.float32), np.zeros((len(images), 1))
    shape_tables = root_shape_tables(log_ring_profiles)
    mine = {k: v[rows] for k, v in predicted.items() if not k.startswith("foreground_mask")}
    mine_masks, mine_offsets = ragged_take(masks, mask_offsets, rows)
    ref_rows = np.intersect1d(rows, reference_rows)
    slot = np.full(n, -1, dtype=np.int64)
    slot[np.searchsorted(rows, ref_rows)] = np.arange(len(ref_rows))
    support = support_cells(SUPPORT_RADIUS_CELLS)
    ns, nr, G3 = len(support), len(ref_rows), kernels.GRID_CELLS
    out = {
        "intensity.sum.value": np.zeros(n),
        "intensity.sum.variance": np.zeros(n),
        "background.mean": np.zeros(n),
        "background.sum.value": np.zeros(n),
        "background.variance": np.zeros(n),
        "num_pixels.foreground": np.zeros(n, np.int64),
        "num_pixels.background": np.zeros(n, np.int64),
        "kernel_flags": np.zeros(n, np.int64),
        "xyzobs.px.value": np.zeros((n, 3)),
        "voxel_volume": np.zeros(n),
        "unshared_fraction": np.zeros(n),
        "grid_counts": np.zeros((n, ns), np.float32),
        "grid_background": np.zeros((n, ns), np.float32),
        "grid_cover": np.zeros((n, ns), np.float32),
        "grid_bad": np.zeros((n, ns), np.bool_),
        "grid_shared": np.zeros((n, ns), np.bool_),
    }
    refs = {
        "ref_rows": ref_rows,
        "ref_counts": np.zeros((nr, G3), np.float32),
        "ref_background": np.zeros((nr, G3), np.float32),
        "ref_cover": np.zeros((nr, G3), np.float32),
        "ref_bad": np.zeros((nr, G3), np.bool_),
        "ref_frames": np.zeros((nr, max_frames(predicted["bbox"])), np.float64),
    }
    step_b, step_m = profile.grid_steps_rad()
    phi_start, dphi = np.radians(scan.oscillation)
    kernels.integrate_block(
        np.ascontiguousarray(images), int(z_first), pixel_valid, float(det.trusted_range[0]),
        float(det.trusted_range[1]), claimed, ring_u, shape_tables,
        np.ascontiguousarray(mine["bbox"], dtype=np.int64), mine_masks, mine_offsets, mine["e1"], mine["e2"],
        mine["zeta"], mine["xyzcal.mm"][:, 2],
        det.origin, det.fast_axis, det.slow_axis, det.pixel_size[0], det.pixel_size[1],
        delta_b, guard_sigmas * np.radians(profile.sigma_b_deg), float(phi_start), float(dphi),
        int(scan.image_range[0]),
        step_b, step_m, np.radians(profile.sigma_b_deg), np.radians(profile.sigma_m_deg), min_background_pixels, N_BACKGROUND_PARAMETERS[BACKGROUND_MODELS[background_model]], 1.345,
        support, slot,
        out["intensity.sum.value"], out["intensity.sum.variance"], out["background.mean"],
        out["background.sum.value"], out["background.variance"],
        out["num_pixels.foreground"], out["num_pixels.background"], out["kernel_flags"], out["xyzobs.px.value"],
        out["voxel_volume"], out["unshared_fraction"],
        out["grid_counts"], out["grid_background"], out["grid_cover"], out["grid_bad"],
        out["grid_shared"], refs["ref_counts"], refs["ref_background"], refs["ref_cover"], refs["ref_bad"], refs["ref_frames"],
    )
    return {**out, **refs}


def fit_reference_profiles(
    experiment: Experiment, profile: ProfileModel, predicted: dict[str, np.ndarray], block: dict[str, np.ndarray],
    modelling_rows: np.ndarray, threshold: float = 0.02, scan_step_deg: float = 5.0,
    min_unshared_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Learn reference profiles from the whole grids of ``modelling_rows`` (``block["ref_*"]``,
    one row each, in that order) and fit every reflection on its support cells.

    Returns intensity.prf.value/variance, profile.correlation, the number of cells fitted and
    the number of references behind the profile each reflection used.
    """
    det, scan = experiment.detector, experiment.scan
    step_b, step_m = profile.grid_steps_rad()
    cell_volume = step_b * step_b * step_m
    coords, shape = sampler_coordinates(predicted["xyzcal.px"][:, :2], predicted["xyzcal.px"][:, 2], det.image_size,
                                        scan.array_range, z_step_images=scan_step_deg / abs(scan.oscillation[1]))
    profiles, n_refs, available, _ = learn_reference_profiles(
        coords[modelling_rows], shape, block["ref_counts"], block["ref_background"], block["ref_cover"],
        block["ref_bad"], block["voxel_volume"][modelling_rows], block["intensity.sum.value"][modelling_rows],
        cell_volume,
    )
    support = support_cells(SUPPORT_RADIUS_CELLS)
    on_support = profiles[:, support]
    fit_mask = on_support > threshold * profiles.max(axis=1, keepdims=True)
    on_support = _equalise_fitted_mass(on_support, fit_mask, available, n_refs)
    which = nearest_available_profile(coords, shape, available)
    n = len(which)
    intensity, variance, correlation = np.zeros(n), np.zeros(n), np.zeros(n)
    n_fitted = np.zeros(n, np.int64)
    kernels.fit_profiles(
        which, np.ascontiguousarray(on_support), np.ascontiguousarray(fit_mask), block["grid_counts"],
        block["grid_background"], block["grid_cover"], block["grid_bad"], block["grid_shared"],
        block["background.variance"], block["voxel_volume"], min_unshared_fraction, intensity, variance, correlation, n_fitted,
    )
    return {
        "intensity.prf.value": intensity,
        "intensity.prf.variance": variance,
        "profile.correlation": correlation,
        "profile.n_fitted": n_fitted,
        "profile.n_references": np.where(which >= 0, n_refs[np.maximum(which, 0)], 0),
    }


def _equalise_fitted_mass(on_support: np.ndarray, fit_mask: np.ndarray, available: np.ndarray,
                          n_refs: np.ndarray) -> np.ndarray:
    """The profiles (m, n_support) rescaled so that each holds the same mass on the cells it is
    fitted on: the references' mean, weighted by their numbers.

    Normalised over the whole grid, a profile's fitted mass varies from one rotation block to
    the next by much more than the shape of a reflection does (0.93-1.03 on a simulated myd88
    crystal without noise): the outer cells, a few per cent of the mass spread over most of the
    grid, collect neighbours' tails and the background model's local errors. A fit estimates the
    intensity as the fitted counts over the fitted mass, so each block's intensities carried its
    error (profile-fitted intensities of strong reflections scattered 4.8 % around the truth;
    3.1 % with the mass equalised, near their counting error)."""
    fitted_mass = (fit_mask * on_support).sum(axis=1)
    usable = available & (fitted_mass > 0)
    if not usable.any():
        return on_support
    target = np.average(fitted_mass[usable], weights=np.maximum(n_refs[usable], 1))
    scale = np.where(usable, target / np.where(usable, fitted_mass, 1.0), 1.0)
    return on_support * scale[:, None]


def summation_fraction(profile: ProfileModel, predicted: dict[str, np.ndarray], block: dict[str, np.ndarray],
                       modelling_rows: np.ndarray) -> float:
    """The fraction of a reflection that summation over its foreground records, measured on the
    references ``modelling_rows`` (``block["ref_*"]`` in that order): the ratio of their summed
    intensities (over partiality, so that it is the foreground's share on the detector) to
    their whole background-subtracted profiles on the Kabsch grid, pooled over the experiment
    (XDS' correction for the part of the profile outside the integration domain, measured
    rather than modelled). What the ±n_sigma·σb foreground leaves out is a few per cent with
    DIALS' σb, which, estimated from the strong pixels alone, runs narrow.

    Pooled, not per profile position: on real dense patterns the per-position ratios scatter
    (0.74-1.22 on cRED lysozyme) far more than the foreground's share can vary. Capped at 1 (a
    larger ratio means the grid misses part of the reflections, not that the foreground records
    more than all of it); 1 without references."""
    step_b, step_m = profile.grid_steps_rad()
    _, _, available, fraction = learn_reference_profiles(
        np.zeros((len(modelling_rows), 3)), (1, 1, 1), block["ref_counts"], block["ref_background"],
        block["ref_cover"], block["ref_bad"], block["voxel_volume"][modelling_rows],
        block["intensity.sum.value"][modelling_rows] / predicted["partiality"][modelling_rows],
        step_b * step_b * step_m)
    return float(min(fraction[0], 1.0)) if available[0] else 1.0


def _reference_frames(predicted: dict[str, np.ndarray], block: dict[str, np.ndarray],
                      rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One entry per (reference, frame of its box) of the references ``rows`` (``block["ref_frames"]``
    in that order): the reference's number among ``rows``, the frame's array index and the
    reference's background-subtracted foreground counts on it."""
    bbox = predicted["bbox"][rows]
    n_frames = np.minimum(bbox[:, 5] - bbox[:, 4], block["ref_frames"].shape[1])
    spot = np.repeat(np.arange(len(rows)), n_frames)
    frame = np.arange(len(spot)) - np.repeat(np.cumsum(n_frames) - n_frames, n_frames)
    return spot, bbox[spot, 4] + frame, block["ref_frames"][spot, frame]


def _group_medians(groups: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``values`` per group (NaN for empty groups) and the group sizes."""
    order = np.lexsort((values, groups))
    sizes = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ordered = values[order]
    lo, hi = starts + (sizes - 1) // 2, starts + sizes // 2
    medians = np.full(n_groups, np.nan)
    filled = sizes > 0
    medians[filled] = 0.5 * (ordered[lo[filled]] + ordered[hi[filled]])
    return medians, sizes


def images_with_foreign_signal(scan, predicted: dict[str, np.ndarray], block: dict[str, np.ndarray],
                               rows: np.ndarray, sigma_m_deg: float, window: int = 5,
                               min_deviation: float = 0.03) -> np.ndarray:
    """Array indices of the images on which the references ``rows`` (``block["ref_frames"]`` in
    that order: background-subtracted foreground counts per frame of each box) do not carry the
    signal their rocking curves put there — a corrupted image (scrambled pixels, spots missing),
    which must not shape every reflection's profile.

    A reference's expected counts on a frame are its rocking curve's mass there (DIALS' Gaussian
    of σm in c3 = ζ·(φ − φc)) times its scale, the median over its frames holding ≥ 5 % of the
    curve of counts ÷ mass (robust to one bad frame). An image's deviation is the median, over
    the references whose boxes include it (≥ 5), of (counts − expected) ÷ scale: the share of a
    reflection found on the image beyond what belongs there. On clean simulated data these
    deviations scatter by ~0.001 from image to image; a scrambled image measures +0.36 to +0.45,
    one without diffraction −0.05. An image deviating from the median of those within
    ``window`` of it by more than ``min_deviation`` (or 8 robust standard deviations of all
    images' deviations, if larger) is returned."""
    from scipy.special import erf

    if len(rows) == 0:
        return np.zeros(0, int)
    spot, z, counts = _reference_frames(predicted, block, rows)
    phi_a = np.radians(scan.angle_from_array_index(z))
    phi_b = np.radians(scan.angle_from_array_index(z + 1))
    zeta = predicted["zeta"][rows][spot]
    phi_c = predicted["xyzcal.mm"][rows, 2][spot]
    k = 1.0 / (np.sqrt(2.0) * np.radians(sigma_m_deg))
    mass = 0.5 * np.abs(erf(zeta * (phi_b - phi_c) * k) - erf(zeta * (phi_a - phi_c) * k))
    held = mass >= 0.05
    scale, _ = _group_medians(spot[held], counts[held] / mass[held], len(rows))
    z_lo, z_hi = scan.array_range
    ok = (scale[spot] > 0) & (z >= z_lo) & (z < z_hi)  # NaN scale (no frame holding 5 %) compares False
    deviation, n_refs = _group_medians(z[ok] - z_lo, (counts[ok] - scale[spot[ok]] * mass[ok]) / scale[spot[ok]],
                                       z_hi - z_lo)
    deviation[n_refs < 5] = np.nan
    measured = np.isfinite(deviation)
    if measured.sum() < 3:
        return np.zeros(0, int)
    spread = 1.4826 * np.median(np.abs(deviation[measured] - np.median(deviation[measured])))
    limit = max(min_deviation, 8.0 * spread)
    flagged = []
    for i in np.flatnonzero(measured):  # one per image
        around = deviation[max(0, i - window): i + window + 1]
        if abs(deviation[i] - np.median(around[np.isfinite(around)])) > limit:
            flagged.append(z_lo + i)
    return np.array(flagged, dtype=int)


def _core_gaussian_width(density: np.ndarray, step: float, sigma_first: float, pixel_area: float) -> float | None:
    """σ of the isotropic 2-D Gaussian fitted to the cells of ``density`` (GRID × GRID, cell
    size ``step``) whose centres lie within 2·``sigma_first`` of the centre: weighted least
    squares of ln density on r²; the variances that a cell and a pixel (``pixel_area``) add to
    a cell average, w²/12 each, are taken off. None when the core is too poorly defined."""
    c = (np.arange(kernels.GRID) - kernels.GRID_HALF) * step
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    use = (r2 <= (2.0 * sigma_first) ** 2) & (density > 0)
    if use.sum() < 5:
        return None
    w = density[use] ** 2  # Poisson-like weights for the logarithm of a density
    X = np.column_stack([np.ones(use.sum()), r2[use]])
    coef = np.linalg.lstsq(X * np.sqrt(w)[:, None], np.log(density[use]) * np.sqrt(w), rcond=None)[0]
    if coef[1] >= 0:
        return None
    var = -0.5 / coef[1] - step**2 / 12 - pixel_area / 12
    return float(np.sqrt(var)) if var > 0 else None


def refine_profile_model(
    experiment: Experiment, profile: ProfileModel, predicted: dict[str, np.ndarray], block: dict[str, np.ndarray],
    rows: np.ndarray,
) -> dict:
    """σb and σm (degrees) measured on the integrated reference reflections ``rows`` of a first
    pass (``block`` holds their ``ref_*`` arrays, in that order, and their voxel volumes).

    DIALS' estimators (:mod:`algorithms.integration.profile_model`) see only the strong pixels of
    each spot — its bright core above the spot-finding threshold, raw counts with background —
    and so run narrow (8–11 % on simulated Gaussian spots); a foreground of ±n_sigma of that
    then cuts off several per cent of every reflection. Here the whole shoebox is used, with its
    background subtracted: σb from a Gaussian fitted to the core (within 2 σb of the first pass)
    of the pooled reference density on the Kabsch grid, marginal over c3 — the core, because
    real spots have heavier tails than a Gaussian, whose second moments would inflate σb and
    with it every foreground; σm by DIALS' extended maximum-likelihood estimator on the
    background-subtracted foreground counts of each frame (whose frame edges and box ends it
    models exactly).
    """
    from algorithms.integration.profile_model import estimate_sigma_m_deg

    step_b, step_m = profile.grid_steps_rad()
    one_position = np.zeros((len(rows), 3))
    pooled, _, available, _ = learn_reference_profiles(
        one_position, (1, 1, 1), block["ref_counts"], block["ref_background"], block["ref_cover"], block["ref_bad"],
        block["voxel_volume"][rows], block["intensity.sum.value"][rows], step_b * step_b * step_m)
    if len(rows) < 10 or not available[0]:
        return {"sigma_b_deg": profile.sigma_b_deg, "sigma_m_deg": profile.sigma_m_deg, "n_references": int(len(rows))}
    g = pooled[0].reshape(kernels.GRID, kernels.GRID, kernels.GRID).sum(axis=0)  # (c2, c1)
    zeta = predicted["zeta"][rows]
    pixel_area = block["voxel_volume"][rows] / (np.abs(zeta) * np.radians(abs(experiment.scan.oscillation[1])))
    sigma_b = _core_gaussian_width(g, step_b, np.radians(profile.sigma_b_deg), np.mean(pixel_area))
    sigma_b = float(np.degrees(sigma_b)) if sigma_b is not None else profile.sigma_b_deg
    # σm: one entry per (reference, frame of its box)
    spot, z, counts = _reference_frames(predicted, block, rows)
    tau = experiment.scan.angle_from_array_index(z + 0.5) - np.degrees(predicted["xyzcal.mm"][rows, 2][spot])
    sigma_m = estimate_sigma_m_deg(counts, tau, spot, zeta, abs(experiment.scan.oscillation[1]))
    return {"sigma_b_deg": sigma_b, "sigma_m_deg": sigma_m, "n_references": int(len(rows))}
