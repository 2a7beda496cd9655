"""``ewald merge``: scaled reflections → merged MTZ with intensities and amplitudes, as ``dials.merge``.

Rows are chosen as ``ewald export`` chooses them for scaled data (I/g, σ²/g²). Symmetry equivalents
are merged with 1/σ² weights (σ = 1/√Σw) with and without Bijvoet mates kept apart; the merging
statistics are logged as DIALS prints them; amplitudes come from French & Wilson (1978) applied to
I(+) and I(−) (or IMEAN without ``anomalous``), F/SIGF merged from F(+) and F(−) as dials.merge does.
Columns: H K L IMEAN SIGIMEAN I(+) SIGI(+) I(-) SIGI(-) N(+) N(-) F SIGF F(+) SIGF(+) F(-) SIGF(-);
NaN marks a missing value.
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path
from dataclasses import dataclass

import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.merging import (format_merging_statistics_table, french_wilson, map_to_asu, merge_anomalous,
                                merge_bijvoet_amplitudes, merge_intensities, merging_statistics)
from algorithms.reflection_table import ReflectionTable
from pipeline.formats.mtz import MtzColumn, MtzNames, build_mtz
from pipeline.logging_setup import ewald_version
from pipeline.params import param, scope
from pipeline.steps import StepResult
from pipeline.steps.export import MtzOptions, crystal_symmetry, is_scaled, mean_wavelength, select_intensities

NAME = "merge"
HELP = "Merge scaled reflections into merged.mtz (intensities and French-Wilson amplitudes), as dials.merge."

logger = logging.getLogger(__name__)


@dataclass
class MergingOptions:
    n_bins: int = param(20, "Resolution bins for the merging statistics.")


@dataclass
class Output:
    mtz: str = param("merged.mtz", "Merged MTZ file.")
    html: str | None = param("merge.html", "HTML report; None = none.")
    crystal_name: str = param("XTAL", "Crystal name in the MTZ file.")
    project_name: str = param("AUTOMATIC", "Project name in the MTZ file.")
    dataset_name: str = param("NATIVE", "Dataset name in the MTZ file.")


@dataclass
class Params:
    anomalous: bool = param(True, "Also write I(+)/I(-) (and F(+)/F(-)) with Bijvoet mates kept apart.")
    truncate: bool = param(True, "Compute amplitudes F by French & Wilson.")
    d_min: float | None = param(None, "High-resolution limit (Å); None = all data.")
    d_max: float | None = param(None, "Low-resolution limit (Å); None = all data.")
    combine_partials: bool = param(True, "Sum the parts of reflections split over several rows (same partial_id).")
    partiality_threshold: float = param(0.4, "Leave out reflections whose partiality is below this.")
    best_unit_cell: tuple[float, float, float, float, float, float] | None = param(
        None, "Unit cell for the output and d; None = the average cell of the experiments.")
    merging: MergingOptions = scope(MergingOptions, "Merging statistics.")
    output: Output = scope(Output, "Output files and names.")


def merged_data(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> dict:
    """Merged columns, the merging statistics and the symmetry, as a dict (no files)."""
    if not is_scaled(reflections):
        raise DataError("the reflections are not scaled (no intensity.scale.value / inverse_scale_factor); "
                        "run ewald scale first")
    space_group, cell = crystal_symmetry(experiments, params.best_unit_cell)
    options = MtzOptions(combine_partials=params.combine_partials, partiality_threshold=params.partiality_threshold,
                         min_isigi=-np.inf, d_min=params.d_min)
    chosen = select_intensities(reflections, ["scale"], cell, options)
    table, intensity, variance = chosen.table, chosen.intensity["scale"], chosen.variance["scale"]
    if params.d_max is not None:
        keep = np.asarray(cell.calculate_d_array(table["miller_index"].astype(np.int32))) <= params.d_max
        table, intensity, variance = table.select(keep), intensity[keep], variance[keep]
    if len(table) == 0:
        raise DataError("no scaled reflections left to merge (all bad for scaling or outside d_min/d_max)")
    mapping = map_to_asu(table["miller_index"], space_group)
    statistics = merging_statistics(table["miller_index"], intensity, variance, cell, space_group,
                                    n_bins=params.merging.n_bins, mapping=mapping)
    n_unique = len(mapping.unique_asu_index)
    merged = merge_intensities(mapping.group, intensity, variance, n_unique)
    anomalous = merge_anomalous(mapping, intensity, variance)
    observed = merged.observed
    hkl = mapping.unique_asu_index[observed]
    columns = [MtzColumn("IMEAN", "J", merged.intensity[observed]), MtzColumn("SIGIMEAN", "Q", merged.sigma[observed])]
    plus, minus = anomalous.plus, anomalous.minus
    if params.anomalous:
        columns += [MtzColumn("I(+)", "K", plus.intensity[observed]), MtzColumn("SIGI(+)", "M", plus.sigma[observed]),
                    MtzColumn("I(-)", "K", minus.intensity[observed]), MtzColumn("SIGI(-)", "M", minus.sigma[observed]),
                    MtzColumn("N(+)", "I", plus.multiplicity[observed]), MtzColumn("N(-)", "I", minus.multiplicity[observed])]
    if params.truncate:
        columns += _amplitude_columns(hkl, merged, plus, minus, observed, cell, space_group, params.anomalous)
    return {"miller_index": hkl, "columns": columns, "statistics": statistics, "space_group": space_group,
            "unit_cell": cell, "n_observations": len(table), "wavelength": mean_wavelength(experiments)}


def _amplitude_columns(hkl, merged, plus, minus, observed, cell, space_group, anomalous: bool) -> list[MtzColumn]:
    if not anomalous:
        fw = french_wilson(hkl, merged.intensity[observed], merged.sigma[observed], cell, space_group)
        return [MtzColumn("F", "F", np.where(fw.accepted, fw.f, np.nan)),
                MtzColumn("SIGF", "Q", np.where(fw.accepted, fw.sigma_f, np.nan))]
    n = len(hkl)
    i_both = np.concatenate([plus.intensity[observed], minus.intensity[observed]])
    s_both = np.concatenate([plus.sigma[observed], minus.sigma[observed]])
    present = np.isfinite(i_both)
    f_both, sf_both = np.full(2 * n, np.nan), np.full(2 * n, np.nan)
    # Bijvoet mates share d, centricity and ε, so both go through French–Wilson under the ASU index.
    fw = french_wilson(np.concatenate([hkl, hkl])[present], i_both[present], s_both[present], cell, space_group)
    f_both[present] = np.where(fw.accepted, fw.f, np.nan)
    sf_both[present] = np.where(fw.accepted, fw.sigma_f, np.nan)
    f_plus, f_minus, sf_plus, sf_minus = f_both[:n], f_both[n:], sf_both[:n], sf_both[n:]
    f, sigma_f = merge_bijvoet_amplitudes(f_plus, sf_plus, f_minus, sf_minus)
    return [MtzColumn("F", "F", f), MtzColumn("SIGF", "Q", sigma_f),
            MtzColumn("F(+)", "G", f_plus), MtzColumn("SIGF(+)", "L", sf_plus),
            MtzColumn("F(-)", "G", f_minus), MtzColumn("SIGF(-)", "L", sf_minus)]


def run(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> StepResult:
    """Merge; ``summary`` holds the MTZ object, the merging statistics and counts."""
    data = merged_data(experiments, reflections, params)
    names = MtzNames(params.output.project_name, params.output.crystal_name, params.output.dataset_name)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    mtz = build_mtz(data["space_group"], data["unit_cell"], names, data["wavelength"], data["miller_index"],
                    data["columns"], "From ewald merge", [f"From ewald {ewald_version()}, run on {stamp}"])
    summary = {"mtz": mtz, "merging_statistics": data["statistics"], "n_observations": data["n_observations"],
               "n_unique": len(data["miller_index"]), "space_group": data["space_group"].hm,
               "unit_cell": list(data["unit_cell"].parameters)}
    return StepResult(experiments, reflections, summary)


def write_outputs(result: StepResult, params: Params, folder: str | Path = ".") -> None:
    """Write merged.mtz (and merge.html) into ``folder`` (atomically), logging the statistics."""
    from pipeline.formats.expt import write_bytes_atomically
    from pipeline.formats.mtz import write_mtz
    from pipeline.reports.scaling_report import merging_report_html

    folder = Path(folder)
    summary = result.summary
    logger.info("Merging %d observations into %d unique reflections (%s, cell %s)", summary["n_observations"],
                summary["n_unique"], summary["space_group"], " ".join(f"{v:.3f}" for v in summary["unit_cell"]))
    logger.info("\n%s", format_merging_statistics_table(summary["merging_statistics"]))
    write_mtz(summary["mtz"], folder / params.output.mtz)
    logger.info("Saved merged MTZ to %s", folder / params.output.mtz)
    if params.output.html:
        write_bytes_atomically(folder / params.output.html, merging_report_html(summary["merging_statistics"]).encode())
        logger.info("Saved HTML report to %s", folder / params.output.html)


def cli(params: Params, files: list[str]) -> None:
    """Read scaled.expt/scaled.refl, write merged.mtz (and merge.html)."""
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.refl import read_reflections
    from pipeline.inputs import experiments_and_reflections_from

    experiments_path, reflections_path = experiments_and_reflections_from(files, NAME)
    write_outputs(run(read_experiments(experiments_path), read_reflections(reflections_path), params), params)
