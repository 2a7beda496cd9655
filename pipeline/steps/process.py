"""``ewald process``: the whole job — many sweeps from images to merged MTZ — as one Dask run.

Per data set: import (headers only, here) → spot finding (one task per image chunk plus a
reduce) → indexing → refinement → integration (one task per image chunk, a profile-fitting
task) — each step writing its files in the data set's folder under ``workdir`` as the
walk-through's script does; then one joint scaling with ΔCC½ filtering, export and merge in
``workdir/scale``. With ``goniometer.axis=auto`` and/or ``distance=auto`` a first pass finds the
rotation axis of every sweep and/or each crystal's distance against the known cell; the consensus
axis and the median distance then go into the second pass, as the walk-through did by hand.

A data set that fails a step is reported with its reason and left out; the others go on. A
rerun skips the steps whose outputs are already there for the same inputs and parameters
(:mod:`pipeline.workflow`). Results do not depend on the number of workers or the chunking.
"""
from __future__ import annotations

import contextlib
import logging
import operator
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import dask
import numpy as np

from algorithms.errors import DataError, EwaldError
from algorithms.geometry.models import Experiment
from algorithms.reflection_table import Flags, ReflectionTable
from pipeline.cluster import cluster_client
from pipeline.errors import ParameterError
from pipeline.params import param, replace_parameter, scope
from pipeline.steps import StepResult, export, find_spots, import_, index, integrate, merge, refine, scale
from pipeline.workflow import DatasetFailure, is_done, load_outputs, record_of, save_outputs, step_key

NAME = "process"
HELP = "Process many sweeps from images to merged MTZ in one Dask run (import ... scale, export, merge)."

logger = logging.getLogger(__name__)


@dataclass
class GoniometerOverride:
    axis: tuple[float, ...] | Literal["auto"] | None = param(
        None, "Rotation axis for every sweep (x,y,z, any length); 'auto' finds direction and sense from the spots.")


@dataclass
class ClusterOptions:
    kind: Literal["local", "slurm", "pbs", "sge", "lsf"] = param("local", "Where the Dask workers run.")
    scheduler: str | None = param(None, "Address of a running Dask scheduler (tcp://host:port); overrides kind.")
    n_workers: int | None = param(None, "Local worker processes (default 1, using every core through threads).")
    threads_per_worker: int | None = param(None, "Threads per local worker (default: cores / workers).")
    jobs: int = param(2, "Batch jobs to start on a batch system (one Dask worker each).")
    jobqueue_config: str | None = param(None, "dask-jobqueue YAML settings; None = deploy/jobqueue.yaml.")
    dashboard_address: str = param("127.0.0.1:8787", "Where the Dask dashboard listens (':0' picks a free port).")


