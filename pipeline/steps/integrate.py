"""``ewald integrate``: refined.expt + refined.refl → integrated.expt + integrated.refl
(the equivalent of ``dials.integrate``).

The graph per experiment: one task estimates σb/σm from the strong indexed spots (DIALS'
estimators) and predicts every reflection; a first pass of chunk tasks integrates the reference
spots alone, from which one task re-measures σb/σm on whole background-subtracted shoeboxes
(``refine_sigma``; DIALS' strong-pixel estimates run narrow); then one task per image chunk
integrates the reflections whose predicted centre lies in that chunk, reading the chunk plus a
halo of neighbouring images so that each reflection sees its whole shoebox (reflections whose
boxes reach past the halo go to one extra task reading the whole scan); a last task learns
reference profiles (from references on images whose signal follows the rocking curves) and fits
every reflection. Every reflection is integrated exactly once, from all its pixels, whatever the
chunking: the per-image radial background profiles that scale the GLM depend on each image
alone.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.integration import kernels
from algorithms.integration.background_shape import ring_coordinate
from algorithms.integration.integrate import (
    ProfileModel,
    fit_reference_profiles,
    refine_profile_model,
    image_background_profiles,
    images_with_foreign_signal,
    summation_fraction,
    with_profile_model,
    integrate_image_block,
    pixel_validity_mask,
    predict_reflections,
)
from algorithms.integration.profile_model import estimate_profile_model
from algorithms.reflection_table import Flags, ReflectionTable
from pipeline.errors import ParameterError
from pipeline.params import param, scope
from pipeline.steps import StepResult

NAME = "integrate"
HELP = "Predict and integrate every reflection (summation and 3D profile fitting), as dials.integrate."

logger = logging.getLogger(__name__)


@dataclass
class GaussianRsParameters:
    n_sigma: float = param(3.0, "Extent of the profile model in standard deviations.")
    sigma_b: float | None = param(None, "Beam divergence σb (degrees); None = estimate from the strong spots.")
    sigma_m: float | None = param(None, "Reflecting range σm (degrees); None = estimate from the strong spots.")
    refine_sigma: bool = param(
        False, "Re-measure σb and σm on a first integration of the reference spots (whole shoeboxes, background "
        "subtracted) and integrate with those. DIALS' estimates from the strong pixels describe only each spot's "
        "core (8-11 % narrow on simulated Gaussian spots), so its ±3σ foreground loses a few per cent of every "
        "reflection; but in dense ED patterns the wider boxes also take in more of the neighbours (on the tiny "
        "demo the merged CC to the truth fell from 0.96 to 0.86), hence off by default. Not done for σ values given.")


@dataclass
class GaussianRsFitting:
    scan_step: float = param(5.0, "Spacing (degrees) of the reference-profile positions along the rotation.")
    threshold: float = param(0.02, "Profile cells below this fraction of the profile's peak are not fitted.")


@dataclass
class GaussianRs:
    parameters: GaussianRsParameters = scope(GaussianRsParameters, "The Gaussian profile model.")
    fitting: GaussianRsFitting = scope(GaussianRsFitting, "3D profile fitting.")
    min_spots_overall: int = param(20, "Fewest strong spots needed to estimate σb and σm.")


@dataclass
class Profile:
    gaussian_rs: GaussianRs = scope(GaussianRs, "DIALS' gaussian_rs profile model.")
    fitting: bool = param(True, "Integrate by 3D profile fitting as well as by summation.")
    sigma_b_multiplier: float = param(2.0, "The shoebox extends this many times the foreground in x and y.")


@dataclass
class Prediction:
    d_min: float | None = param(None, "High-resolution limit of prediction (Å); None = the detector corners.")
    d_max: float | None = param(None, "Low-resolution limit of prediction (Å).")


@dataclass
class Filter:
    min_zeta: float = param(0.05, "Reflections with |ζ| below this (too close to the rotation axis) are not integrated.")


@dataclass
class Background:
    min_pixels: int = param(10, "Fewest valid background pixels for the GLM background model.")
    guard_sigmas: float = param(
        4.5, "Background voxels lie beyond this many σb of the reflection's centre (in the Kabsch frame), "
        "not just outside its ±n_sigma foreground: between the two lies the reflection's own tail (a few "
        "per cent of it with DIALS' σb), which a background fitted there takes away from the sum. Boxes "
        "with fewer than min_pixels such voxels use all outside the foreground, as DIALS does (and as a "
        "value ≤ profile n_sigma does everywhere).")
    model: str = param(
        "loglinear3d",
        "Robust Poisson GLM background model: constant3d (DIALS' default) or loglinear3d (ln of the background "
        "linear in x, y, z). Because no reflection's background may use another's foreground, the background "
        "voxels of a dense pattern lie unevenly around the spot; on the steep inelastic background of ED "
        "images a constant then misses the level under the spot, a log-linear model does not.",
        choices=("constant3d", "loglinear3d"))
    radial_profile: bool = param(
        True, "Scale the background model by each image's radial background profile about the beam centre "
        "(sigma-clipped ring means): the GLM then fits μ = profile·exp(model). Electron diffraction's "
        "inelastic peak around the beam changes the background by a factor of two across a shoebox within a "
        "few dozen pixels of the beam, which no constant or log-linear model follows. False gives DIALS' "
        "models.")


@dataclass
class Summation:
    correct_profile_fraction: bool = param(
        True, "Divide every summed intensity (and its σ) by the fraction of a reflection that the foreground "
        "records, measured on the reference reflections as the ratio of their sums to their whole "
        "background-subtracted profiles, pooled over the experiment (XDS' correction for the profile outside "
        "the integration domain). DIALS' σb, estimated from the strong pixels alone, runs narrow, so its "
        "±n_sigma foreground leaves a few per cent of every reflection out: on a simulated myd88 crystal plain "
        "sums are biased low by several σ on strong reflections ((I − I_true)/σ mean −0.26), corrected ones "
        "are not (−0.02). On the two cRED lysozyme crystals process's merged CC½ per resolution shell "
        "averages 0.608 over shells 2–20 with it, 0.601 without (DIALS 0.562). False gives DIALS' plain "
        "sums. Works without profile fitting too.")


@dataclass
class Output:
    experiments: str = param("integrated.expt", "Output experiments.")
    reflections: str = param("integrated.refl", "Output reflections.")


@dataclass
class Params:
    profile: Profile = scope(Profile, "The profile model and profile fitting.")
    prediction: Prediction = scope(Prediction, "Which reflections to predict.")
    filter: Filter = scope(Filter, "Reflections left out of integration.")
    background: Background = scope(Background, "Background modelling (robust Poisson GLM).")
    summation: Summation = scope(Summation, "Summation integration.")
    chunk_images: int = param(8, "Images per Dask task.")
    halo_images: int = param(8, "Extra images each chunk task reads on each side for reflections spanning chunks.")
    output: Output = scope(Output, "Output files.")


# ------------------------------------------------------------------------------------- tasks


def _profile_model(experiment: Experiment, reflections: ReflectionTable, params: Params) -> tuple[ProfileModel, dict]:
    gp = params.profile.gaussian_rs.parameters
    info = {"n_used": 0, "n_total": 0}
    if gp.sigma_b is not None and gp.sigma_m is not None:
        return ProfileModel(gp.sigma_b, gp.sigma_m, gp.n_sigma), info
    reference = reflections.get_flags(Flags.indexed) & ~reflections.get_flags(Flags.bad_for_refinement, all=False)
    reference &= np.any(reflections["miller_index"] != 0, axis=1)
    if "shoebox" not in reflections:
        raise DataError("the reflections have no shoeboxes to estimate sigma_b and sigma_m from; "
                        "use the output of ewald find_spots/index/refine, or give sigma_b= and sigma_m=")
    ref = reflections.select(reference)
    if len(ref) < params.profile.gaussian_rs.min_spots_overall:
        raise DataError(f"only {len(ref)} indexed strong spots to estimate the profile model "
                        f"(min_spots_overall={params.profile.gaussian_rs.min_spots_overall}); give sigma_b= and sigma_m=")
    sb = ref["shoebox"]
    s1 = experiment.detector.pixel_to_s1(ref["xyzcal.px"][:, :2], experiment.beam.s0)
    estimate = estimate_profile_model(sb.bbox, sb.offsets, sb.data, sb.mask, s1, ref["xyzcal.mm"][:, 2],
                                      experiment.detector, experiment.beam, experiment.goniometer, experiment.scan,
                                      params.filter.min_zeta)
    sigma_b = gp.sigma_b if gp.sigma_b is not None else estimate["sigma_b_deg"]
    sigma_m = gp.sigma_m if gp.sigma_m is not None else estimate["sigma_m_deg"]
    return ProfileModel(sigma_b, sigma_m, gp.n_sigma), estimate


def _chunk_bounds(n_images: int, chunk_images: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_images, n_images)) for s in range(0, n_images, chunk_images)]


def prepare(experiment: Experiment, reflections: ReflectionTable, params: Params,
            profile: ProfileModel | None = None, estimate: dict | None = None,
            predicted: dict | None = None) -> dict:
    """Profile model (estimated unless given), predictions (made unless given; their boxes and
    masks always for this profile model) and which task owns each reflection."""
    if profile is None:
        profile, estimate = _profile_model(experiment, reflections, params)
    if predicted is None:
        predicted = predict_reflections(experiment, profile, params.prediction.d_min, params.prediction.d_max,
                                        params.filter.min_zeta, params.profile.sigma_b_multiplier)
    else:
        predicted = with_profile_model(predicted, experiment, profile, params.profile.sigma_b_multiplier)
    z0_scan = experiment.scan.array_range[0]
    bounds = _chunk_bounds(experiment.scan.num_images, params.chunk_images)
    starts = np.array([b[0] for b in bounds])
    local_z = np.clip(np.floor(predicted["xyzcal.px"][:, 2]).astype(int) - z0_scan, 0, experiment.scan.num_images - 1)
    owner = np.searchsorted(starts, local_z, side="right") - 1
    lo = np.array([max(0, b[0] - params.halo_images) for b in bounds])[owner]
    hi = np.array([min(experiment.scan.num_images, b[1] + params.halo_images) for b in bounds])[owner]
    fits = (predicted["bbox"][:, 4] - z0_scan >= lo) & (predicted["bbox"][:, 5] - z0_scan <= hi)
    owner = np.where(fits, owner, len(bounds))  # the last "task" reads the whole scan
    # candidates for profile modelling: predictions of strong indexed spots, fully recorded,
    # with the whole box on the detector (those that are also summed become the references)
    reference = _match_reference(predicted, reflections)
    nx, ny = experiment.detector.image_size
    bbox = predicted["bbox"]
    on_detector = (bbox[:, 0] >= 0) & (bbox[:, 1] <= nx) & (bbox[:, 2] >= 0) & (bbox[:, 3] <= ny)
    candidates = np.flatnonzero(reference & (predicted["partiality"] > 0.99) & on_detector)
    return {"profile": profile, "estimate": estimate, "predicted": predicted, "owner": owner, "bounds": bounds,
            "reference": reference, "modelling_candidates": candidates}


def _frames_of_boxes(images: np.ndarray | Sequence[np.ndarray], z_first: int, bbox: np.ndarray) -> tuple[np.ndarray, int]:
    """The frames of ``images`` (one array, or consecutive chunk arrays, from array index
    ``z_first``) that the boxes span, as one array, and the array index of its first frame.
    Only those frames are joined: a task given many chunks copies none it does not use."""
    if isinstance(images, np.ndarray):
        return images, z_first
    ends = np.cumsum([len(b) for b in images])
    lo = int(np.clip(bbox[:, 4].min() - z_first, 0, ends[-1] - 1)) if len(bbox) else 0
    hi = int(np.clip(bbox[:, 5].max() - z_first, lo + 1, ends[-1])) if len(bbox) else 1
    parts = [b[max(lo - (e - len(b)), 0) : hi - (e - len(b))] for b, e in zip(images, ends) if e > lo and e - len(b) < hi]
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), z_first + lo


def ring_map(experiment: Experiment) -> np.ndarray:
    """Each pixel's ring coordinate about the experiment's beam centre (background_shape.py)."""
    nx, ny = experiment.detector.image_size
    return ring_coordinate((ny, nx), experiment.detector.beam_centre_px(experiment.beam.s0))


def background_profiles_chunk(prep: dict, images: np.ndarray, z_first: int, experiment: Experiment,
                              pixel_valid: np.ndarray, ring_u: np.ndarray) -> np.ndarray:
    """ln of the radial background profile of each image of one stack chunk: computed once per
    image for both integration passes and every task whose frames include it."""
    return image_background_profiles(np.ascontiguousarray(images, dtype=np.float32), z_first, pixel_valid,
                                     experiment, prep["predicted"], ring_u)


def integrate_chunk(prep: dict, task: int, images: np.ndarray | Sequence[np.ndarray], z_first: int,
                    experiment: Experiment, pixel_valid: np.ndarray, background: Background,
                    candidates_only: bool = False, ring_u: np.ndarray | None = None,
                    profiles: np.ndarray | Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """Integrate the reflections owned by ``task`` (only the profile-modelling candidates if
    ``candidates_only``) from ``images`` (one array, or a list of consecutive chunk arrays)
    starting at array index ``z_first``; ``profiles`` (like ``images``: the images' ln radial
    background profiles) and ``ring_u`` scale the background model by them."""
    rows = np.nonzero(prep["owner"] == task)[0]
    if candidates_only:
        rows = np.intersect1d(rows, prep["modelling_candidates"])
    bbox = prep["predicted"]["bbox"][rows]
    log_ring_profiles = None if profiles is None else _frames_of_boxes(profiles, z_first, bbox)[0]
    images, z_first = _frames_of_boxes(images, z_first, bbox)
    block = integrate_image_block(np.ascontiguousarray(images, dtype=np.float32), z_first, pixel_valid, experiment,
                                  prep["profile"], prep["predicted"], rows, prep["modelling_candidates"],
                                  background.min_pixels, background.model, background.guard_sigmas, ring_u,
                                  log_ring_profiles)
    return rows, block


REFERENCE_ARRAYS = ("ref_counts", "ref_background", "ref_cover", "ref_bad", "ref_frames")


def _join_chunks(chunk_results: list, n: int) -> dict:
    """The chunk results as one block: per-reflection arrays of length ``n`` in prediction order
    (zero for rows no chunk integrated), reference arrays in the order of their rows."""
    rows = np.concatenate([r for r, _ in chunk_results])
    block = {}
    for k in chunk_results[0][1]:
        if k.startswith("ref_"):
            continue
        joined = np.concatenate([b[k] for _, b in chunk_results])
        block[k] = np.zeros((n, *joined.shape[1:]), joined.dtype)
        block[k][rows] = joined
    ref_rows = np.concatenate([b["ref_rows"] for _, b in chunk_results])
    ref_order = np.argsort(ref_rows)
    block["ref_rows"] = ref_rows[ref_order]
    for k in REFERENCE_ARRAYS:
        block[k] = np.concatenate([b[k] for _, b in chunk_results])[ref_order]
    return block


def _references(block: dict, prep: dict, experiment: Experiment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The modelling references: the candidates that were summed and whose boxes avoid every
    image on which the references' signal is foreign to their rocking curves (a corrupted
    image); a mask of them among ``block["ref_rows"]`` (= the candidates); and those images'
    array indices."""
    candidates = prep["modelling_candidates"]
    summed = (block["kernel_flags"][candidates] & kernels.FAILED_SUMMATION) == 0
    frames = {k: block[k][summed] for k in REFERENCE_ARRAYS}
    foreign = images_with_foreign_signal(experiment.scan, prep["predicted"], frames, candidates[summed],
                                         prep["profile"].sigma_m_deg)
    bbox = prep["predicted"]["bbox"][candidates]
    touches = np.zeros(len(candidates), bool)
    for image in foreign:
        touches |= (bbox[:, 4] <= image) & (bbox[:, 5] > image)
    used = summed & ~touches
    return candidates[used], used, foreign


