"""``ewald show``: print the models of experiments or image files, laid out as ``dials.show`` does.

The text is a pure function of the experiments (:func:`format_experiments`); numbers in braces
use six significant digits, as dxtbx's C++ stream output does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from algorithms.geometry.models import Experiment
from algorithms.reflection_table import ReflectionTable
from pipeline.steps import StepResult

logger = logging.getLogger(__name__)

NAME = "show"
HELP = "Print the beam, detector, goniometer, scan and crystal of experiments or image files, as dials.show."


@dataclass
class Params:
    """dials.show's options about reflections and images are not needed for models; none here."""


def _braces(values) -> str:
    return "{" + ",".join(f"{float(v) + 0.0:g}" for v in np.ravel(values)) + "}"  # + 0.0: no "-0"


def _matrix(name: str, m: np.ndarray) -> list[str]:
    rows = ["{" + ", ".join(f"{v:7.4f}" for v in row) + "}" for row in np.asarray(m).reshape(3, 3)]
    pad = " " * (4 + len(name) + 1)
    return [f"    {name}{{{rows[0]},", f"{pad}{rows[1]},", f"{pad}{rows[2]}}}"]


def _beam_centre_px(experiment: Experiment) -> tuple[float, float] | None:
    """Where the beam meets the panel plane (px), or None if it points away from the panel."""
    xy_mm, valid = experiment.detector.ray_intersection_mm(experiment.beam.s0)
    return tuple(experiment.detector.mm_to_pixel(xy_mm)) if valid else None


def _resolution_limits(experiment: Experiment) -> tuple[float, float | None]:
    """d (Å) at the panel corners (best) and of the largest full circle around the beam centre."""
    detector, s0 = experiment.detector, experiment.beam.s0
    nf, ns = detector.image_size
    corners = np.array([[0, 0], [nf, 0], [0, ns], [nf, ns]], dtype=float)
    at_corners = float(detector.resolution_of_pixel(corners, s0).min())
    centre = _beam_centre_px(experiment)
    if centre is None:
        return at_corners, None
    bx, by = centre
    edges = np.array([[0, by], [nf, by], [bx, 0], [bx, ns]], dtype=float)
    return at_corners, float(detector.resolution_of_pixel(edges, s0).max())


def _detector_lines(experiment: Experiment) -> list[str]:
    d = experiment.detector
    lines = [
        "Detector:",
        "Panel:",
        f"  name: {d.name}",
        f"  type: {d.type}",
        f"  identifier: {d.identifier}",
        f"  pixel_size:{_braces(d.pixel_size)}",
        f"  image_size: {_braces(d.image_size)}",
        f"  trusted_range: {_braces(d.trusted_range)}",
        f"  thickness: {d.thickness:g}",
        f"  material: {d.material}",
        f"  mu: {d.mu:g}",
        f"  gain: {d.gain:g}",
        f"  pedestal: {d.pedestal:g}",
        f"  fast_axis: {_braces(d.fast_axis)}",
        f"  slow_axis: {_braces(d.slow_axis)}",
        f"  origin: {_braces(d.origin)}",
        f"  distance: {d.distance_mm:g}",
        "  pixel to millimeter strategy: SimplePxMmStrategy",
    ]
    if d.mask:
        lines.append("  mask: " + ", ".join(_braces(r) for r in d.mask))
    corners, inscribed = _resolution_limits(experiment)
    lines += ["", "", f"Max resolution (at corners): {corners:f}"]
    if inscribed is not None:
        lines.append(f"Max resolution (inscribed):  {inscribed:f}")
    lines.append("")
    return lines


def _beam_lines(experiment: Experiment) -> list[str]:
    b = experiment.beam
    lines = ["Beam:"]
    if b.probe is not None:
        lines.append(f"    probe: {b.probe}")
    lines += [
        f"    wavelength: {b.wavelength:g}",
        f"    sample to source direction : {_braces(b.direction)}",
        f"    divergence: {b.divergence:g}",
        f"    sigma divergence: {b.sigma_divergence:g}",
        f"    polarization normal: {_braces(b.polarization_normal)}",
        f"    polarization fraction: {b.polarization_fraction:g}",
        f"    flux: {b.flux:g}",
        f"    transmission: {b.transmission:g}",
        f"    s0: {_braces(b.s0)}",
        "",
    ]
    centre = _beam_centre_px(experiment)
    if centre is None:
        return lines + ["Beam centre: the beam does not meet the detector plane", ""]
    x_px, y_px = centre
    x_mm, y_mm = experiment.detector.pixel_to_mm(centre)
    lines += ["Beam centre: ", f"    mm: ({x_mm:.2f},{y_mm:.2f})", f"    px: ({x_px:.2f},{y_px:.2f})", ""]
    return lines


