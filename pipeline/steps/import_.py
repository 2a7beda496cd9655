"""``ewald import``: image files → ``imported.expt`` (the equivalent of ``dials.import``).

Reads only image headers, builds the beam, detector, goniometer and scan models as dxtbx's
format classes do (see :mod:`pipeline.images`) and applies the user's geometry overrides with
dxtbx's rules:

- ``distance=`` moves the panel along its normal, keeping its axes and the in-plane part of
  its origin (the beam centre in pixels is unchanged);
- ``slow_fast_beam_centre=`` (pixels) and ``mosflm_beam_centre=`` (mm, slow then fast, as
  dxtbx's ``set_mosflm_beam_centre``) move the panel in its own plane;
- ``goniometer.axis=`` replaces the rotation-axis datum (any length; normalised), then
  ``invert_rotation_axis=True`` reverses it; ``axis=auto`` (and ``distance=auto``) keep the
  header values and record the request in the imageset for the ``process`` step to resolve;
- ``oscillation=`` replaces the scan's (start, width); ``image_range=`` imports a part.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from algorithms.geometry.models import Experiment
from pipeline.errors import ParameterError
from pipeline.images import default_cache_path, import_experiments, write_zarr_cache
from pipeline.params import param, scope
from pipeline.steps import StepResult

NAME = "import"
HELP = "Read image headers and write the experimental models (imported.expt), as dials.import."

logger = logging.getLogger(__name__)


@dataclass
class BeamGeometry:
    wavelength: float | None = param(None, "Override the wavelength (Å) of the image headers.")


@dataclass
class DetectorGeometry:
    distance: float | Literal["auto"] | None = param(
        None, "Override the detector distance (mm), keeping the beam centre in pixels; "
              "'auto' keeps the header value and lets 'process' find it from a known cell.")
    slow_fast_beam_centre: tuple[float, ...] | None = param(
        None, "Override the beam centre (pixels, slow then fast; an optional third value is the panel, 0).")


@dataclass
class GoniometerGeometry:
    axis: tuple[float, ...] | Literal["auto"] | None = param(
        None, "Override the rotation axis (x,y,z in the lab frame, any length; it is normalised); "
              "'auto' keeps the header axis and lets 'process' find direction and sense from the images.")
    invert_rotation_axis: bool = param(False, "Reverse the sense of rotation (negate the axis).")


@dataclass
class ScanGeometry:
    image_range: tuple[int, int] | None = param(None, "Import only images first,last (file numbers, inclusive).")
    oscillation: tuple[float, float] | None = param(None, "Override the scan's start angle and oscillation width (degrees).")


@dataclass
class Geometry:
    beam: BeamGeometry = scope(BeamGeometry, "Beam overrides.")
    detector: DetectorGeometry = scope(DetectorGeometry, "Detector overrides.")
    goniometer: GoniometerGeometry = scope(GoniometerGeometry, "Goniometer overrides.")
    scan: ScanGeometry = scope(ScanGeometry, "Scan overrides.")
    mosflm_beam_centre: tuple[float, float] | None = param(
        None, "Override the beam centre in the Mosflm convention (mm, slow then fast).")


@dataclass
class Output:
    experiments: str = param("imported.expt", "The output experiment file.")


@dataclass
class Params:
    geometry: Geometry = scope(Geometry, "Overrides of the models read from the image headers.")
    mask_timepix_cross: bool = param(
        False, "Mask the 6-pixel 'virtual' cross (rows and columns 255–260) of 516×516 Timepix images, "
               "as dxtbx does since 2024; False reproduces DIALS 3.5.")
    cache: str | None = param(
        None, "'zarr' writes the images once to a compressed zarr store beside the output "
              "experiments (or give a folder for the store); later steps read from it.")
    output: Output = scope(Output, "Output files.")


def _axis_from(values: Sequence[float]) -> np.ndarray:
    axis = np.asarray(values, dtype=float)
    if axis.shape != (3,) or not np.linalg.norm(axis) > 0:
        raise ParameterError(
            f"goniometer.axis={','.join(map(str, values))}: give three numbers, not all zero, e.g. goniometer.axis=-107,-122,0")
    return axis / np.linalg.norm(axis)


def apply_overrides(experiment: Experiment, geometry: Geometry) -> Experiment:
    """A copy of ``experiment`` with the geometry overrides applied (dxtbx's rules)."""
    experiment = experiment.copy()
    beam, detector, goniometer, scan = experiment.beam, experiment.detector, experiment.goniometer, experiment.scan
    requests = experiment.imageset.setdefault("params", {})
    if geometry.beam.wavelength is not None:
        if not geometry.beam.wavelength > 0:
            raise ParameterError(f"wavelength={geometry.beam.wavelength}: the wavelength must be positive (Å)")
        beam.wavelength = float(geometry.beam.wavelength)
    distance = geometry.detector.distance
    if distance == "auto":
        requests["distance"] = "auto"
    elif distance is not None:
        if not distance > 0:
            raise ParameterError(f"distance={distance}: the detector distance must be positive (mm)")
        detector.set_distance_mm(float(distance))
    if geometry.mosflm_beam_centre is not None:
        slow_mm, fast_mm = geometry.mosflm_beam_centre
        detector.set_beam_centre_mm(fast_mm, slow_mm, beam.s0)
    elif geometry.detector.slow_fast_beam_centre is not None:
        centre = geometry.detector.slow_fast_beam_centre
        if len(centre) not in (2, 3) or (len(centre) == 3 and centre[2] != 0):
            raise ParameterError(
                f"slow_fast_beam_centre={','.join(map(str, centre))}: give slow,fast in pixels (and optionally panel 0)")
        detector.set_beam_centre_px(centre[1], centre[0], beam.s0)
    axis = geometry.goniometer.axis
    if axis == "auto":
        requests["goniometer_axis"] = "auto"
    elif axis is not None:
        goniometer.rotation_axis = _axis_from(axis)
    if geometry.goniometer.invert_rotation_axis:
        goniometer.invert()
    if geometry.scan.oscillation is not None:
        start, width = geometry.scan.oscillation
        if width == 0:
            raise ParameterError("oscillation: the oscillation width must not be 0")
        scan.oscillation = (float(start), float(width))
    return experiment


def run(files: Sequence[str | Path], params: Params) -> StepResult:
    """Import image files (files, folders, globs or ``#####`` templates) into experiments."""
    experiments = import_experiments(
        files, image_range=params.geometry.scan.image_range, mask_timepix_cross=params.mask_timepix_cross,
        check_rotation=params.geometry.scan.oscillation is None)  # an override replaces the headers' angles
    experiments = [apply_overrides(e, params.geometry) for e in experiments]
    if params.cache is not None:
        folder = Path(params.output.experiments).parent if params.cache == "zarr" else Path(params.cache)
        folder.mkdir(parents=True, exist_ok=True)
        for experiment in experiments:
            store = write_zarr_cache(experiment, default_cache_path(experiment, folder))
            experiment.imageset["cache"] = str(store.resolve())
    summary = {
        "sequences": [
            {
                "format_class": e.imageset["format_class"],
                "template": e.imageset["template"],
                "image_range": list(e.scan.image_range),
                "num_images": e.scan.num_images,
                "oscillation_deg": list(e.scan.oscillation),
                "wavelength_A": e.beam.wavelength,
                "distance_mm": e.detector.distance_mm,
                "beam_centre_px": list(e.detector.beam_centre_px(e.beam.s0)),
                "rotation_axis": e.goniometer.rotation_axis.tolist(),
                "cache": e.imageset.get("cache"),
            }
            for e in experiments
        ]
    }
    return StepResult(experiments=experiments, summary=summary)


def format_import_summary(summary: dict) -> str:
    """The block dials.import prints after reading the images."""
    rule = "-" * 80
    lines = [rule]
    formats = sorted({s["format_class"] for s in summary["sequences"]})
    lines.append(f"  format: {', '.join(formats)}")
    for s in summary["sequences"]:
        first, last = s["image_range"]
        lines.append(f"  template: {s['template']}:{first}:{last}")
    lines.append(f"  num images: {sum(s['num_images'] for s in summary['sequences'])}")
    lines += ["  sequences:", "    still:    0", f"    sweep:    {len(summary['sequences'])}", "  num stills: 0", rule]
    return "\n".join(lines)


def cli(params: Params, files: list[str]) -> None:
    """Import ``files`` and write ``output.experiments`` (atomically: nothing on error)."""
    from pipeline.formats.expt import write_experiments

    result = run(files, params)
    logger.info(format_import_summary(result.summary))
    logger.info("Writing experiments to %s", params.output.experiments)
    write_experiments(result.experiments, params.output.experiments)