def refine(prep: dict, chunk_results: list, experiment: Experiment, reflections: ReflectionTable,
           params: Params) -> dict:
    """A new :func:`prepare` with σb and σm measured on the first pass over the reference spots."""
    n = len(prep["predicted"]["bbox"])
    block = _join_chunks(chunk_results, n)
    rows, used, _ = _references(block, prep, experiment)
    for k in REFERENCE_ARRAYS:
        block[k] = block[k][used]
    refined = refine_profile_model(experiment, prep["profile"], prep["predicted"], block, rows)
    first = prep["profile"]
    estimate = {**prep["estimate"], "dials_sigma_b_deg": first.sigma_b_deg, "dials_sigma_m_deg": first.sigma_m_deg,
                "n_refined_from": refined["n_references"]}
    profile = ProfileModel(refined["sigma_b_deg"], refined["sigma_m_deg"], first.n_sigma)
    return prepare(experiment, reflections, params, profile, estimate, prep["predicted"])


def finish(prep: dict, chunk_results: list, experiment: Experiment, reflections: ReflectionTable,
           params: Params, experiment_id: int = 0) -> StepResult:
    """Join the chunk results in prediction order, fit profiles and build the reflection table."""
    predicted = prep["predicted"]
    n = len(predicted["bbox"])
    block = _join_chunks(chunk_results, n) if n else {}
    table = ReflectionTable(experiment_identifiers={experiment_id: experiment.identifier})
    table["id"] = np.full(n, experiment_id, dtype=np.int32)
    table["panel"] = np.zeros(n, dtype=np.uint64)
    for name in ("miller_index", "entering", "s1", "xyzcal.px", "xyzcal.mm", "bbox", "d", "zeta", "partiality", "lp"):
        table[name] = predicted[name]
    flags = np.full(n, int(Flags.predicted), dtype=np.uint64)
    table["flags"] = flags
    if n == 0:
        return StepResult([experiment], table, {"n_predicted": 0})
    kflags = block["kernel_flags"]
    table.set_flags(predicted["dont_integrate"], Flags.dont_integrate)
    table.set_flags((kflags & kernels.FG_BAD) != 0, Flags.foreground_includes_bad_pixels)
    table.set_flags((kflags & kernels.BG_BAD) != 0, Flags.background_includes_bad_pixels)
    table.set_flags((kflags & kernels.OVERLOADED) != 0, Flags.overloaded)
    table.set_flags((kflags & kernels.OVERLAPPED_FG) != 0, Flags.overlapped_fg)
    table.set_flags((kflags & kernels.FAILED_BACKGROUND) != 0, Flags.failed_during_background_modelling)
    integrable = ~predicted["dont_integrate"]
    summed = integrable & ((kflags & kernels.FAILED_SUMMATION) == 0)
    table.set_flags(integrable & ~summed, Flags.failed_during_summation)
    table.set_flags(summed, Flags.integrated_sum)
    for name in ("intensity.sum.value", "intensity.sum.variance", "background.mean", "num_pixels.foreground",
                 "num_pixels.background"):
        table[name] = block[name]
    table["xyzobs.px.value"] = block["xyzobs.px.value"]
    # the model profile's share of the foreground no neighbour claims (1 without overlaps):
    # overlapped sums are scaled up from that share
    table["foreground.unshared_fraction"] = block["unshared_fraction"]
    nfg = block["num_pixels.foreground"]
    table["background.sum.value"] = block["background.sum.value"]
    table["background.sum.variance"] = np.abs(block["background.sum.value"]) + block["background.variance"] * nfg**2
    # reference spots: predictions matched to the strong indexed spots (same h and entering)
    reference = prep["reference"]
    table.set_flags(reference, Flags.reference_spot)
    modelling_rows, used, foreign_images = _references(block, prep, experiment)
    for k in REFERENCE_ARRAYS:
        block[k] = block[k][used]
    modelling = np.zeros(n, bool)
    modelling[modelling_rows] = True
    summary = {"profile_model": {**prep["estimate"], "sigma_b_deg": prep["profile"].sigma_b_deg,
                                 "sigma_m_deg": prep["profile"].sigma_m_deg, "n_sigma": prep["profile"].n_sigma},
               "n_predicted": int(n), "n_reference": int(reference.sum()), "n_modelling": int(modelling.sum()),
               "images_left_out_of_profiles": [int(z) + 1 for z in foreign_images]}
    if params.summation.correct_profile_fraction:
        fraction = summation_fraction(prep["profile"], predicted, block, modelling_rows)
        table["intensity.sum.value"] = np.where(summed, block["intensity.sum.value"] / fraction, block["intensity.sum.value"])
        table["intensity.sum.variance"] = np.where(summed, block["intensity.sum.variance"] / fraction**2,
                                                   block["intensity.sum.variance"])
        summary["summation_fraction"] = fraction
    if params.profile.fitting:
        fitted = fit_reference_profiles(experiment, prep["profile"], predicted, block, modelling_rows,
                                        params.profile.gaussian_rs.fitting.threshold,
                                        params.profile.gaussian_rs.fitting.scan_step)
        ok = integrable & (fitted["intensity.prf.variance"] > 0)
        table["intensity.prf.value"] = fitted["intensity.prf.value"]
        table["intensity.prf.variance"] = np.where(ok, fitted["intensity.prf.variance"], -1.0)
        table["profile.correlation"] = fitted["profile.correlation"]
        table.set_flags(ok, Flags.integrated_prf)
        table.set_flags(integrable & ~ok, Flags.failed_during_profile_fitting)
        table.set_flags(modelling, Flags.used_in_modelling)
    out_experiment = experiment.copy()
    out_experiment.profile = {"__id__": "gaussian_rs", "n_sigma": prep["profile"].n_sigma,
                              "sigma_b": prep["profile"].sigma_b_deg, "sigma_m": prep["profile"].sigma_m_deg}
    summary["table"] = integration_summary(table)
    return StepResult([out_experiment], table, summary)


