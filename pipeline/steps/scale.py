"""``ewald scale``: N × integrated.{expt,refl} → scaled.{expt,refl}, scaled.html, as ``dials.scale``.

Input preparation (dials.scale, Beilsten-Edmands et al. 2020, Acta D 76:385; algorithms.md §8.2):
experiments get unique identifiers (fresh UUIDs when inputs reuse them) and consecutive ids; all
crystals are put in one consensus space group (inputs whose lattice disagrees are an error naming
the file) and share the average unit cell; only integrated reflections are kept; LP/QE corrections
and the partiality correction of summation intensities are applied; reflections with no valid
intensity, variance ≤ 0, partiality < ``partiality_cutoff``, I/σ < ``min_isigi`` or outside
``d_min``/``d_max`` are ``excluded_for_scaling``, those outside a scan's valid image ranges
``user_excluded_in_scaling``; batches are numbered with DIALS' offset rule; crystal-frame beam
directions (for the absorption surface) are the lab vectors rotated by −φ about the rotation axis,
then turned so that the axis lies along z. The science (physical model, minimisation, error model,
outliers, intensity combination, ΔCC½ filtering) is :mod:`algorithms.scaling`.
"""
from __future__ import annotations

import collections
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.reflection_table import Flags, ReflectionTable
from algorithms.merging import MergingStatistics, map_to_asu, merge_intensities, merging_statistics
from algorithms.merging.statistics import normal_quantiles
from algorithms.scaling import (DatasetModelResult, DatasetScan, FilteringResult, ModelOptions, ScalingData,
                                ScalingOptions, ScalingResult, excluded_for_scaling, prepare_intensities,
                                scale_and_filter)
from algorithms.scaling.absorption import crystal_frame_directions
from algorithms.scaling.ambiguity import alternative_indexings, hkl_triplet
from algorithms.scaling.ambiguity import resolve_indexing_ambiguity as resolve_ambiguity
from algorithms.scaling.smoother import SmootherAxis
from pipeline.errors import InputFileError
from pipeline.formats.mtz import batch_offsets
from pipeline.params import param, scope
from pipeline.steps import StepResult

NAME = "scale"
HELP = "Scale integrated data of one or many crystals together (physical model, error model, ΔCC½ filtering), as dials.scale."

logger = logging.getLogger(__name__)

REPORT_MAX_POINTS = 2000  # points of the normal probability plot in scaled.html (evenly spread in rank)


# ------------------------------------------------------------------------------------ parameters


@dataclass
class Physical:
    scale_interval: float | None = param(None, "Rotation interval (deg) between scale parameters; None = auto from the wedge.")
    decay_interval: float | None = param(None, "Rotation interval (deg) between B parameters; None = auto from the wedge.")
    decay_correction: bool = param(True, "Refine a smoothly varying relative B factor.")
    decay_restraint: float = param(0.1, "Weight of the restraint of B towards zero.")
    absorption_correction: bool | None = param(None, "Refine a spherical-harmonic absorption surface; None = auto (wedges > 60°).")
    lmax: int = param(4, "Highest spherical-harmonic order of the absorption surface.")
    surface_weight: float = param(5e5, "Weight of the restraint of the absorption parameters towards zero.")
    fix_initial: bool = param(True, "Fix the first scale parameter of each crystal in the final full-matrix round.")


@dataclass
class Basic:
    min_Ih: float = param(25.0, "Groups of equivalents whose scaled mean is below this are not used to refine the error model.")
    min_Ih_in_counts: bool = param(True, "min_Ih in counts of the integrated intensity, i.e. times each observation's "
                                         "LP/QE factor (ewald: ED LP factors are ~10⁻³, so 25 in LP-corrected units "
                                         "excludes everything); False = in LP-corrected units, as DIALS.")
    n_bins: int = param(10, "Intensity bins for refining b.")


@dataclass
class ErrorModelOptions:
    error_model: Literal["basic"] | None = param("basic", "Error model σ'² = a²(σ² + (bI)²); None = none.")
    basic: Basic = scope(Basic, "The two-parameter error model.")


@dataclass
class Weighting:
    error_model: ErrorModelOptions = scope(ErrorModelOptions, "Error model adjusting the variances.")


@dataclass
class ReflectionSelection:
    intensity_choice: Literal["combine", "profile", "sum"] = param(
        "combine", "Which integrated intensities to scale: combine = profile/summation mix with the lowest Rmeas.")


@dataclass
class CutData:
    d_min: float | None = param(None, "High-resolution limit (Å); None = all data.")
    d_max: float | None = param(None, "Low-resolution limit (Å); None = all data.")
    partiality_cutoff: float = param(0.4, "Exclude reflections with a lower partiality.")
    min_isigi: float = param(-5.0, "Exclude reflections with a lower I/σ.")
    min_relative_inverse_scale: float | None = param(
        0.1, "Exclude observations whose inverse scale g falls below this fraction of the median g of their crystal "
             "(ewald: where a crystal stops diffracting the scale extrapolates towards 0 and I/g explodes); None = keep all, as DIALS.")


