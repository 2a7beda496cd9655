"""``ewald export``: scaled (or integrated) reflections → unmerged MTZ, as ``dials.export``.

Rows kept (DIALS' ``filter_reflection_table``): for scaled data, not ``bad_for_scaling`` and
inverse scale factor g > 0, written as I = intensity.scale.value/g, σ² = variance/g²; for integrated
data, rows integrated by every requested method, LP/QE-corrected (conv = lp/qe; summation values also
divided by the partiality). Then partials sharing a ``partial_id`` are combined, and rows with
partiality < ``partiality_threshold``, I/σ < ``min_isigi`` or d < ``d_min`` are dropped. Indices are
written in the ASU with CCP4's M/ISYM (column "M_ISYM" as DIALS labels it), one batch header per image
(see :mod:`pipeline.formats.mtz`).
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Literal

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.merging import map_to_asu
from algorithms.reflection_table import Flags, ReflectionTable
from pipeline.formats.mtz import MtzColumn, MtzNames, batch_headers, batch_offsets, build_mtz
from pipeline.logging_setup import ewald_version
from pipeline.params import param, scope
from pipeline.steps import StepResult

NAME = "export"
HELP = "Export scaled or integrated reflections to an unmerged MTZ file (scaled.mtz), as dials.export."

logger = logging.getLogger(__name__)

IntensityChoice = Literal["auto", "profile", "sum", "scale"]


@dataclass
class MtzOptions:
    hklout: str | None = param(None, "Output MTZ file; None = scaled.mtz for scaled data, integrated.mtz otherwise.")
    combine_partials: bool = param(True, "Sum the parts of reflections split over several rows (same partial_id).")
    partiality_threshold: float = param(0.4, "Leave out reflections whose (combined) partiality is below this.")
    min_isigi: float = param(-5.0, "Leave out reflections with I/σ below this.")
    d_min: float | None = param(None, "High-resolution limit (Å); None = all data.")
    crystal_name: str = param("XTAL", "Crystal name in the MTZ file.")
    project_name: str = param("DIALS", "Project name in the MTZ file.")
    best_unit_cell: tuple[float, float, float, float, float, float] | None = param(
        None, "Unit cell for the MTZ header and d; None = the average cell of the experiments.")


@dataclass
class Params:
    format: Literal["mtz"] = param("mtz", "Output format.")
    intensity: list[IntensityChoice] = param(["auto"], "Intensities to export: auto = scale for scaled data, "
                                                         "profile and sum otherwise.")
    mtz: MtzOptions = scope(MtzOptions, "MTZ output.")


# ------------------------------------------------------------------------------ shared selection


def is_scaled(reflections: ReflectionTable) -> bool:
    return "intensity.scale.value" in reflections and "inverse_scale_factor" in reflections


def resolve_intensity_choice(choice: list[str], reflections: ReflectionTable) -> list[str]:
    """'auto' → ['scale'] for scaled data, else profile and sum (whichever exist)."""
    if "auto" not in choice:
        wanted = list(dict.fromkeys(choice))
    elif is_scaled(reflections):
        wanted = ["scale"]
    else:
        wanted = [k for k, column in (("sum", "intensity.sum.value"), ("profile", "intensity.prf.value"))
                  if column in reflections]
    missing = {"scale": "intensity.scale.value", "profile": "intensity.prf.value", "sum": "intensity.sum.value"}
    for kind in wanted:
        if missing[kind] not in reflections:
            raise DataError(f"intensity={kind}: the reflections have no {missing[kind]} column; "
                            f"{'run ewald scale first' if kind == 'scale' else 'choose another intensity'}")
    if not wanted:
        raise DataError("the reflections have no intensities (no intensity.sum/prf/scale columns); "
                        "give integrated or scaled reflections")
    return wanted


def average_unit_cell(experiments: list[Experiment]) -> gemmi.UnitCell:
    """Mean cell parameters of the experiments' (static) crystals."""
    parameters = np.array([e.crystal.unit_cell.parameters for e in experiments])
    return gemmi.UnitCell(*parameters.mean(axis=0))


def common_space_group(experiments: list[Experiment]) -> gemmi.SpaceGroup:
    names = {e.crystal.space_group.hm for e in experiments}
    if len(names) != 1:
        raise DataError(f"the experiments are in different space groups ({', '.join(sorted(names))}); "
                        "scale them together first (ewald scale) or reindex them to one")
    return experiments[0].crystal.space_group


def combine_partial_rows(table: ReflectionTable) -> ReflectionTable:
    """Sum intensities, variances and partialities of rows sharing (id, partial_id).

    The other columns are taken from each group's row of largest partiality."""
    if "partial_id" not in table or len(table) == 0:
        return table
    keys = np.stack([table["id"].astype(np.int64), table["partial_id"].astype(np.int64)], axis=1)
    _, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    group = group.ravel()
    if len(first) == len(table):
        return table
    n = len(first)
    order = np.lexsort((-table["partiality"], group))
    representative = order[np.concatenate([[0], np.nonzero(np.diff(group[order]))[0] + 1])]
    out = table.select(representative)
    summed = [c for c in table.keys() if c.startswith("intensity.") and c.endswith((".value", ".variance"))]
    for column in summed + ["partiality"]:
        out[column] = np.bincount(group, table[column], n)[group[representative]]
    return out