def _match_reference(table: dict | ReflectionTable, reflections: ReflectionTable) -> np.ndarray:
    strong = reflections.get_flags(Flags.indexed) & np.any(reflections["miller_index"] != 0, axis=1)
    keys_ref = {(*map(int, h), bool(e)) for h, e in zip(reflections["miller_index"][strong], reflections["entering"][strong])}
    hkl, ent = table["miller_index"], table["entering"]
    # vectorised membership through a structured view of (h, k, l, entering)
    if not keys_ref:
        return np.zeros(len(table), bool)
    ref_arr = np.array(sorted(keys_ref), dtype=np.int64)
    pred_arr = np.column_stack([hkl, ent]).astype(np.int64)
    dtype = np.dtype([("h", np.int64), ("k", np.int64), ("l", np.int64), ("e", np.int64)])
    return np.isin(np.ascontiguousarray(pred_arr).view(dtype).ravel(), np.ascontiguousarray(ref_arr).view(dtype).ravel())


def integration_graph(experiment, reflections, params: Params, stack, experiment_id: int = 0,
                      sweep: Experiment | None = None, name: str | None = None):
    """A Dask Delayed of the StepResult for one experiment, given its lazy image ``stack``.

    ``experiment`` and ``reflections`` may themselves be Delayed (the results of refinement in
    the ``process`` graph); then ``sweep``, the imported experiment, gives the scan and the
    detector mask that fix the chunk tasks when the graph is built. ``name`` labels the task
    keys (default ``ds<experiment_id>``).
    """
    if params.background.guard_sigmas < 0:
        raise ParameterError(f"background.guard_sigmas={params.background.guard_sigmas}: give a number ≥ 0 "
                             "(σb beyond the reflection's centre; 0 = DIALS' background, all outside the foreground)")
    name = name or f"ds{experiment_id}"
    sweep = experiment if sweep is None else sweep
    prep = dask.delayed(prepare, pure=True)(experiment, reflections, params, dask_key_name=f"integrate-prepare-{name}")
    data = stack.data if hasattr(stack, "data") else stack
    pixel_valid = dask.delayed(pixel_validity_mask, pure=True)(sweep, dask_key_name=f"integrate-mask-{name}")
    z0 = sweep.scan.array_range[0]
    n = sweep.scan.num_images
    bounds = _chunk_bounds(n, params.chunk_images)
    # the tasks take the stack's chunks as they are (a slice of the Dask array would add a task
    # joining them into one array, a copy of every image the task might need)
    blocks = list(data.to_delayed().ravel())
    block_starts = np.cumsum((0,) + data.chunks[0])

    ring_u, profiles = None, None
    if params.background.radial_profile:
        # one task per stack chunk measures its images' background profiles (with the first
        # pass's predictions, which only say which pixels are Bragg foreground), for every task
        ring_u = dask.delayed(ring_map, pure=True)(experiment, dask_key_name=f"integrate-rings-{name}")
        profiles = [dask.delayed(background_profiles_chunk, pure=True)(
            prep, block, z0 + int(block_starts[k]), experiment, pixel_valid, ring_u,
            dask_key_name=f"integrate-background-{name}-{k}") for k, block in enumerate(blocks)]

    def chunks_between(lo: int, hi: int) -> tuple[list, list | None, int]:
        ks = [k for k in range(len(blocks)) if block_starts[k] < hi and block_starts[k + 1] > lo]
        return [blocks[k] for k in ks], None if profiles is None else [profiles[k] for k in ks], int(block_starts[ks[0]])

    def chunk_tasks(prep, label: str, candidates_only: bool) -> list:
        tasks = []
        for task, (s, e) in enumerate(bounds + [(0, n)]):
            lo, hi = max(0, s - params.halo_images), min(n, e + params.halo_images)
            images, chunk_profiles, first = chunks_between(lo, hi)
            tasks.append(dask.delayed(integrate_chunk, pure=True)(
                prep, task, images, z0 + first, experiment, pixel_valid, params.background, candidates_only,
                ring_u, chunk_profiles,
                dask_key_name=f"integrate-{label}-{name}-{task if task < len(bounds) else 'wide'}"))
        return tasks

    gp = params.profile.gaussian_rs.parameters
    if gp.refine_sigma and (gp.sigma_b is None or gp.sigma_m is None):
        first = chunk_tasks(prep, "references", True)
        prep = dask.delayed(refine, pure=True)(prep, first, experiment, reflections, params,
                                               dask_key_name=f"integrate-refine-{name}")
    results = chunk_tasks(prep, "chunk", False)
    return dask.delayed(finish, pure=True)(prep, results, experiment, reflections, params, experiment_id,
                                            dask_key_name=f"integrate-finish-{name}")