@dataclass
class Params:
    distance: float | Literal["auto"] | None = param(
        None, "Detector distance (mm) for every sweep; 'auto' calibrates it against unit_cell, crystal by crystal, "
              "and uses the median.")
    goniometer: GoniometerOverride = scope(GoniometerOverride, "Rotation axis.")
    space_group: str | None = param(None, "Space group to index and scale in (e.g. C2); None = P1 then the lattice found.")
    unit_cell: tuple[float, float, float, float, float, float] | None = param(
        None, "Known unit cell (a,b,c,α,β,γ): checks the indexing and is the target for distance=auto.")
    unit_cell_sigmas: tuple[float, ...] = param((0.01,) * 6, "Restraint sigmas for the distance calibration.")
    electron_fix_distance: bool = param(
        True, "For electron data, fix the detector distance and orientation in indexing and refinement unless their "
              "detector.fix is set: with a flat Ewald sphere distance and cell scale together (the walk-through's "
              "detector.fix=distance), and a detector turning in its plane is indistinguishable from the rotation "
              "axis and the crystal turning about the beam once the axis refines; the beam centre still refines.")
    d_min: float | None = param(None, "High-resolution limit (Å) for scaling and merging.")
    electron_spot_d_max: float | None = param(
        20.0, "For electron data, spot finding ignores pixels at d above this (Å): the inelastic scatter around "
              "the beam is not Bragg spots (the walk-through's d_max=20). None = the find_spots setting.")
    axis_search_sweeps: int = param(
        3, "With goniometer.axis=auto, search the axis on this many sweeps (those with most spots) and use their "
           "consensus for all: the axis belongs to the instrument.")
    filter_images: bool = param(
        True, "Scale with ΔCC½ filtering of single images, as the walk-through (scale.filtering.method=deltacchalf "
              "deltacchalf.mode=image_group deltacchalf.group_size=1), unless scale.filtering.method is set.")
    workdir: str = param(".", "Folder for the outputs: one subfolder per data set and scale/ for the merged results.")
    cluster: ClusterOptions = scope(ClusterOptions, "The Dask cluster.")
    find_spots: find_spots.Params = scope(find_spots.Params, "Spot finding (as ewald find_spots).")
    index: index.Params = scope(index.Params, "Indexing (as ewald index).")
    refine: refine.Params = scope(refine.Params, "Refinement (as ewald refine).")
    integrate: integrate.Params = scope(integrate.Params, "Integration (as ewald integrate).")
    scale: scale.Params = scope(scale.Params, "Scaling and ΔCC½ filtering (as ewald scale).")
    export: export.Params = scope(export.Params, "Unmerged MTZ export (as ewald export).")
    merge: merge.Params = scope(merge.Params, "Merging (as ewald merge).")


@dataclass
class DatasetOutcome:
    """What one data set gave: its integrated experiment and summary (the reflections are in
    ``folder``/integrated.refl), or why it failed."""

    name: str
    folder: Path
    experiment: Experiment | None = None
    failure: DatasetFailure | None = None
    summary: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ tasks


class StepFailed(Exception):
    """Raised inside a task so that the data set's future carries the failing step."""

    def __init__(self, step: str, reason: str):
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


def _guarded(step: str, function, *args):
    try:
        return function(*args)
    except StepFailed:
        raise
    except EwaldError as error:
        raise StepFailed(step, str(error)) from None
    except Exception as error:  # a bug, but it must not stop the other data sets
        logger.exception("%s failed", step)
        raise StepFailed(step, f"{type(error).__name__}: {error}") from None


def _spots_task(found, folder: Path, key: str) -> ReflectionTable:
    table = found.reflections
    if len(table) == 0:
        raise DataError("no strong spots found")
    save_outputs(folder, "find_spots", key, reflections=table, names=("", "strong.refl"))
    return table


def _index_task(experiment: Experiment, strong: ReflectionTable, params: index.Params, folder: Path, key: str):
    result = index.run([experiment], strong, params)
    save_outputs(folder, "index", key, result.experiments, result.reflections, ("indexed.expt", "indexed.refl"),
                 extra={"summary": _jsonable(result.summary)})
    return result.experiments[0], result.reflections


def _refine_task(indexed, params: refine.Params, folder: Path, key: str):
    experiment, table = indexed
    result = refine.run([experiment], table, params)
    save_outputs(folder, "refine", key, result.experiments, result.reflections, ("refined.expt", "refined.refl"),
                 extra={"summary": {"rmsds": _jsonable(result.summary["rmsds"][0])}})
    return result.experiments[0], result.reflections


def _integrated_task(result: StepResult, folder: Path, key: str) -> tuple[Experiment, dict]:
    """Write the integrated files and hand on only the experiment and a summary: the table stays
    on disk until the joint scaling reads it, so workers do not hold every data set at once."""
    save_outputs(folder, "integrate", key, result.experiments, result.reflections,
                 ("integrated.expt", "integrated.refl"))
    return _summarise(result.experiments[0], result.reflections)


def _load_integrated(folder: Path) -> tuple[Experiment, dict]:
    experiments, reflections, _ = load_outputs(folder, "integrate", ("integrated.expt", "integrated.refl"))
    return _summarise(experiments[0], reflections)