def _scan_lines(experiment: Experiment) -> list[str]:
    s = experiment.scan
    exposure = s.exposure_times[0] if len(s.exposure_times) else 0.0
    lines = [
        "Scan:",
        f"    number of images:   {s.num_images}",
        f"    image range:   {_braces(s.image_range)}",
        f"    oscillation:   {_braces(s.oscillation)}",
        f"    exposure time: {exposure:g}",
    ]
    for identifier, ranges in s.valid_image_ranges.items():
        lines.append(f"    valid image ranges ({identifier}): " + ", ".join(_braces(r) for r in ranges))
    return lines + [""]


def _goniometer_lines(experiment: Experiment) -> list[str]:
    g = experiment.goniometer
    lines = [
        "Goniometer:",
        f"    Rotation axis:   {_braces(g.rotation_axis)}",
        f"    Fixed rotation:  {_braces(g.fixed_rotation)}",
        f"    Setting rotation:{_braces(g.setting_rotation)}",
    ]
    if g.setting_rotation_at_scan_points is not None:
        lines.append(f"    Setting rotation sampled at {len(g.setting_rotation_at_scan_points)} scan points")
    return lines + [""]


def _crystal_lines(experiment: Experiment) -> list[str]:
    c = experiment.crystal
    cell = c.unit_cell
    lines = [
        "Crystal:",
        "    Unit cell: (" + ", ".join(f"{v:.3f}" for v in cell.parameters) + ")",
        f"    Space group: {c.space_group.xhm()}",
    ]
    lines += _matrix("U matrix:  ", c.U) + _matrix("B matrix:  ", c.B) + _matrix("A = UB:    ", c.A)
    if c.num_scan_points:
        lines.append(f"    A sampled at {c.num_scan_points} scan points")
    return lines + [""]


def format_experiments(experiments: Sequence[Experiment]) -> str:
    """The dials.show text for a list of experiments."""
    lines: list[str] = []
    for index, experiment in enumerate(experiments):
        lines.append(f"Experiment {index}:")
        if experiment.identifier:
            lines.append(f"Experiment identifier: {experiment.identifier}")
        if experiment.imageset.get("format_class"):
            lines.append(f"Format class: {experiment.imageset['format_class']}")
        if experiment.imageset.get("template"):
            lines.append(f"Image template: {experiment.imageset['template']}")
        lines += _detector_lines(experiment) + _beam_lines(experiment)
        if experiment.scan is not None:
            lines += _scan_lines(experiment)
        if experiment.goniometer is not None:
            lines += _goniometer_lines(experiment)
        if experiment.crystal is not None:
            lines += _crystal_lines(experiment)
    return "\n".join(lines)


def run(experiments: Sequence[Experiment], reflections: ReflectionTable | None = None,
        params: Params | None = None) -> StepResult:
    """Nothing changes; the summary holds the text."""
    return StepResult(experiments=list(experiments), reflections=reflections,
                      summary={"text": format_experiments(experiments)})


def cli(params: Params, files: list[str]) -> None:
    """``ewald show imported.expt`` or ``ewald show <image files>``."""
    from pipeline.errors import InputFileError
    from pipeline.formats.expt import read_experiments
    from pipeline.images import import_experiments

    expt_files = [f for f in files if f.endswith(".expt")]
    image_inputs = [f for f in files if not f.endswith(".expt")]
    if not files:
        raise InputFileError("show: no input; give an experiment file (imported.expt) or image files")
    experiments: list[Experiment] = []
    for path in expt_files:
        experiments += read_experiments(Path(path))
    if image_inputs:
        experiments += import_experiments(image_inputs)
    logger.info(run(experiments, None, params).summary["text"])