@dataclass
class ExportIntensities:
    """Rows chosen for output and their intensities by kind ("scale", "sum", "profile")."""

    table: ReflectionTable
    intensity: dict[str, np.ndarray]
    variance: dict[str, np.ndarray]


def select_intensities(reflections: ReflectionTable, kinds: list[str], unit_cell: gemmi.UnitCell,
                       options: MtzOptions) -> ExportIntensities:
    """Filter rows and compute the intensities to write, as dials.export does."""
    table = reflections
    keep = np.any(table["miller_index"] != 0, axis=1)
    if "scale" in kinds:
        keep &= ~table.get_flags(Flags.bad_for_scaling, all=False) & (table["inverse_scale_factor"] > 0)
        keep &= table["intensity.scale.variance"] > 0
    if "sum" in kinds:
        keep &= table.get_flags(Flags.integrated_sum) & (table["intensity.sum.variance"] > 0)
    if "profile" in kinds:
        keep &= table.get_flags(Flags.integrated_prf) & (table["intensity.prf.variance"] > 0)
    table = table.select(keep)
    if options.combine_partials:
        table = combine_partial_rows(table)
    partiality = table["partiality"] if "partiality" in table else np.ones(len(table))
    conv = (table["lp"] if "lp" in table else np.ones(len(table))) / (table["qe"] if "qe" in table else 1.0)
    intensity, variance = {}, {}
    if "scale" in kinds:
        g = table["inverse_scale_factor"]
        intensity["scale"] = table["intensity.scale.value"] / g
        variance["scale"] = table["intensity.scale.variance"] / g**2
    if "sum" in kinds:
        p = np.where(partiality > 0, partiality, 1.0)
        intensity["sum"] = table["intensity.sum.value"] * conv / p
        variance["sum"] = table["intensity.sum.variance"] * conv**2 / p**2
    if "profile" in kinds:
        intensity["profile"] = table["intensity.prf.value"] * conv
        variance["profile"] = table["intensity.prf.variance"] * conv**2
    keep = partiality >= options.partiality_threshold
    for kind in kinds:
        keep &= intensity[kind] / np.sqrt(variance[kind]) >= options.min_isigi
    if options.d_min is not None:
        keep &= np.asarray(unit_cell.calculate_d_array(table["miller_index"].astype(np.int32))) >= options.d_min
    return ExportIntensities(table.select(keep), {k: v[keep] for k, v in intensity.items()},
                             {k: v[keep] for k, v in variance.items()})


def crystal_symmetry(experiments: list[Experiment], best_unit_cell) -> tuple[gemmi.SpaceGroup, gemmi.UnitCell]:
    space_group = common_space_group(experiments)
    cell = gemmi.UnitCell(*best_unit_cell) if best_unit_cell else average_unit_cell(experiments)
    return space_group, cell


def mean_wavelength(experiments: list[Experiment]) -> float:
    wavelengths = np.array([e.beam.wavelength for e in experiments])
    if np.ptp(wavelengths) > 1e-4 * wavelengths.mean():
        logger.warning("Experiments have different wavelengths (%s); writing their mean",
                       ", ".join(f"{w:.5f}" for w in np.unique(wavelengths)))
    return float(wavelengths.mean())


def experiment_index_of_rows(experiments: list[Experiment], table: ReflectionTable) -> np.ndarray:
    """Position in ``experiments`` of each row's experiment (via the identifiers when present)."""
    ids = table["id"].astype(np.int64)
    if not table.experiment_identifiers:
        return ids
    position = {e.identifier: i for i, e in enumerate(experiments)}
    lookup = np.full(max(table.experiment_identifiers) + 1, -1, dtype=np.int64)
    for table_id, identifier in table.experiment_identifiers.items():
        lookup[table_id] = position.get(identifier, -1)
    index = lookup[ids]
    if np.any(index < 0):
        raise DataError("some reflections belong to experiments that are not in the experiment file; "
                        "give the .expt and .refl written together")
    return index


def experiment_batch_offsets(experiments: list[Experiment]) -> list[int]:
    return batch_offsets([e.scan.image_range for e in experiments], [e.scan.batch_offset for e in experiments])


# ------------------------------------------------------------------------------------- step