@dataclass
class ScalingOptionsScope:
    outlier_rejection: Literal["standard"] | None = param("standard", "Outlier rejection; None = none.")
    outlier_zmax: float = param(6.0, "Normalised deviation above which an observation is an outlier.")
    full_matrix: bool = param(True, "Finish with a full-matrix round (parameter errors, Var(g)).")
    check_consistent_indexing: bool | None = param(
        None, "Bring all crystals into one indexing where the lattice allows alternative ones (Brehm & Diederichs "
              "2014), before scaling; None = auto: on when there are alternatives (ewald; DIALS' default is False).")


@dataclass
class DeltaCcHalf:
    max_cycles: int = param(6, "Most filtering cycles.")
    max_percent_removed: float = param(10.0, "Stop when more than this % of the reflections have been removed.")
    min_completeness: float | None = param(None, "Stop when the completeness (%) falls below this; None = no limit.")
    mode: Literal["dataset", "image_group"] = param("dataset", "Remove whole crystals, or groups of images.")
    group_size: int = param(10, "Images per group in image_group mode.")
    stdcutoff: float = param(4.0, "Groups with ΔCC½ below median − stdcutoff·1.4826·MAD (and below 0) are removed; "
                                  "with robust_cutoff=False below mean − stdcutoff·SD, as DIALS.")
    robust_cutoff: bool = param(True, "Cutoff from the median and MAD of ΔCC½ (ewald: one very bad group among few "
                                      "inflates the SD so that mean − 4·SD flags nothing); False = DIALS' mean − stdcutoff·SD.")
    dials_end_trimming: bool = param(False, "image_group mode: remove only groups at the ends of a sweep, as DIALS does "
                                            "(ewald's default also removes bad groups inside a sweep).")
    intensity_ratio_filter: bool = param(
        True, "image_group mode: also remove groups whose intensities are systematically off the scaling model "
              "(Σ I/g over Σ Ĩ of the other observations below median − stdcutoff·1.4826·MAD and by ≥ 10 %; "
              "catches frames recorded without diffraction, which ΔCC½ barely sees). ewald only: off with "
              "dials_end_trimming=True or robust_cutoff=False.")


@dataclass
class NonIsomorphism:
    remove: bool = param(True, "Remove crystals whose cell is far from the consensus or whose whole-crystal ΔCC½ is an outlier.")


@dataclass
class FilteringOutput:
    scale_and_filter_results: str = param("scale_and_filter_results.json", "Per-cycle results of ΔCC½ filtering.")


@dataclass
class Filtering:
    method: Literal["deltacchalf"] | None = param(None, "Filter bad data by ΔCC½; None = no filtering.")
    deltacchalf: DeltaCcHalf = scope(DeltaCcHalf, "ΔCC½ filtering.")
    nonisomorphism: NonIsomorphism = scope(NonIsomorphism, "Whole-crystal non-isomorphism removal (ewald).")
    output: FilteringOutput = scope(FilteringOutput, "Filtering output.")


@dataclass
class Merging:
    nbins: int = param(20, "Resolution bins of the merging statistics.")


@dataclass
class Output:
    experiments: str = param("scaled.expt", "Output experiments.")
    reflections: str = param("scaled.refl", "Output reflections.")
    html: str | None = param("scaled.html", "HTML report; None = none.")
    merging: Merging = scope(Merging, "Merging statistics in the log.")


@dataclass
class Params:
    model: Literal["auto", "physical"] = param("auto", "Scaling model; auto = physical.")
    physical: Physical = scope(Physical, "The physical model (scale, decay, absorption).")
    weighting: Weighting = scope(Weighting, "Weights and error model.")
    reflection_selection: ReflectionSelection = scope(ReflectionSelection, "Which intensities are scaled.")
    cut_data: CutData = scope(CutData, "Reflections excluded from scaling.")
    scaling_options: ScalingOptionsScope = scope(ScalingOptionsScope, "Outliers and minimisation.")
    filtering: Filtering = scope(Filtering, "ΔCC½ and non-isomorphism filtering.")
    output: Output = scope(Output, "Output files.")


# ------------------------------------------------------------------------------ combining inputs


def _lattice_key(space_group: gemmi.SpaceGroup) -> tuple[str, str]:
    """Centring and point group: inputs with the same key can be merged in one space group."""
    return space_group.centring_type(), space_group.point_group_hm()