def run(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> StepResult:
    """Integrate every experiment (each with its own lazily opened image stack)."""
    from pipeline.images import open_image_stack

    graphs = []
    for i, experiment in enumerate(experiments):
        refl = reflections.select(reflections["id"] == i) if "id" in reflections else reflections
        stack = open_image_stack(experiment, chunk_images=params.chunk_images)
        graphs.append(integration_graph(experiment, refl, params, stack, i))
    results = dask.compute(*graphs)
    table = ReflectionTable.concat([r.reflections for r in results])
    return StepResult([r.experiments[0] for r in results], table,
                      {"experiments": [r.summary for r in results]})


# ----------------------------------------------------------------------------------- reports


def _equal_volume_bins(d: np.ndarray, n_bins: int) -> np.ndarray:
    s3 = 1.0 / d**3
    edges = np.linspace(s3.min(), s3.max(), n_bins + 1)
    return np.clip(np.searchsorted(edges, s3, side="right") - 1, 0, n_bins - 1)


def integration_summary(table: ReflectionTable, n_bins: int = 20) -> dict:
    """DIALS' integration summary (Overall / per resolution bin) as a dict of columns."""
    d = table["d"]
    bins = _equal_volume_bins(d, n_bins)
    rows = {}
    selections = [("Overall", np.ones(len(table), bool))] + [(str(b), bins == b) for b in range(n_bins)]
    has_prf = "intensity.prf.value" in table
    for label, sel in selections:
        t = table.select(sel)
        if len(t) == 0:
            continue
        isum = t.get_flags(Flags.integrated_sum)
        iprf = t.get_flags(Flags.integrated_prf) if has_prf else np.zeros(len(t), bool)
        both = isum & iprf

        def mean_i_over_sigma(value, variance, sel_):
            if not sel_.any():
                return 0.0
            return float(np.mean(t[value][sel_] / np.sqrt(np.maximum(t[variance][sel_], 1e-30))))

        row = {
            "dmin": float(t["d"].min()),
            "dmax": float(t["d"].max()),
            "number fully recorded": int(np.sum(t["partiality"] > 0.997300203937)),
            "number partially recorded": int(np.sum(t["partiality"] <= 0.997300203937)),
            "number with invalid background pixels": int(t.get_flags(Flags.background_includes_bad_pixels).sum()),
            "number with invalid foreground pixels": int(t.get_flags(Flags.foreground_includes_bad_pixels).sum()),
            "number with overloaded pixels": int(t.get_flags(Flags.overloaded).sum()),
            "number in powder rings": int(t.get_flags(Flags.in_powder_ring).sum()),
            "number processed with summation": int(isum.sum()),
            "number processed with profile fitting": int(iprf.sum()),
            "number failed in background modelling": int(t.get_flags(Flags.failed_during_background_modelling).sum()),
            "number failed in summation": int(t.get_flags(Flags.failed_during_summation).sum()),
            "number failed in profile fitting": int(t.get_flags(Flags.failed_during_profile_fitting).sum()),
            "ibg": float(np.mean(t["background.mean"][isum])) if isum.any() else 0.0,
            "i/sigi (summation)": mean_i_over_sigma("intensity.sum.value", "intensity.sum.variance", isum),
            "i/sigi (profile fitting)": mean_i_over_sigma("intensity.prf.value", "intensity.prf.variance", iprf) if has_prf else 0.0,
            "cc prf": float(np.mean(t["profile.correlation"][iprf])) if iprf.any() else 0.0,
            "cc_pearson sum/prf": _pearson(t["intensity.sum.value"][both], t["intensity.prf.value"][both]) if has_prf else 0.0,
            "cc_spearman sum/prf": _spearman(t["intensity.sum.value"][both], t["intensity.prf.value"][both]) if has_prf else 0.0,
        }
        rows[label] = row
    return {"n_bins": n_bins, "rows": rows}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return 0.0
    return _pearson(np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float))