def _load_task(folder: Path, step: str, names: tuple[str, str]):
    experiments, reflections, _ = load_outputs(folder, step, names)
    return (experiments[0] if experiments else None), reflections


def _load_strong(folder: Path) -> ReflectionTable:
    return load_outputs(folder, "find_spots", ("", "strong.refl"))[1]


def _jsonable(value):
    """Summaries stored in step records keep only what JSON can hold."""
    import json

    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()
                    if isinstance(v, (dict, list, tuple, str, int, float, bool, type(None), np.generic))}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return str(value)


# --------------------------------------------------------------------------- the graph


def _step_params(params: Params, experiment: Experiment) -> tuple:
    """The per-step parameters with the job-level settings put in."""
    fs = params.find_spots
    is_electron = experiment.beam.wavelength < 0.1
    if is_electron and params.electron_spot_d_max is not None and fs.spotfinder.filter.d_max is None:
        fs = replace_parameter(fs, "spotfinder.filter.d_max", params.electron_spot_d_max)
    ix, rf = params.index, params.refine
    if is_electron and params.electron_fix_distance:
        # distance and cell scale together for a flat Ewald sphere: refine one, never both
        ix, rf = (step if step.refinement.parameterisation.detector.fix else
                  replace_parameter(step, "refinement.parameterisation.detector.fix", ["distance", "orientation"])
                  for step in (ix, rf))
    if params.space_group is not None:
        ix = replace_parameter(ix, "indexing.known_symmetry.space_group", params.space_group)
    if params.unit_cell is not None:
        ix = replace_parameter(ix, "indexing.known_symmetry.unit_cell", tuple(params.unit_cell))
    sc, mg = params.scale, params.merge
    if params.filter_images and sc.filtering.method is None:
        sc = replace_parameter(sc, "filtering.method", "deltacchalf")
        sc = replace_parameter(sc, "filtering.deltacchalf.mode", "image_group")
        sc = replace_parameter(sc, "filtering.deltacchalf.group_size", 1)
    if params.d_min is not None:
        sc = replace_parameter(sc, "cut_data.d_min", params.d_min)
        mg = replace_parameter(mg, "d_min", params.d_min)
    return fs, ix, rf, params.integrate, sc, mg


def dataset_graph(name: str, experiment: Experiment, params: Params, folder: Path, experiment_id: int):
    """The Delayed (experiment, integrated reflections) of one data set; ``name`` labels its task
    keys (unique per run, so two runs on one client never share results)."""
    from pipeline.images import open_image_stack

    fs, ix, rf, ig, _, _ = _step_params(params, experiment)
    import_key = step_key("import", None, repr(sorted(experiment.imageset.items())) + repr(
        (experiment.detector.origin.tolist(), experiment.goniometer.rotation_axis.tolist(), experiment.beam.wavelength)))
    keys = {}
    keys["find_spots"] = step_key("find_spots", fs, import_key)
    keys["index"] = step_key("index", ix, keys["find_spots"])
    keys["refine"] = step_key("refine", rf, keys["index"])
    keys["integrate"] = step_key("integrate", ig, keys["refine"])
    if is_done(folder, "integrate", keys["integrate"]):
        return dask.delayed(_load_integrated, pure=True)(folder, dask_key_name=f"load-integrated-{name}")
    if is_done(folder, "refine", keys["refine"]):
        refined = dask.delayed(_load_task, pure=True)(folder, "refine", ("refined.expt", "refined.refl"),
                                                     dask_key_name=f"load-refined-{name}")
    else:
        if is_done(folder, "index", keys["index"]):
            indexed = dask.delayed(_load_task, pure=True)(folder, "index", ("indexed.expt", "indexed.refl"),
                                                         dask_key_name=f"load-indexed-{name}")
        else:
            if is_done(folder, "find_spots", keys["find_spots"]):
                strong = dask.delayed(_load_strong, pure=True)(folder, dask_key_name=f"load-strong-{name}")
            else:
                found = find_spots.find_spots_graph(experiment, fs, experiment_id, name=name)
                strong = dask.delayed(_guarded, pure=True)("find_spots", _spots_task, found, folder,
                                                           keys["find_spots"], dask_key_name=f"strong-{name}")
            indexed = dask.delayed(_guarded, pure=True)("index", _index_task, experiment, strong, ix, folder,
                                                        keys["index"], dask_key_name=f"index-{name}")
        refined = dask.delayed(_guarded, pure=True)("refine", _refine_task, indexed, rf, folder, keys["refine"],
                                                    dask_key_name=f"refine-{name}")
    refined_experiment = dask.delayed(operator.getitem, pure=True)(refined, 0, dask_key_name=f"refined-expt-{name}")
    refined_table = dask.delayed(operator.getitem, pure=True)(refined, 1, dask_key_name=f"refined-refl-{name}")
    stack = open_image_stack(experiment, chunk_images=ig.chunk_images)
    integrated = integrate.integration_graph(refined_experiment, refined_table, ig, stack, experiment_id,
                                             sweep=experiment, name=name)
    return dask.delayed(_guarded, pure=True)("integrate", _integrated_task, integrated, folder, keys["integrate"],
                                             dask_key_name=f"integrated-{name}")