def combine_inputs(experiment_lists: list[list[Experiment]], tables: list[ReflectionTable],
                   sources: list[str]) -> tuple[list[Experiment], ReflectionTable]:
    """One experiment list (ids 0…n−1, unique identifiers) and one table of integrated reflections."""
    experiments: list[Experiment] = []
    parts: list[ReflectionTable] = []
    origin: list[str] = []
    for expts, table, source in zip(experiment_lists, tables, sources):
        integrated = table.get_flags(Flags.integrated, all=False) if "flags" in table else np.zeros(len(table), bool)
        if not integrated.any():
            raise DataError(f"{source}: no integrated reflections; give the output of ewald integrate")
        table = table.select(integrated)
        ids = table["id"].astype(np.int64)
        position = {e.identifier: i for i, e in enumerate(expts)}
        for table_id in np.unique(ids):
            identifier = table.experiment_identifiers.get(int(table_id))
            k = position.get(identifier, int(table_id)) if identifier is not None else int(table_id)
            if not 0 <= k < len(expts):
                raise InputFileError(f"{source}: reflections of experiment id {table_id} have no experiment in the "
                                     ".expt file given with it; give matching .expt and .refl files")
            part = table.select(ids == table_id)
            part["id"] = np.full(len(part), len(experiments) + k, np.int32)
            part.experiment_identifiers = {}
            parts.append(part)
        experiments += [e.copy() for e in expts]
        origin += [source] * len(expts)
    for e, source in zip(experiments, origin):
        if e.crystal is None or e.scan is None:
            raise DataError(f"{source}: an experiment has no crystal or no scan; give integrated rotation data")
    identifiers = [e.identifier for e in experiments]
    if len(set(identifiers)) != len(identifiers) or not all(identifiers):
        for e in experiments:
            old, e.identifier = e.identifier, str(uuid.uuid4())
            if old in e.scan.valid_image_ranges:  # image ranges of an earlier scaling run follow the experiment
                e.scan.valid_image_ranges = {e.identifier: e.scan.valid_image_ranges[old]}
    _check_lattices(experiments, origin)
    table = ReflectionTable.concat(parts)
    table.experiment_identifiers = {i: e.identifier for i, e in enumerate(experiments)}
    return experiments, table


def _check_lattices(experiments: list[Experiment], origin: list[str]) -> None:
    keys = [_lattice_key(e.crystal.space_group) for e in experiments]
    consensus, _ = collections.Counter(keys).most_common(1)[0]
    for e, key, source in zip(experiments, keys, origin):
        if key != consensus:
            raise DataError(f"{source}: space group {e.crystal.space_group.hm} (point group {key[1]}, {key[0]} lattice) "
                            f"is inconsistent with the other inputs ({consensus[0]} {consensus[1]}); reindex it or leave it out")


def consensus_space_group(experiments: list[Experiment]) -> gemmi.SpaceGroup:
    """The most common space group of the inputs (all share one lattice after :func:`combine_inputs`)."""
    counts = collections.Counter(e.crystal.space_group.hm for e in experiments)
    name, _ = counts.most_common(1)[0]
    if len(counts) > 1:
        logger.warning("Inputs are in different space groups (%s); scaling all in %s",
                       ", ".join(f"{k}: {v}" for k, v in counts.items()), name)
    return gemmi.SpaceGroup(name)


def average_unit_cell(experiments: list[Experiment]) -> gemmi.UnitCell:
    return gemmi.UnitCell(*np.mean([e.crystal.unit_cell.parameters for e in experiments], axis=0))


# -------------------------------------------------------------------------------- preparation


def _valid_image_mask(experiment: Experiment, image: np.ndarray) -> np.ndarray:
    ranges = experiment.scan.valid_image_ranges.get(experiment.identifier)
    if not ranges:
        return np.ones(len(image), bool)
    return np.any([(image >= lo) & (image <= hi) for lo, hi in ranges], axis=0)


@dataclass
class PreparedInput:
    experiments: list[Experiment]
    reflections: ReflectionTable
    data: ScalingData
    reindexed: list[tuple[int, str]] = field(default_factory=list)  # (crystal, operator) from the ambiguity check


def _ambiguity_observations(experiments: list[Experiment], table: ReflectionTable, params: Params) -> np.ndarray:
    """Rows trusted for the ambiguity correlations: integrated with a positive variance, partiality
    ≥ cutoff, inside the d range and the valid image ranges."""
    has_prf = table.get_flags(Flags.integrated_prf) & ("intensity.prf.value" in table)
    variance = np.where(has_prf, table["intensity.prf.variance"], table["intensity.sum.variance"]) \
        if "intensity.prf.variance" in table else table["intensity.sum.variance"]
    partiality = table["partiality"] if "partiality" in table else np.ones(len(table))
    keep = (variance > 0) & (partiality >= params.cut_data.partiality_cutoff)
    for k, experiment in enumerate(experiments):
        rows = np.nonzero(table["id"] == k)[0]
        image = np.floor(table["xyzcal.px"][rows, 2]) + 1
        keep[rows] &= _valid_image_mask(experiment, image)
    return keep