def format_integration_summary(summary: dict) -> str:
    """The "Summary vs resolution" table of dials.integrate: Overall, lowest and highest bins."""
    rows = summary["rows"]
    bins = [k for k in rows if k != "Overall"]
    if not bins:
        return "No reflections integrated"
    low, high = rows[bins[0]], rows[bins[-1]]
    overall = rows["Overall"]
    items = list(overall)
    width = max(len(i) for i in items)
    lines = [" Summary of integration results", "-" * (width + 40),
             f" {'Item':<{width}} | {'Overall':>10} | {'Low':>10} | {'High':>10}", "-" * (width + 40)]
    for item in items:
        vals = [overall[item], low[item], high[item]]
        fmt = (lambda v: f"{v:>10d}") if isinstance(overall[item], int) else (lambda v: f"{v:>10.2f}")
        lines.append(f" {item:<{width}} | " + " | ".join(fmt(v) for v in vals))
    lines.append("-" * (width + 40))
    return "\n".join(lines)


def cli(params: Params, files: list[str]) -> None:
    """Read refined.expt/refined.refl, integrate, write integrated.expt/refl atomically."""
    from pipeline.formats.expt import read_experiments, write_experiments
    from pipeline.formats.refl import read_reflections, write_reflections
    from pipeline.inputs import experiments_and_reflections_from

    experiments_path, reflections_path = experiments_and_reflections_from(files, NAME)
    experiments = read_experiments(experiments_path)
    reflections = read_reflections(reflections_path)
    result = run(experiments, reflections, params)
    for i, s in enumerate(result.summary["experiments"]):
        pm = s["profile_model"]
        logger.info("Experiment %d: using %d / %d reflections for sigma calculation", i, pm["n_used"], pm["n_total"])
        logger.info(" sigma b: %.6f degrees", pm["sigma_b_deg"])
        logger.info(" sigma m: %.6f degrees", pm["sigma_m_deg"])
        if s.get("images_left_out_of_profiles"):
            logger.info("Images whose reference spots do not follow their rocking curves (left out of profile "
                        "modelling): %s", " ".join(map(str, s["images_left_out_of_profiles"])))
        if "summation_fraction" in s:
            logger.info("Summed intensities corrected for the profile outside the foreground (fraction "
                        "recorded %.4f)", s["summation_fraction"])
        logger.info(format_integration_summary(s["table"]))
    write_experiments(result.experiments, Path(params.output.experiments))
    write_reflections(result.reflections, Path(params.output.reflections))
    logger.info("Saved %d reflections to %s", len(result.reflections), params.output.reflections)