# ------------------------------------------------------------------ automatic axis and distance


def _axis_task(experiment: Experiment, strong: ReflectionTable) -> dict:
    """The rotation axis (direction and sense) that indexes one sweep's spots best."""
    from pipeline.steps import find_rotation_axis

    found, table = find_rotation_axis.find_rotation_axis(experiment, strong, find_rotation_axis.Params())
    return {"axis": found.goniometer.rotation_axis.tolist(), "table": _jsonable(table)}


def _distance_task(experiment: Experiment, strong: ReflectionTable, axis, params: Params) -> float:
    """One crystal's detector distance from its spots and the known cell (restrained refinement)."""
    from pipeline.steps import calibrate_distance

    experiment = experiment.copy()
    if axis is not None:
        experiment.goniometer.rotation_axis = np.asarray(axis, dtype=float)
    ix = replace_parameter(_step_params(params, experiment)[1], "indexing.known_symmetry.space_group", None)
    indexed = index.run([experiment], strong, replace_parameter(ix, "indexing.known_symmetry.unit_cell", None))
    calibration = calibrate_distance.calibrate_distance(
        [(indexed.experiments[0], indexed.reflections)], tuple(params.unit_cell), tuple(params.unit_cell_sigmas),
        params.space_group)
    if calibration["distances"][0] is None:
        raise DataError(calibration["datasets"][0].get("reason") or "the crystal does not fit the known cell")
    return float(calibration["distances"][0])


def consensus_axis(axes: list[np.ndarray]) -> np.ndarray:
    """The common rotation axis of several sweeps: the mean direction in the majority sense."""
    axes = np.array([a / np.linalg.norm(a) for a in axes])
    signs = np.sign(axes @ axes[0])
    mean = (axes * signs[:, None]).mean(axis=0)
    mean /= np.linalg.norm(mean)
    return -mean if np.sum(signs < 0) > np.sum(signs > 0) else mean


def starting_distance_mm(experiment: Experiment, d_edge_range=(0.5, 20.0), d_edge_default: float = 2.0) -> float:
    """A distance to start ``distance=auto`` from: the header's if it puts the panel edge at a
    diffraction resolution any experiment could have (0.5–20 Å), else the distance that puts the
    inscribed edge at 2 Å. Headers are often wrong by orders of magnitude (the Timepix writer
    stores "2.193" for ~2 m); for a flat Ewald sphere the cell found then scales with the distance,
    so any start in the working range leads to the same calibrated distance."""
    det, beam = experiment.detector, experiment.beam
    cx, cy = det.beam_centre_mm(beam.s0)
    width, height = det.image_size_mm
    r_edge = min(cx, cy, width - cx, height - cy)
    if r_edge <= 0:
        return det.distance_mm
    def d_at_edge(distance):
        return beam.wavelength / (2 * np.sin(np.arctan2(r_edge, abs(distance)) / 2))
    if d_edge_range[0] <= d_at_edge(det.distance_mm) <= d_edge_range[1]:
        return det.distance_mm
    return float(r_edge / np.tan(2 * np.arcsin(beam.wavelength / (2 * d_edge_default))))