def resolve_indexing_ambiguity(experiments: list[Experiment], table: ReflectionTable, params: Params) -> list[tuple[int, str]]:
    """Bring every crystal into one indexing where the lattice allows several (Brehm & Diederichs 2014;
    :mod:`algorithms.scaling.ambiguity`): reindex the reflections (h' = P·h) and the crystal model
    (A' = A·P⁻¹) of the crystals that need it, in place. Returns (crystal, operator) of those."""
    check = params.scaling_options.check_consistent_indexing
    if check is False or len(experiments) < 2:
        return []
    space_group = consensus_space_group(experiments)
    operators = alternative_indexings(average_unit_cell(experiments), space_group)
    if len(operators) == 1:
        if check:
            logger.info("No alternative indexings: the lattice symmetry equals the symmetry of %s", space_group.hm)
        return []
    keep = _ambiguity_observations(experiments, table, params)
    has_prf = table.get_flags(Flags.integrated_prf) & ("intensity.prf.value" in table)
    intensity = np.where(has_prf, table["intensity.prf.value"], table["intensity.sum.value"]) \
        if "intensity.prf.value" in table else table["intensity.sum.value"]
    if "lp" in table:
        intensity = intensity * table["lp"]
    d = np.empty(len(table))
    for k, experiment in enumerate(experiments):
        rows = table["id"] == k
        d[rows] = experiment.crystal.unit_cell.calculate_d_array(table["miller_index"][rows].astype(np.int32))
    keep &= np.isfinite(intensity) & (d > 0)
    if params.cut_data.d_min is not None:
        keep &= d >= params.cut_data.d_min
    if params.cut_data.d_max is not None:
        keep &= d <= params.cut_data.d_max
    result = resolve_ambiguity(table["id"][keep], table["miller_index"][keep], intensity[keep], d[keep], len(experiments),
                               space_group, operators)
    logger.info("Checking consistent indexing: alternative indexings %s", ", ".join(hkl_triplet(p) for p in operators))
    for k, setting, z in result.undecided:
        logger.info("Crystal %d: no significant preference for %s over its own indexing (z = %.1f < 3); kept as indexed",
                    k, hkl_triplet(operators[setting]), z)
    miller = table["miller_index"].astype(np.int64)
    for k, setting in enumerate(result.assignment):
        if setting == 0:
            continue
        operator = operators[setting]
        logger.info("Reindexing crystal %d with %s (mean correlation with the others %.3f, as indexed %.3f)", k,
                    hkl_triplet(operator), result.mean_correlation(k, setting), result.mean_correlation(k, 0))
        rows = table["id"] == k
        miller[rows] = miller[rows] @ operator.T
        experiments[k].crystal = experiments[k].crystal.change_basis(operator)
    table["miller_index"] = miller.astype(table["miller_index"].dtype)
    return result.reindexed()


