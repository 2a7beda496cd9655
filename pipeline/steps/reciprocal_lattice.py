"""``ewald reciprocal_lattice``: the spots mapped to reciprocal space, as one interactive,
self-contained 3D HTML page (the equivalent of ``dials.reciprocal_lattice_viewer``).

``ewald reciprocal_lattice imported.expt strong.refl [invert_rotation_axis=True] [d_min= d_max=]``

Each spot centroid (x, y, z in pixels/images) becomes rlp = F⁻¹·R(ê, −φ)·S⁻¹·(s1 − s0), the
reciprocal-lattice point in the crystal's φ = 0 frame (algorithms.geometry.prediction). With the
right geometry the points of a crystal form a regular lattice; a wrong rotation axis smears it.
For electron diffraction both senses of the axis give a near-regular lattice (the Ewald sphere
is almost flat), so ``invert_rotation_axis=True`` maps with −ê and the user compares the two pages
(algorithms.md §10). The page (pipeline.views.lattice_html) opens offline.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from algorithms.geometry.models import Experiment, rotation_matrix
from algorithms.geometry.prediction import reciprocal_lattice_points
from algorithms.reflection_table import ReflectionTable
from pipeline.errors import InputFileError, ParameterError
from pipeline.params import param
from pipeline.steps import StepResult
from pipeline.views.lattice_html import lattice_page_html

NAME = "reciprocal_lattice"
HELP = "Write the spots' reciprocal-lattice points as an interactive 3D page (HTML, works offline)."

logger = logging.getLogger(__name__)

# Å⁻¹ in the page: 1e-7 is far below any spot's error and keeps the file small
_DECIMALS = 7


@dataclass
class Params:
    invert_rotation_axis: bool = param(False, "Map the spots with the rotation axis reversed (−ê), to compare the two senses.")
    d_min: float | None = param(None, "Leave out points with d < d_min (Å); None = no limit.")
    d_max: float | None = param(None, "Leave out points with d > d_max (Å); None = no limit.")
    output: str = param("reciprocal_lattice.html", "The HTML file to write.")


def _mid_scan_beam(experiment: Experiment) -> np.ndarray:
    """The beam direction (unit, along s0) in the φ = 0 frame at the middle of the scan."""
    goniometer, scan = experiment.goniometer, experiment.scan
    first, last = scan.image_range
    phi_mid = np.radians(scan.angle_from_image_index((first + last + 1) / 2.0))
    lab_to_frame = (np.linalg.inv(goniometer.fixed_rotation) @ rotation_matrix(goniometer.rotation_axis, -phi_mid)
                    @ np.linalg.inv(goniometer.setting_rotation))
    beam = lab_to_frame @ experiment.beam.s0
    return beam / np.linalg.norm(beam)


def _indexed(reflections: ReflectionTable) -> np.ndarray | None:
    if "miller_index" not in reflections:
        return None
    return np.any(np.asarray(reflections["miller_index"]) != 0, axis=1)


def lattice_data(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> dict:
    """The page's JSON document: every spot's rlp, its experiment, indexed or not, and each
    experiment's axis, beam and reciprocal cell axes (see pipeline.views.lattice_html)."""
    if "xyzobs.px.value" not in reflections:
        raise InputFileError("the reflections have no xyzobs.px.value column; give spots from find_spots (strong.refl) or indexing")
    ids = np.asarray(reflections["id"]) if "id" in reflections else np.zeros(len(reflections), int)
    indexed = _indexed(reflections)
    xyz_parts, id_parts, indexed_parts, described = [], [], [], []
    for experiment_id, experiment in enumerate(experiments):
        if experiment.goniometer is None or experiment.scan is None:
            raise InputFileError(f"experiment {experiment_id} has no goniometer or scan; give the experiments of a rotation sweep")
        goniometer = experiment.goniometer.copy()
        if params.invert_rotation_axis:
            goniometer.invert()
        mapped = experiment.replace(goniometer=goniometer)
        selected = ids == experiment_id
        rlp = reciprocal_lattice_points(reflections["xyzobs.px.value"][selected], mapped.beam, mapped.detector,
                                        mapped.goniometer, mapped.scan) if selected.any() else np.zeros((0, 3))
        d_star = np.linalg.norm(rlp, axis=1)
        keep = np.ones(len(rlp), bool)
        if params.d_min is not None:
            keep &= d_star <= 1.0 / params.d_min
        if params.d_max is not None:
            keep &= d_star >= 1.0 / params.d_max
        xyz_parts.append(rlp[keep])
        id_parts.append(np.full(int(keep.sum()), experiment_id))
        if indexed is not None:
            indexed_parts.append(indexed[selected][keep])
        crystal = experiment.crystal
        described.append({
            "n_points": int(keep.sum()),
            "rotation_axis": (np.linalg.inv(goniometer.fixed_rotation) @ goniometer.rotation_axis).tolist(),
            "beam": _mid_scan_beam(mapped).tolist(),
            "reciprocal_axes": None if crystal is None else np.round(crystal.A.T, _DECIMALS).tolist(),
        })
    xyz = np.concatenate(xyz_parts) if xyz_parts else np.zeros((0, 3))
    return {
        "title": "reciprocal lattice" + (" (rotation axis inverted)" if params.invert_rotation_axis else ""),
        "invert_rotation_axis": params.invert_rotation_axis,
        "xyz": np.round(xyz, _DECIMALS).ravel().tolist(),
        "experiment_id": np.concatenate(id_parts).astype(int).tolist() if id_parts else [],
        "indexed": np.concatenate(indexed_parts).astype(int).tolist() if indexed is not None and indexed_parts else None,
        "experiments": described,
    }


def run(experiments: list[Experiment], reflections: ReflectionTable | None, params: Params) -> StepResult:
    """Map the spots; ``summary["html"]`` is the page, ``summary["n_points"]`` per experiment."""
    if not experiments:
        raise InputFileError("no experiments; give an imported.expt (or indexed.expt) and its reflections")
    if reflections is None or len(reflections) == 0:
        raise InputFileError("no reflections to map; give a strong.refl (or indexed.refl)")
    for name in ("d_min", "d_max"):
        value = getattr(params, name)
        if value is not None and not value > 0:
            raise ParameterError(f"{name}={value}: give a positive resolution in Å")
    data = lattice_data(experiments, reflections, params)
    summary = {"html": lattice_page_html(data), "n_points": [e["n_points"] for e in data["experiments"]],
               "invert_rotation_axis": params.invert_rotation_axis}
    return StepResult(experiments=experiments, reflections=reflections, summary=summary)


def cli(params: Params, files: list[str]) -> None:
    """``ewald reciprocal_lattice imported.expt strong.refl``: write ``output``, log its path."""
    from pipeline.formats.expt import read_experiments, write_bytes_atomically
    from pipeline.formats.refl import read_reflections

    expt_files = [f for f in files if f.endswith(".expt")]
    refl_files = [f for f in files if f.endswith(".refl")]
    if len(expt_files) != 1 or len(refl_files) != 1 or len(files) != 2:
        raise InputFileError("give one experiment file and one reflection file, e.g. "
                             "ewald reciprocal_lattice imported.expt strong.refl")
    experiments = read_experiments(expt_files[0])
    result = run(experiments, read_reflections(refl_files[0]), params)
    for experiment_id, n_points in enumerate(result.summary["n_points"]):
        logger.info("Experiment %d: %d reciprocal-lattice points", experiment_id, n_points)
    write_bytes_atomically(params.output, result.summary["html"].encode("utf-8"))
    logger.info("Wrote %s", params.output)