def _settle(futures: dict, step: str) -> tuple[dict, dict[str, DatasetFailure]]:
    """Wait for named futures; results by name, and the failures with their step and reason."""
    results, failures = {}, {}
    for name, future in futures.items():
        try:
            results[name] = future.result()
        except StepFailed as error:
            failures[name] = DatasetFailure(name, error.step, error.reason)
        except Exception as error:
            failures[name] = DatasetFailure(name, step, f"{type(error).__name__}: {error}")
    return results, failures


def _first_pass(experiments: dict[str, Experiment], params: Params, client, find_axis: bool,
                find_distance: bool, token: str) -> tuple[dict, dict[str, DatasetFailure]]:
    """Spots at the header geometry; the rotation axis from the sweeps with most spots (the axis
    belongs to the instrument, so a few sweeps decide it for all); then every crystal's distance.
    The spot tables stay on the workers: tasks get them as futures."""
    spots = {}
    for i, (name, experiment) in enumerate(experiments.items()):
        found = find_spots.find_spots_graph(experiment, _step_params(params, experiment)[0], i,
                                            name=f"first-pass-ds{name}-{token}")
        spots[name] = dask.delayed(operator.attrgetter("reflections"), pure=True)(
            found, dask_key_name=f"first-pass-spots-ds{name}-{token}")
    strong = dict(zip(spots, client.compute(list(spots.values()))))
    counts, failures = _settle({n: client.submit(len, f, key=f"count-spots-ds{n}-{token}") for n, f in strong.items()},
                               "find_spots")
    calibration: dict = {}
    axis = None
    if find_axis:
        ranked = sorted(counts, key=lambda n: -counts[n])[: params.axis_search_sweeps]
        tasks = {n: client.submit(_guarded, "find_rotation_axis", _axis_task, experiments[n], strong[n],
                                  key=f"find_rotation_axis-ds{n}-{token}") for n in ranked}
        found, axis_failures = _settle(tasks, "find_rotation_axis")
        if not found:
            reasons = "; ".join(f"{n}: {f.reason}" for n, f in axis_failures.items())
            raise DataError(f"the rotation axis could not be found from any sweep ({reasons}); give goniometer.axis=")
        axis = consensus_axis([np.array(r["axis"]) for r in found.values()]).tolist()
        calibration.update(axes={n: r["axis"] for n, r in found.items()}, axis=axis,
                           axis_tables={n: r["table"] for n, r in found.items()})
    if find_distance:
        tasks = {n: client.submit(_guarded, "calibrate_distance", _distance_task, experiments[n], strong[n], axis,
                                  params, key=f"calibrate_distance-ds{n}-{token}") for n in counts}
        distances, distance_failures = _settle(tasks, "calibrate_distance")
        if not distances:
            raise DataError("no crystal gave a distance against the known cell; check unit_cell= or give distance=")
        calibration.update(distances=distances, distance=float(np.median(list(distances.values()))))
        failures.update(distance_failures)
    return calibration, failures


# -------------------------------------------------------------------------------- the job


@dataclass
class ProcessResult:
    """Everything ``process`` produced: per-data-set outcomes, the scaled/merged results."""

    datasets: list[DatasetOutcome]
    scaled: StepResult | None = None
    merged: StepResult | None = None
    calibration: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    workdir: Path = Path(".")


def _dataset_names(datasets: list[str | Path]) -> list[str]:
    names, seen = [], {}
    for ds in datasets:
        base = Path(str(ds).rstrip("/")).name or "data"
        if any(ch in base for ch in "*?[#"):
            base = Path(str(ds)).parent.name or "data"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def _import_params(params: Params) -> import_.Params:
    ip = import_.Params()
    geometry = ip.geometry
    distance = params.distance
    detector = replace(geometry.detector, distance=None if distance == "auto" else distance)
    axis = params.goniometer.axis
    goniometer = replace(geometry.goniometer, axis=None if axis == "auto" else axis)
    return replace(ip, geometry=replace(geometry, detector=detector, goniometer=goniometer))