def unmerged_mtz(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> tuple[gemmi.Mtz, dict]:
    """The unmerged MTZ object and a summary (rows written, intensity kinds, batches)."""
    kinds = resolve_intensity_choice(params.intensity, reflections)
    space_group, cell = crystal_symmetry(experiments, params.mtz.best_unit_cell)
    chosen = select_intensities(reflections, kinds, cell, params.mtz)
    table = chosen.table
    if len(table) == 0:
        raise DataError("no reflections left to export after filtering (bad_for_scaling, partiality, "
                        "I/sigma and d_min); check the input reflections")
    offsets = experiment_batch_offsets(experiments)
    experiment_of_row = experiment_index_of_rows(experiments, table)
    z_obs = (table["xyzobs.px.value"] if "xyzobs.px.value" in table else table["xyzcal.px"])[:, 2]
    batch = np.floor(z_obs).astype(np.int64) + 1 + np.asarray(offsets)[experiment_of_row]
    z_cal = table["xyzcal.px"][:, 2]
    rotation_deg = np.empty(len(table))
    for index, experiment in enumerate(experiments):
        rows = experiment_of_row == index
        rotation_deg[rows] = experiment.scan.angle_from_array_index(z_cal[rows])
    mapping = map_to_asu(table["miller_index"], space_group)
    xy = table["xyzobs.px.value"][:, :2] if "xyzobs.px.value" in table else table["xyzcal.px"][:, :2]
    ones = np.ones(len(table))
    columns = [MtzColumn("M_ISYM", "Y", mapping.isym), MtzColumn("BATCH", "B", batch)]
    if "scale" in kinds:
        columns += [MtzColumn("I", "J", chosen.intensity["scale"]), MtzColumn("SIGI", "Q", np.sqrt(chosen.variance["scale"])),
                    MtzColumn("SCALEUSED", "R", table["inverse_scale_factor"]),
                    MtzColumn("SIGSCALEUSED", "R", np.sqrt(np.maximum(table.get("inverse_scale_factor_variance", 0 * ones), 0)))]
    if "sum" in kinds:
        columns += [MtzColumn("I", "J", chosen.intensity["sum"]), MtzColumn("SIGI", "Q", np.sqrt(chosen.variance["sum"]))]
    if "profile" in kinds:
        columns += [MtzColumn("IPR", "J", chosen.intensity["profile"]),
                    MtzColumn("SIGIPR", "Q", np.sqrt(chosen.variance["profile"]))]
    if "background.sum.value" in table:
        columns += [MtzColumn("BG", "R", table["background.sum.value"]),
                    MtzColumn("SIGBG", "R", np.sqrt(np.maximum(table["background.sum.variance"], 0)))]
    columns += [MtzColumn("FRACTIONCALC", "R", table["partiality"] if "partiality" in table else ones),
                MtzColumn("XDET", "R", xy[:, 0]), MtzColumn("YDET", "R", xy[:, 1]),
                MtzColumn("ROT", "R", rotation_deg),
                MtzColumn("LP", "R", table["lp"] if "lp" in table else ones),
                MtzColumn("QE", "R", table["qe"] if "qe" in table else ones)]
    names = MtzNames(params.mtz.project_name, params.mtz.crystal_name, "FROMDIALS")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    mtz = build_mtz(space_group, cell, names, mean_wavelength(experiments), mapping.asu_index, columns,
                    "From ewald export", [f"From ewald {ewald_version()}, run on {stamp}"])
    dataset_id = mtz.datasets[-1].id
    for experiment, offset in zip(experiments, offsets):
        for header in batch_headers(experiment, offset, dataset_id):
            mtz.batches.append(header)
    mtz.sort(5)
    summary = {"n_reflections": len(table), "intensity": kinds, "batch_offsets": offsets,
               "n_batches": len(mtz.batches), "space_group": space_group.hm, "unit_cell": list(cell.parameters)}
    return mtz, summary


def run(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> StepResult:
    """Build the unmerged MTZ (in ``summary['mtz']``); experiments and reflections pass through."""
    if not experiments:
        raise DataError("no experiments to export")
    mtz, summary = unmerged_mtz(experiments, reflections, params)
    return StepResult(experiments, reflections, {**summary, "mtz": mtz})


def write_outputs(result: StepResult, params: Params, folder: str | Path = ".") -> Path:
    """Write the MTZ that ``run`` built into ``folder`` (atomically); returns its path."""
    from pipeline.formats.mtz import write_mtz

    summary = result.summary
    hklout = Path(folder) / (params.mtz.hklout or ("scaled.mtz" if summary["intensity"] == ["scale"] else "integrated.mtz"))
    logger.info("Exporting %d reflections (%s intensities) in %s with %d batches (offsets %s)",
                summary["n_reflections"], "+".join(summary["intensity"]), summary["space_group"],
                summary["n_batches"], ", ".join(map(str, summary["batch_offsets"])))
    write_mtz(summary["mtz"], hklout)
    logger.info("Saved unmerged MTZ to %s", hklout)
    return hklout


def cli(params: Params, files: list[str]) -> None:
    """Read scaled (or integrated) .expt/.refl and write the unmerged MTZ."""
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.refl import read_reflections
    from pipeline.inputs import experiments_and_reflections_from

    experiments_path, reflections_path = experiments_and_reflections_from(files, NAME)
    write_outputs(run(read_experiments(experiments_path), read_reflections(reflections_path), params), params)