def prepare_scaling_input(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> PreparedInput:
    """Corrected intensities, exclusion flags, batches and crystal-frame vectors for scaling."""
    table = reflections.copy()
    reindexed = resolve_indexing_ambiguity(experiments, table, params)
    space_group = consensus_space_group(experiments)
    cell = average_unit_cell(experiments)
    table.unset_flags(np.ones(len(table), bool), Flags.bad_for_scaling | Flags.scaled)
    n = len(table)
    dataset = table["id"].astype(np.int64)
    z_obs = table["xyzcal.px"][:, 2]
    if "xyzobs.px.value" in table:  # the observed centroid where integration found one (NaN where it did not)
        z_obs = np.where(np.isfinite(table["xyzobs.px.value"][:, 2]), table["xyzobs.px.value"][:, 2], z_obs)
    offsets = batch_offsets([e.scan.image_range for e in experiments], [e.scan.batch_offset for e in experiments])
    d, phi_deg, z_rel, image = (np.empty(n) for _ in range(4))
    user_excluded = np.zeros(n, bool)
    s1c, s0c = np.empty((n, 3)), np.empty((n, 3))
    for k, (experiment, offset) in enumerate(zip(experiments, offsets)):
        experiment.scan.batch_offset = offset
        experiment.crystal.space_group = space_group
        rows = dataset == k
        scan = experiment.scan
        d[rows] = experiment.crystal.unit_cell.calculate_d_array(table["miller_index"][rows].astype(np.int32))
        phi_deg[rows] = scan.angle_from_array_index(z_obs[rows])
        z_rel[rows] = z_obs[rows] - scan.array_range[0]
        image[rows] = np.floor(z_obs[rows]) + 1
        user_excluded[rows] = ~_valid_image_mask(experiment, image[rows])
        axis = experiment.goniometer.rotation_axis_lab if experiment.goniometer is not None else np.array([1.0, 0, 0])
        s0c[rows], s1c[rows] = crystal_frame_directions(table["s1"][rows], np.radians(phi_deg[rows]), axis,
                                                        experiment.beam.direction)
    table["d"] = d
    table["phi"] = phi_deg
    table["batch"] = (image + np.asarray(offsets)[dataset]).astype(np.int32)
    choice = params.reflection_selection.intensity_choice
    use_prf = "intensity.prf.value" in table and choice != "sum"
    has_prf = table.get_flags(Flags.integrated_prf) & use_prf
    corrected = prepare_intensities(
        table["intensity.sum.value"], table["intensity.sum.variance"],
        table["intensity.prf.value"] if use_prf else None, table["intensity.prf.variance"] if use_prf else None,
        table["lp"] if "lp" in table else np.ones(n), table["qe"] if "qe" in table else None,
        table["partiality"] if "partiality" in table else np.ones(n), prf_valid=has_prf)
    if choice == "profile":  # reflections without a profile intensity are not scaled (variance ≤ 0: excluded)
        corrected.intensity_sum = np.where(has_prf, corrected.intensity_sum, 0.0)
        corrected.variance_sum = np.where(has_prf, corrected.variance_sum, -1.0)
    scans = [DatasetScan(e.scan.oscillation[0], e.scan.oscillation[1], e.scan.image_range) for e in experiments]
    data = ScalingData(dataset=dataset, miller_index=table["miller_index"], intensities=corrected, z_obs=z_rel, d=d,
                       partiality=table["partiality"] if "partiality" in table else np.ones(n), scans=scans,
                       space_group=space_group, unit_cell=cell, s0c=s0c, s1c=s1c, user_excluded=user_excluded,
                       dataset_cells=[e.crystal.unit_cell for e in experiments],
                       conversion=(table["lp"] if "lp" in table else np.ones(n)) / (table["qe"] if "qe" in table else 1.0))
    cut = params.cut_data
    excluded = excluded_for_scaling(data, cut.d_min, cut.d_max, cut.partiality_cutoff, cut.min_isigi)
    table.set_flags(excluded, Flags.excluded_for_scaling)
    table.set_flags(user_excluded, Flags.user_excluded_in_scaling)
    if (excluded | user_excluded).all():
        raise DataError("no reflections left for scaling after the cuts (partiality, I/sigma, d_min/d_max); "
                        "relax cut_data.* or check the integrated data")
    return PreparedInput(experiments, table, data, reindexed)


# ------------------------------------------------------------------------------------ scaling


def scaling_options(params: Params) -> ScalingOptions:
    """The algorithm's options from the step's DIALS-named parameters."""
    physical, cut = params.physical, params.cut_data
    basic = params.weighting.error_model.basic
    delta = params.filtering.deltacchalf
    model = ModelOptions(scale_interval=physical.scale_interval, decay_interval=physical.decay_interval,
                         decay_correction=physical.decay_correction, absorption_correction=physical.absorption_correction,
                         lmax=physical.lmax, decay_restraint=physical.decay_restraint, surface_weight=physical.surface_weight)
    return ScalingOptions(
        d_min=cut.d_min, d_max=cut.d_max, partiality_cutoff=cut.partiality_cutoff, min_isigi=cut.min_isigi, model=model,
        min_relative_inverse_scale=cut.min_relative_inverse_scale,
        fix_initial=physical.fix_initial, intensity_choice=params.reflection_selection.intensity_choice,
        error_model=params.weighting.error_model.error_model, min_Ih=basic.min_Ih, error_model_n_bins=basic.n_bins,
        min_Ih_in_counts=basic.min_Ih_in_counts,
        outlier_rejection=params.scaling_options.outlier_rejection, outlier_zmax=params.scaling_options.outlier_zmax,
        full_matrix=params.scaling_options.full_matrix, filtering_method=params.filtering.method,
        max_cycles=delta.max_cycles, max_percent_removed=delta.max_percent_removed,
        min_completeness=delta.min_completeness, mode=delta.mode, group_size=delta.group_size,
        stdcutoff=delta.stdcutoff, cutoff_rule="robust" if delta.robust_cutoff else "mean_sd", image_group_removal="edges" if delta.dials_end_trimming else "anywhere",
        remove_non_isomorphous=params.filtering.nonisomorphism.remove,
        intensity_ratio_filter=delta.intensity_ratio_filter and delta.robust_cutoff and not delta.dials_end_trimming)


def _parameter_block(values: np.ndarray, esds: np.ndarray, null_value: float) -> dict:
    return {"n_parameters": int(len(values)), "parameters": [float(v) for v in values],
            "null_parameter_value": null_value, "est_standard_devs": [float(v) for v in esds]}


def physical_model_dict(experiment: Experiment, model: DatasetModelResult, result: ScalingResult,
                        valid_ranges: list[tuple[int, int]], options: ScalingOptions) -> dict:
    """The experiment's scaling_model as DIALS writes a physical model in scaled.expt."""
    scan = experiment.scan
    width = scan.oscillation[1]
    corrections = ["scale"] + (["decay"] if model.decay_rot_interval_deg is not None else []) \
        + (["absorption"] if len(model.absorption) else [])
    first = min(a for a, _ in valid_ranges) if valid_ranges else scan.image_range[0]
    last = max(b for _, b in valid_ranges) if valid_ranges else scan.image_range[1]
    valid_osc_range = [float(scan.angle_from_image_index(first)), float(scan.angle_from_image_index(last + 1))]
    configuration = {"corrections": corrections, "valid_osc_range": valid_osc_range,
                     "s_norm_fac": 0.999 * width / model.scale_rot_interval_deg,
                     "scale_rot_interval": model.scale_rot_interval_deg}
    document = {"__id__": "physical", "scale": _parameter_block(model.scale, model.scale_esd, 1.0)}
    if "decay" in corrections:
        document["decay"] = _parameter_block(model.decay, model.decay_esd, 0.0)
        configuration.update(d_norm_fac=0.999 * width / model.decay_rot_interval_deg,
                             decay_rot_interval=model.decay_rot_interval_deg)
    if "absorption" in corrections:
        document["absorption"] = _parameter_block(model.absorption, model.absorption_esd, 0.0)
        configuration.update(lmax=options.model.lmax, abs_surface_weight=options.model.surface_weight)
    configuration["valid_image_range"] = [int(first), int(last)]
    if options.error_model == "basic":
        configuration.update(error_model_type="BasicErrorModel",
                             error_model_parameters=[float(result.error_model.a), float(result.error_model.b)])
    configuration["Imid"] = float(result.imid)
    document["configuration_parameters"] = configuration
    return document


def _smoother_curve(values: np.ndarray, rot_interval_deg: float, scan) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed term at the centre of every image (for the report)."""
    axis = SmootherAxis(n_values=len(values), rot_interval_deg=rot_interval_deg,
                        norm_factor=0.999 * scan.oscillation[1] / rot_interval_deg)
    z = np.arange(scan.num_images) + 0.5
    columns, weights = axis.weights(z)
    return np.arange(scan.image_range[0], scan.image_range[1] + 1), np.sum(weights * values[columns], axis=1)


def normalised_deviations(group: np.ndarray, intensity: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """δ = sqrt((n−1)/n)·(I − Ī_h)/σ for observations in groups with n ≥ 2 (scaled I and σ)."""
    n_groups = int(group.max()) + 1 if len(group) else 0
    merged = merge_intensities(group, intensity, variance, n_groups)
    n = merged.multiplicity[group].astype(float)
    keep = n >= 2
    return np.sqrt((n[keep] - 1) / n[keep]) * (intensity[keep] - merged.intensity[group][keep]) / np.sqrt(variance[keep])


def r_merge_by_image(group: np.ndarray, image: np.ndarray, intensity: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rmerge of the observations of each image against their merged means (groups with n ≥ 2)."""
    n_groups = int(group.max()) + 1 if len(group) else 0
    merged = merge_intensities(group, intensity, variance, n_groups)
    multi = merged.multiplicity[group] >= 2
    images, index = np.unique(image[multi], return_inverse=True)
    deviation = np.bincount(index, np.abs(intensity - merged.intensity[group])[multi], len(images))
    total = np.bincount(index, intensity[multi], len(images))
    with np.errstate(invalid="ignore", divide="ignore"):
        return images, np.where(total != 0, deviation / total, np.nan)


@dataclass
class ScaledOutput:
    experiments: list[Experiment]
    reflections: ReflectionTable
    statistics: MergingStatistics | None
    report: dict


def apply_result(prepared: PreparedInput, result: ScalingResult, options: ScalingOptions, n_bins: int) -> ScaledOutput:
    """scaled.expt/scaled.refl contents from the scaling result; removed crystals are dropped."""
    table = prepared.reflections
    table["inverse_scale_factor"] = result.inverse_scale_factor
    table["inverse_scale_factor_variance"] = result.inverse_scale_factor_variance
    table["intensity.scale.value"] = result.intensity
    table["intensity.scale.variance"] = result.variance
    table.unset_flags(np.ones(len(table), bool), Flags.bad_for_scaling | Flags.scaled)
    table.set_flags(result.excluded_for_scaling, Flags.excluded_for_scaling)
    # Every reflection on a removed image is user-excluded, also those already excluded for other reasons.
    outside = np.zeros(len(table), bool)
    for k, (experiment, ranges) in enumerate(zip(prepared.experiments, result.valid_image_ranges)):
        rows = table["id"] == k
        image = table["batch"][rows] - experiment.scan.batch_offset
        outside[rows] = ~np.any([(image >= a) & (image <= b) for a, b in ranges], axis=0) if ranges else True
    table.set_flags(result.user_excluded | outside, Flags.user_excluded_in_scaling)
    table.set_flags(result.outlier, Flags.outlier_in_scaling)
    table.set_flags(result.scaled, Flags.scaled)
    removed = set(result.filtering.removed_datasets) if result.filtering else set()
    kept = [k for k in range(len(prepared.experiments)) if k not in removed]
    experiments, models = [], []
    for k in kept:
        experiment = prepared.experiments[k]
        ranges = [tuple(r) for r in result.valid_image_ranges[k]]
        experiment.scaling_model = physical_model_dict(experiment, result.models[k], result, ranges, options)
        experiment.scan.valid_image_ranges = {experiment.identifier: [list(r) for r in ranges]}
        experiments.append(experiment)
        scan = experiment.scan
        image, scale_curve = _smoother_curve(result.models[k].scale, result.models[k].scale_rot_interval_deg, scan)
        b_curve = (_smoother_curve(result.models[k].decay, result.models[k].decay_rot_interval_deg, scan)[1]
                   if result.models[k].decay_rot_interval_deg is not None else None)
        models.append({"label": f"crystal {k}", "image": image, "scale": scale_curve, "b_factor": b_curve})
    old_ids = table["id"].astype(np.int64)
    new_id = np.full(len(prepared.experiments), -1)
    new_id[kept] = np.arange(len(kept))
    table = table.select(new_id[old_ids] >= 0)
    table["id"] = new_id[table["id"].astype(np.int64)].astype(np.int32)
    table.experiment_identifiers = {i: e.identifier for i, e in enumerate(experiments)}
    for removed_index in sorted(removed):
        logger.info("Removing experiment %d (%s): non-isomorphous or ΔCC½ outlier", removed_index,
                    prepared.experiments[removed_index].identifier)

    scaled = table.get_flags(Flags.scaled)
    statistics = None
    report: dict = {"models": models}
    if scaled.sum() > 1:
        rows = table.select(scaled)
        g = rows["inverse_scale_factor"]
        intensity, variance = rows["intensity.scale.value"] / g, rows["intensity.scale.variance"] / g**2
        space_group = prepared.data.space_group
        mapping = map_to_asu(rows["miller_index"], space_group)
        statistics = merging_statistics(rows["miller_index"], intensity, variance, prepared.data.unit_cell, space_group,
                                        n_bins=n_bins, seed=options.seed, mapping=mapping)
        deviations = np.sort(normalised_deviations(mapping.group, intensity, variance))
        quantiles = normal_quantiles(len(deviations))
        shown = np.unique(np.linspace(0, len(deviations) - 1, min(len(deviations), REPORT_MAX_POINTS)).astype(int))
        report["error_model"] = {"a": result.error_model.a, "b": result.error_model.b,
                                 "deviations": deviations[shown], "normal_quantiles": quantiles[shown]}
        for k, model in enumerate(models):
            mine = rows["id"] == k
            model["r_merge_image"], model["r_merge"] = r_merge_by_image(
                mapping.group[mine], rows["batch"][mine] - experiments[k].scan.batch_offset, intensity[mine], variance[mine])
    if result.filtering:
        report["filtering"] = filtering_report(result.filtering, options.mode)
    return ScaledOutput(experiments, table, statistics, report)


def filtering_report(filtering: FilteringResult, mode: str) -> dict:
    """ΔCC½ results as plain data (for the JSON file and the HTML report)."""
    first = filtering.cycles[0]  # the first cycle sees every group, the bad ones included
    return {
        "mode": mode, "termination_reason": filtering.termination_reason,
        "delta_cc_half": [float(v) for v in first.delta_cc_half], "cutoff": float(first.cutoff),
        "cycles": [{"cycle": c.cycle, "n_removed": c.n_removed, "cumulative_percent_removed": c.cumulative_percent_removed,
                    "cc_half": c.cc_half, "completeness": c.completeness, "mean_delta_cc_half": c.mean_delta_cc_half,
                    "sd_delta_cc_half": c.sd_delta_cc_half, "cutoff": c.cutoff,
                    "removed_image_ranges": [list(r) for r in c.removed_ranges],
                    "removed_datasets": list(c.removed_datasets),
                    "delta_cc_half_values": [[int(k), int(a), int(b), float(v)] for k, a, b, v in
                                             zip(c.group_dataset, c.group_first_image, c.group_last_image, c.delta_cc_half)],
                    "removed_by_intensity_ratio": [list(r) for r in c.removed_by_ratio],
                    "intensity_ratio": None if c.intensity_ratio is None else
                    [None if not np.isfinite(v) else float(v) for v in c.intensity_ratio],
                    "intensity_ratio_limits": None if c.intensity_ratio_limits is None else list(c.intensity_ratio_limits)}
                   for c in filtering.cycles],
        "removed_image_ranges": [[f"crystal {k}", a, b] for k, a, b in filtering.removed_ranges],
        "removed_datasets": [f"crystal {k}" for k in filtering.removed_datasets],
        "n_initial_reflections": filtering.n_initial_reflections,
        "n_removed_reflections": filtering.n_removed_reflections,
    }


def format_filtering_log(filtering: FilteringResult, mode: str) -> str:
    """ΔCC½ per group (sorted, ×100), mean/SD/cutoff, removals and the cycle summary table."""
    lines = []
    label = "Dataset" if mode == "dataset" else "Image group"
    for c in filtering.cycles:
        lines.append(f"\nCycle {c.cycle} of filtering: ΔCC½ analysis of {len(c.delta_cc_half)} groups")
        for i in np.argsort(c.delta_cc_half, kind="stable"):
            where = (f"{int(c.group_dataset[i])}" if mode == "dataset" else
                     f"{i} (experiment {int(c.group_dataset[i])}, images {int(c.group_first_image[i])}-{int(c.group_last_image[i])})")
            lines.append(f"{label}: {where}, ΔCC½: {100 * c.delta_cc_half[i]:.4f}")
        lines += [f"mean delta_cc_half {100 * c.mean_delta_cc_half:.4f}", f"stddev delta_cc_half {100 * c.sd_delta_cc_half:.4f}",
                  f"cutoff value: {100 * c.cutoff:.4f}"]
        for k, a, b in c.below_cutoff_kept:
            lines.append(f"Image range ({a}, {b}) of experiment {k} is below the cutoff, but not at the edge of a sweep")
        if c.intensity_ratio_limits is not None:
            lines.append(f"intensity ratio to the model: cutoff {c.intensity_ratio_limits[0]:.3f} "
                         f"(excess cutoff {c.intensity_ratio_limits[1]:.3f}, if enabled)")
        by_ratio = {(k, a, b): r for k, a, b, r in c.removed_by_ratio}
        lines += [f"Removing image range ({a}, {b}) from experiment {k}"
                  + (f": intensities {100 * by_ratio[(k, a, b)]:.0f}% of the model" if (k, a, b) in by_ratio else "")
                  for k, a, b in c.removed_ranges]
        lines += [f"Removing experiment {k} (whole crystal)" for k in c.removed_datasets]
        lines.append(f"Cycle {c.cycle} of filtering, n_reflections removed this cycle: {c.n_removed}")
    lines += ["", f"Filtering finished: {filtering.termination_reason}", "",
              "Summary of data removed:",
              f"{'Cycle':>6} {'# removed':>10} {'% cumulative':>13} {'CC½':>8} {'Completeness':>13}"]
    lines += [f"{c.cycle:>6} {c.n_removed:>10} {c.cumulative_percent_removed:>13.2f} {c.cc_half:>8.4f} {c.completeness:>13.1f}"
              for c in filtering.cycles]
    return "\n".join(lines)


def format_scaling_summary(result: ScalingResult) -> str:
    em = result.error_model
    lines = []
    if result.combination_table:
        lines += ["Combining intensities:", f"{'Combination':>20} {'CC½':>8} {'Rmeas':>8}"]
        lines += [f"{label:>20} {cc:8.5f} {rmeas:8.5f}" for label, cc, rmeas in result.combination_table]
        lines.append(f"Combined intensities with Imid = {result.imid:.2f} determined to be best for scaling")
    lines += ["", "Error model details:", f"  Parameters: a = {em.a:.5f}, b = {em.b:.5f}",
              "  σ'² = a²·(σ² + (b·I)²)", f"  ISa = {em.isa:.2f}"]
    if em.message:
        lines.append(f"  {em.message}")
    s = result.summary()
    if s["n_low_scale"]:
        lines += ["", f"{s['n_low_scale']} observations excluded for scaling: inverse scale below "
                      "min_relative_inverse_scale × the median of their crystal"]
    lines += ["", f"{s['n_scaled']} reflections scaled, {s['n_outliers']} outliers, {s['n_excluded']} excluded "
                  f"for scaling, {s['n_user_excluded']} excluded by image ranges"]
    return "\n".join(lines)


def run(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> StepResult:
    """Scale the integrated reflections of all ``experiments`` (one table, ids 0…n−1) together."""
    if not experiments:
        raise DataError("no experiments to scale")
    prepared = prepare_scaling_input([e.copy() for e in experiments], reflections, params)
    options = scaling_options(params)
    result = scale_and_filter(prepared.data, options, with_merging_statistics=False)
    output = apply_result(prepared, result, options, params.output.merging.nbins)
    summary = {"result": result, "merging_statistics": output.statistics, "report": output.report,
               "scaling_summary": format_scaling_summary(result),
               "filtering_log": format_filtering_log(result.filtering, options.mode) if result.filtering else None,
               "reindexed": [[k, op] for k, op in prepared.reindexed],
               **result.summary()}
    return StepResult(output.experiments, output.reflections, summary)


def _read_pairs(files: list[str]) -> tuple[list[list[Experiment]], list[ReflectionTable], list[str]]:
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.refl import read_reflections

    expts = [f for f in files if str(f).endswith(".expt")]
    refls = [f for f in files if str(f).endswith(".refl")]
    others = [f for f in files if not str(f).endswith((".expt", ".refl"))]
    if others:
        raise InputFileError(f"{others[0]}: not an .expt or .refl file (nor a key=value parameter)")
    if not expts or len(expts) != len(refls):
        raise InputFileError(f"give integrated .expt and .refl files in pairs; got {len(expts)} .expt and {len(refls)} .refl")
    for path in expts + refls:
        if not Path(path).is_file():
            raise InputFileError(f"{path}: file not found; check the path")
    return [read_experiments(p) for p in expts], [read_reflections(p) for p in refls], [str(p) for p in refls]


def write_outputs(result: StepResult, params: Params, folder: str | Path = ".") -> None:
    """Write scaled.expt/refl, the filtering JSON and scaled.html into ``folder`` (atomically) and
    log the tables dials.scale ends with."""
    from algorithms.merging import format_merging_statistics_table
    from pipeline.formats.expt import write_bytes_atomically, write_experiments
    from pipeline.formats.refl import write_reflections
    from pipeline.reports.scaling_report import scaling_report_html

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = result.summary
    if summary["filtering_log"]:
        logger.info(summary["filtering_log"])
    logger.info(summary["scaling_summary"])
    stats = summary["merging_statistics"]
    write_experiments(result.experiments, folder / params.output.experiments)
    write_reflections(result.reflections, folder / params.output.reflections)
    logger.info("Saved %d experiments to %s and %d reflections to %s", len(result.experiments),
                folder / params.output.experiments, len(result.reflections), folder / params.output.reflections)
    if summary["report"].get("filtering"):
        path = folder / params.filtering.output.scale_and_filter_results
        write_bytes_atomically(path, (json.dumps(summary["report"]["filtering"], indent=1) + "\n").encode())
        logger.info("Saved filtering results to %s", path)
    if params.output.html and stats is not None:
        write_bytes_atomically(folder / params.output.html, scaling_report_html(stats, summary["report"]).encode())
        logger.info("Saved HTML report to %s", folder / params.output.html)
    if stats is not None:  # the log ends with the merging statistics, as dials.scale.log does
        logger.info("\n%s", format_merging_statistics_table(stats))


def cli(params: Params, files: list[str]) -> None:
    """Read the integrated pairs, scale, write scaled.expt/refl, scaled.html and the filtering JSON."""
    experiment_lists, tables, sources = _read_pairs(files)
    experiments, table = combine_inputs(experiment_lists, tables, sources)
    logger.info("Scaling %d experiments, %d integrated reflections", len(experiments), len(table))
    write_outputs(run(experiments, table, params), params)