def _check(params: Params) -> None:
    if params.distance == "auto" and params.unit_cell is None:
        raise ParameterError("distance=auto calibrates the distance against a known cell: give unit_cell=a,b,c,al,be,ga "
                             "(and space_group=), or give the distance in mm")


def run(datasets: list[str | Path], params: Params, client=None) -> ProcessResult:
    """Process every data set (folders of images, globs or templates) and scale them together."""
    _check(params)
    if not datasets:
        raise ParameterError("give the data sets to process: folders of images, e.g. ewald process ../814/{1..18}")
    workdir = Path(params.workdir)
    names = _dataset_names(datasets)
    token = uuid.uuid4().hex[:8]  # task keys are unique per run
    timings = {}
    start = time.perf_counter()
    outcomes: dict[str, DatasetOutcome] = {}
    experiments: dict[str, Experiment] = {}
    for name, ds in zip(names, datasets):
        folder = workdir / name
        outcomes[name] = DatasetOutcome(name, folder)
        try:
            imported = import_.run([str(ds)], _import_params(params))
        except EwaldError as error:
            outcomes[name].failure = DatasetFailure(name, "import", str(error))
            continue
        if len(imported.experiments) != 1:
            outcomes[name].failure = DatasetFailure(
                name, "import", f"{ds}: holds {len(imported.experiments)} image sweeps; give one sweep per data set")
            continue
        experiments[name] = imported.experiments[0]
        folder.mkdir(parents=True, exist_ok=True)
        save_outputs(folder, "import", "", imported.experiments, None, ("imported.expt", ""))
    timings["import"] = time.perf_counter() - start
    if not experiments:
        raise DataError("no data set could be imported: " + "; ".join(f"{o.name}: {o.failure.reason}" for o in outcomes.values()))

    with _client(params, client) as active:
        logger.info("Dask dashboard: %s", active.dashboard_link or "(none)")
        calibration = {}
        find_axis, find_distance = params.goniometer.axis == "auto", params.distance == "auto"
        if find_axis or find_distance:
            t0 = time.perf_counter()
            if find_distance:
                for name, experiment in experiments.items():
                    start_mm = starting_distance_mm(experiment)
                    if start_mm != experiment.detector.distance_mm:
                        logger.info("%s: header distance %.4g mm is implausible; starting the calibration from %.0f mm",
                                    name, experiment.detector.distance_mm, start_mm)
                        experiment = experiment.copy()
                        experiment.detector.set_distance_mm(start_mm)
                        experiments[name] = experiment
            first_pass_key = step_key("first_pass", params, repr(sorted(
                (n, repr(sorted(e.imageset.items())), e.detector.origin.tolist()) for n, e in experiments.items())))
            if is_done(workdir, "first_pass", first_pass_key):
                record = record_of(workdir, "first_pass")
                calibration = record["calibration"]
                failures = {n: DatasetFailure(**f) for n, f in record["failures"].items()}
                logger.info("Using the rotation axis and distance found by an earlier run (%s)", workdir / ".ewald")
            else:
                calibration, failures = _first_pass(experiments, params, active, find_axis, find_distance, token)
                save_outputs(workdir, "first_pass", first_pass_key, extra={
                    "calibration": _jsonable(calibration),
                    "failures": {n: {"dataset": f.dataset, "step": f.step, "reason": f.reason} for n, f in failures.items()}})
            for name, failure in failures.items():
                outcomes[name].failure = failure
                experiments.pop(name, None)
            if find_axis:
                logger.info("Rotation axis (consensus of %d sweeps): %s", len(calibration["axes"]),
                            np.round(calibration["axis"], 4).tolist())
            if find_distance:
                d = calibration["distances"]
                logger.info("Detector distance: median %.1f mm over %d crystals (%.1f–%.1f)", calibration["distance"],
                            len(d), min(d.values()), max(d.values()))
            for name, experiment in experiments.items():
                experiment = experiment.copy()
                if find_axis:
                    experiment.goniometer.rotation_axis = np.array(calibration["axis"])
                if find_distance:
                    experiment.detector.set_distance_mm(calibration["distance"])
                experiments[name] = experiment
                save_outputs(workdir / name, "import", "", [experiment], None, ("imported.expt", ""))
            timings["calibration"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        graphs = {name: dataset_graph(f"ds{name}-{token}", e, params, workdir / name, i)
                  for i, (name, e) in enumerate(experiments.items())}
        futures = dict(zip(graphs, active.compute(list(graphs.values()))))
        _show_progress(list(futures.values()))
        summaries, failures = _settle(futures, "processing")
        for name, outcome in ((n, outcomes[n]) for n in futures):
            if name in failures:
                outcome.failure = failures[name]
                outcome.summary = _dataset_summary(outcome)
            else:
                outcome.experiment, outcome.summary = summaries[name]
                outcome.summary["rmsds"] = (_record(outcome.folder, "refine").get("summary") or {}).get("rmsds", {})
        timings["datasets"] = time.perf_counter() - t0

        good = [n for n in futures if outcomes[n].failure is None]
        scaled = merged = None
        if good:
            t0 = time.perf_counter()
            try:
                scaled, merged = active.submit(
                    _scale_export_merge, [outcomes[n].folder for n in good], params, workdir / "scale",
                    key=f"scale-{token}").result()
            except EwaldError as error:
                raise DataError(f"scaling the {len(good)} integrated data sets failed: {error}") from None
            timings["scale"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    result = ProcessResult(list(outcomes.values()), scaled, merged, calibration, timings, workdir)
    _attach_image_outcomes(result)
    return result


def _scale_export_merge(dataset_folders: list[Path], params: Params, folder: Path):
    """Joint scaling, export and merge of the data sets' integrated files, writing into ``folder``
    (on the worker: MTZ objects do not travel) and logging into ``folder``/scale.log. Returns the
    scaled experiments and the summaries, without the large per-reflection arrays."""
    from pipeline.logging_setup import run_logging

    folder.mkdir(parents=True, exist_ok=True)
    integrated = [load_outputs(f, "integrate", ("integrated.expt", "integrated.refl"))[:2] for f in dataset_folders]
    experiments = [e[0] for e, _ in integrated]
    with run_logging(folder / "scale.log", console=False, this_thread_only=True):
        experiments_all, table = scale.combine_inputs([[e] for e in experiments], [t for _, t in integrated],
                                                      [str(f) for f in dataset_folders])
        _, _, _, _, sc, mg = _step_params(params, experiments[0])
        scaled = scale.run(experiments_all, table, sc)
        scale.write_outputs(scaled, sc, folder)
        exported = export.run(scaled.experiments, scaled.reflections, params.export)
        export.write_outputs(exported, params.export, folder)
        merged = merge.run(scaled.experiments, scaled.reflections, mg)
        merge.write_outputs(merged, mg, folder)
    scaled_summary = {k: v for k, v in scaled.summary.items() if k != "result"}
    merged_summary = {k: v for k, v in merged.summary.items() if k != "mtz"}
    return StepResult(scaled.experiments, None, scaled_summary), StepResult(merged.experiments, None, merged_summary)


def _summarise(experiment: Experiment, table: ReflectionTable) -> tuple[Experiment, dict]:
    n_integrated = int(table.get_flags(Flags.integrated, all=False).sum())
    if n_integrated == 0:
        raise StepFailed("integrate", f"no reflection could be integrated ({len(table)} predicted)")
    return experiment, {
        "status": "ok",
        "space_group": experiment.crystal.space_group.hm,
        "unit_cell": list(experiment.crystal.unit_cell.parameters),
        "n_integrated": n_integrated,
        "n_images": experiment.scan.num_images,
    }


def _show_progress(futures) -> None:
    """A text progress bar on a terminal (elsewhere the dashboard shows progress)."""
    import sys

    if sys.stdout.isatty():
        from distributed import progress

        progress(futures)
        print()


@contextlib.contextmanager
def _client(params: Params, client):
    if client is not None:
        yield client
        return
    c = params.cluster
    with cluster_client(cluster=c.kind, scheduler=c.scheduler, n_workers=c.n_workers,
                        threads_per_worker=c.threads_per_worker, jobs=c.jobs, jobqueue_config=c.jobqueue_config,
                        dashboard_address=c.dashboard_address) as active:
        yield active


def _dataset_summary(outcome: DatasetOutcome) -> dict:
    if outcome.failure is not None:
        return {"status": "failed", "step": outcome.failure.step, "reason": outcome.failure.reason}
    return outcome.summary


def _record(folder: Path, step: str) -> dict:
    from pipeline.workflow import record_of

    try:
        return record_of(folder, step)
    except (OSError, ValueError):
        return {}


def _attach_image_outcomes(result: ProcessResult) -> None:
    """Images kept/removed per data set, from the valid image ranges scaling left (a crystal
    that scaling removed is absent from the scaled experiments: all its images are removed)."""
    if result.scaled is None:
        return
    scaled = {e.imageset.get("template"): e for e in result.scaled.experiments}
    for outcome in result.datasets:
        if outcome.failure is not None or outcome.experiment is None:
            continue
        n = outcome.experiment.scan.num_images
        experiment = scaled.get(outcome.experiment.imageset.get("template"))
        if experiment is None:
            kept = 0
        else:
            ranges = experiment.scan.valid_image_ranges.get(experiment.identifier) or [list(experiment.scan.image_range)]
            kept = sum(b - a + 1 for a, b in ranges)
        outcome.summary["images_kept"] = kept
        outcome.summary["images_removed"] = n - kept
        outcome.summary["removed_by_scaling"] = experiment is None


# ------------------------------------------------------------------------------ reports


def format_dataset_table(result: ProcessResult) -> str:
    """One line per data set: status (or the failing step and reason), cell, RMSDs, counts."""
    header = (f"{'Dataset':<10} {'Status':<8} {'Space group':<11} {'Unit cell':<44} {'RMSD x,y (px), z (img)':<24} "
              f"{'Integrated':>10} {'Images kept/removed':>20}")
    lines = ["Data sets:", header, "-" * len(header)]
    for outcome in result.datasets:
        s = outcome.summary or _dataset_summary(outcome)
        if s.get("status") != "ok":
            lines.append(f"{outcome.name:<10} {'failed':<8} {s.get('step', '')}: {s.get('reason', '')}")
            continue
        cell = " ".join(f"{v:.2f}" for v in s["unit_cell"])
        r = s.get("rmsds") or {}
        r = r[0] if isinstance(r, list) else r
        rmsd = f"{r.get('x_px', float('nan')):.2f}, {r.get('y_px', float('nan')):.2f}, {r.get('z_images', float('nan')):.2f}"
        kept = f"{s.get('images_kept', '-')}/{s.get('images_removed', '-')}"
        if s.get("removed_by_scaling"):
            kept = "removed: non-isomorphous"
        lines.append(f"{outcome.name:<10} {'ok':<8} {s['space_group']:<11} {cell:<44} {rmsd:<24} "
                     f"{s['n_integrated']:>10d} {kept:>20}")
    return "\n".join(lines)


def cli(params: Params, files: list[str]) -> None:
    """``ewald process <data sets ...> [key=value ...]``."""
    from algorithms.merging import format_merging_statistics_table

    result = run(files, params)
    logger.info("\n%s", format_dataset_table(result))
    if result.scaled is not None and result.scaled.summary.get("merging_statistics") is not None:
        logger.info("\n%s", format_merging_statistics_table(result.scaled.summary["merging_statistics"]))
    logger.info("Merged data: %s", Path(params.workdir) / "scale" / params.merge.output.mtz)
    logger.info("Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
