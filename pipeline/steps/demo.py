"""``ewald demo``: simulate the reference job and process it, then measure it against the truth.

The demo simulates the MyD88 small-wedge job (18 crystals × 72 Timepix images whose headers carry
a wrong distance and no rotation axis, with corrupted images and a non-isomorphous crystal),
processes it with ``ewald process`` finding the rotation axis and the distance itself, prints the
per-data-set table and the merging statistics, and compares the merged intensities with the
simulator's true ones.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.params import param, parameters_to_dict, parse_parameters
from pipeline.steps import StepResult, process, simulate
from pipeline.truth import compare_with_truth, format_truth_comparison

NAME = "demo"
HELP = "Simulate the MyD88 small-wedge job (18 x 72 images) with exact truth, process it and compare with the truth."

logger = logging.getLogger(__name__)


@dataclass
class Params:
    folder: str = param("ewald-demo", "Folder for the simulated images (sim/) and the processing (proc/).")
    preset: str = param("myd88", "Simulation preset (myd88, tiny, xray).")
    n_crystals: int | None = param(None, "Number of crystals; None = the preset's.")
    seed: int | None = param(None, "Simulation seed; None = the preset's.")
    find_axis: bool = param(True, "Find the rotation axis from the spots (goniometer.axis=auto) instead of giving it.")
    find_distance: bool = param(True, "Calibrate the distance against the known cell (distance=auto) instead of giving it.")
    d_min: float = param(3.0, "High-resolution limit of scaling and merging (Å), as the walk-through.")
    n_workers: int | None = param(None, "Local Dask worker processes.")


def _simulation(params: Params) -> tuple[Path, dict]:
    """Simulate into <folder>/sim unless the same simulation is already there."""
    sim_args = [f"preset={params.preset}"] + ([f"n_crystals={params.n_crystals}"] if params.n_crystals else []) + (
        [f"seed={params.seed}"] if params.seed is not None else [])
    sim_params, _ = parse_parameters(simulate.Params, sim_args)
    folder = Path(params.folder) / "sim"
    record = folder / "simulation.json"
    wanted = parameters_to_dict(sim_params)
    if record.is_file() and json.loads(record.read_text()).get("demo_parameters") == wanted:
        logger.info("Using the simulation already in %s", folder)
    else:
        logger.info("Simulating %s into %s ...", params.preset, folder)
        sim_params = replace(sim_params, overwrite=True)
        simulate.run(sim_params, folder)
        document = json.loads(record.read_text())
        document["demo_parameters"] = wanted
        record.write_text(json.dumps(document, indent=1))
    return folder, json.loads(record.read_text())


def _process_arguments(params: Params, simulation: dict) -> list[str]:
    spec = simulation["spec"]
    args = [f"workdir={Path(params.folder) / 'proc'}", f"d_min={params.d_min}",
            f"space_group={spec['space_group'].replace(' ', '')}",
            "unit_cell=" + ",".join(f"{v:g}" for v in spec["unit_cell"])]
    args.append("goniometer.axis=auto" if params.find_axis else
                "goniometer.axis=" + ",".join(f"{v:g}" for v in spec["rotation_axis"]))
    args.append("distance=auto" if params.find_distance else f"distance={spec['distance']:g}")
    if params.n_workers:
        args.append(f"n_workers={params.n_workers}")
    return args


def run(params: Params) -> StepResult:
    folder, simulation = _simulation(params)
    datasets = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: int(p.name) if p.name.isdigit() else 0)
    process_params, _ = parse_parameters(process.Params, _process_arguments(params, simulation))
    logger.info("Processing %d data sets: ewald process %s/{1..%d} %s", len(datasets), folder, len(datasets),
                " ".join(_process_arguments(params, simulation)))
    result = process.run([str(d) for d in datasets], process_params)
    merged = Path(process_params.workdir) / "scale" / process_params.merge.output.mtz
    comparison = compare_with_truth(merged, folder / "true_merged.mtz", d_min=params.d_min) if merged.exists() else None
    return StepResult([], None, {"process": result, "comparison": comparison, "simulation": simulation})


def cli(params: Params, files: list[str]) -> None:
    from algorithms.merging import format_merging_statistics_table

    result = run(params)
    processed = result.summary["process"]
    logger.info("\n%s", process.format_dataset_table(processed))
    if processed.scaled is not None:
        logger.info("\n%s", format_merging_statistics_table(processed.scaled.summary["merging_statistics"]))
    if result.summary["comparison"] is not None:
        logger.info("\nAgainst the simulator's true intensities:\n%s", format_truth_comparison(result.summary["comparison"]))
    logger.info("Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in processed.timings.items()))
