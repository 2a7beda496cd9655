"""``ewald image``: one image, or a max/mean stack of images, as a PNG with the overlays a user
of ``dials.image_viewer`` looks at.

``ewald image imported.expt [strong.refl] image=1 stack=72 stack_type=max output=max.png``

The stack is one Dask reduction over the lazy image stack (one task per chunk of whole images
for the reduction, the strong pixels and the untrusted pixels together; only three 2D arrays
leave the chunks). Overlays (pipeline.views):

- threshold pixels: DIALS' dispersion_extended threshold (find_spots' defaults, same
  ``threshold.*`` parameters) applied to each shown image; a pixel strong on any of them is painted
  (for one image this is exactly the viewer's "threshold pixels" mode; for a stack it is what
  find_spots sees on those images, which the threshold of a max image would not be);
- found spots: centroids of the spots of strong.refl whose bounding box overlaps the shown images;
- the beam centre; resolution rings labelled in Å, exact conics of the diffraction cones;
- the projection of the rotation axis through the beam centre: the max-stack of a sweep has a
  spot-free band along it, so a wrong axis shows at once (algorithms.md §10);
- masked pixels (panel mask rectangles, and values outside the trusted range on any shown image).

Brightness is automatic (99th percentile of the valid pixels at full scale, so a bright centre
does not hide the spots); ``brightness=`` scales it as dials.image_viewer's brightness (percent).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import dask
import numpy as np

from algorithms.geometry.models import Experiment
from algorithms.reflection_table import ReflectionTable
from algorithms.spotfinding import DispersionParameters, dispersion_threshold_mask, static_mask
from pipeline.errors import InputFileError, ParameterError
from pipeline.images import open_image_stack
from pipeline.params import param, scope
from pipeline.steps import StepResult
from pipeline.steps import find_spots
from pipeline.steps.find_spots import DEFAULT_CHUNK_IMAGES, Mp, Threshold
from pipeline.views.detector_png import COLOUR_SCHEMES, DetectorPicture, Ring, auto_display_maximum, render_png
from pipeline.views.overlays import (
    resolution_ring_px,
    ring_d_spacings,
    ring_label_position,
    rotation_axis_line_px,
    spots_on_images,
)

NAME = "image"
HELP = "Render an image or a max/mean stack of images with strong pixels, spots, rings, beam centre and rotation axis (PNG)."

logger = logging.getLogger(__name__)

# labels go on the ring point up and to the right of the beam centre (fast +, slow −)
_LABEL_DIRECTION = (1.0, -1.0)
# PNGs of about this many pixels across by default
_DEFAULT_PNG_WIDTH = 1200


@dataclass
class Rings:
    number: int = param(5, "Number of resolution rings, evenly spaced in 1/d² out to d_min.")
    d_spacings: tuple[float, ...] | None = param(None, "Draw rings at these d-spacings (Å) instead; None = evenly spaced.")


@dataclass
class Params:
    image: int | None = param(None, "Image number (as in the file names) of the first image shown; None = the scan's first image.")
    stack: int = param(1, "Combine this many images from image= on (dials.image_viewer's stack_images).")
    stack_type: Literal["max", "mean"] = param("max", "How a stack is combined: the maximum or the mean of each pixel.")
    experiment_id: int = param(0, "Which experiment (0-based) of the experiment file to show.")
    threshold_pixels: bool = param(True, "Paint the strong pixels (dispersion threshold) of the shown images.")
    threshold: Threshold = scope(Threshold, "The strong-pixel threshold (find_spots' parameters and defaults).")
    show_spots: bool = param(True, "Circle the found spots (strong.refl) seen on the shown images.")
    show_beam_centre: bool = param(True, "Mark the beam centre with a cross.")
    show_rotation_axis: bool = param(True, "Draw the projection of the rotation axis through the beam centre.")
    show_mask: bool = param(True, "Shade masked and untrusted pixels.")
    resolution_rings: bool = param(True, "Draw resolution rings labelled with their d-spacing.")
    rings: Rings = scope(Rings, "Resolution rings.")
    d_min: float | None = param(None, "Resolution (Å) of the outermost ring; None = the best resolution on the panel.")
    brightness: float = param(100.0, "Brightness in percent of the automatic setting (200 = twice as bright).")
    colour_scheme: Literal["greyscale", "inverse", "heatmap"] = param(
        "greyscale", "greyscale: dark spots on white; inverse: white spots on black; heatmap: black-red-yellow-white.")
    scale: int | None = param(None, "PNG pixels per detector pixel; None = about 1200 PNG pixels across.")
    mp: Mp = scope(Mp, "Parallel processing.")
    output: str = param("image.png", "The PNG file to write.")


# ----------------------------------------------------------------------------------- reading


def _strong_in_any_image(block: np.ndarray, mask: np.ndarray, parameters: DispersionParameters,
                         trusted_range: tuple[float, float], pedestal: float, gain: float) -> np.ndarray:
    """(1, n_slow, n_fast): pixels strong on any image of the chunk."""
    strong = np.zeros(block.shape[1:], dtype=bool)
    for image in block:
        strong |= dispersion_threshold_mask(image, mask, parameters, trusted_range=trusted_range,
                                            pedestal=pedestal, panel_gain=gain)
    return strong[None]


@dataclass
class StackedImages:
    image: np.ndarray  # max or mean, (n_slow, n_fast)
    strong: np.ndarray | None  # strong on any shown image
    untrusted: np.ndarray  # outside the trusted range on any shown image


def stacked_images(experiment: Experiment, first_image: int, last_image: int, stack_type: str,
                   panel_mask: np.ndarray, threshold: DispersionParameters | None,
                   chunk_images: int = DEFAULT_CHUNK_IMAGES) -> StackedImages:
    """Reduce images ``first_image``…``last_image`` (file numbers) with one Dask computation."""
    detector = experiment.detector
    offset = first_image - experiment.scan.image_range[0]
    counts = open_image_stack(experiment, chunk_images=chunk_images).data[offset : offset + last_image - first_image + 1]
    combined = counts.max(axis=0) if stack_type == "max" else counts.mean(axis=0, dtype=np.float64)
    low, high = detector.trusted_range
    untrusted = ((counts <= low) | (counts >= high)).any(axis=0)  # DIALS 3.5: the range is exclusive
    strong = None
    if threshold is not None:
        per_chunk = counts.map_blocks(
            _strong_in_any_image, panel_mask, threshold, detector.trusted_range, detector.pedestal, detector.gain,
            dtype=bool, chunks=((1,) * counts.numblocks[0],) + counts.chunks[1:])
        strong = per_chunk.any(axis=0)
    image, untrusted, strong = dask.compute(combined, untrusted, strong)
    return StackedImages(np.asarray(image, dtype=np.float64), strong, untrusted)


# ------------------------------------------------------------------------------------- the step


def _dispersion_parameters(threshold: Threshold) -> DispersionParameters:
    """find_spots' mapping of the threshold parameters, applied to this step's ``threshold``."""
    spot_finding = find_spots.Params()
    spot_finding.spotfinder.threshold = threshold
    return find_spots.dispersion_parameters(spot_finding)


def _image_range(experiment: Experiment, params: Params) -> tuple[int, int]:
    first_scan, last_scan = experiment.scan.image_range
    first = first_scan if params.image is None else params.image
    if not first_scan <= first <= last_scan:
        raise ParameterError(f"image={first}: the sweep has images {first_scan}–{last_scan}; give an image number among them")
    if params.stack < 1:
        raise ParameterError(f"stack={params.stack}: give the number of images to combine (at least 1)")
    return first, min(first + params.stack - 1, last_scan)


def _rings(experiment: Experiment, params: Params, beam_centre_px) -> list[Ring]:
    detector, s0 = experiment.detector, experiment.beam.s0
    if params.rings.d_spacings:
        spacings = sorted((float(d) for d in params.rings.d_spacings), reverse=True)
    else:
        d_min = params.d_min if params.d_min is not None else detector.max_resolution(s0)
        if not d_min > 0:
            raise ParameterError(f"d_min={d_min}: give a positive resolution in Å")
        spacings = ring_d_spacings(d_min, params.rings.number)
    margin = 0.04 * max(detector.image_size)
    centre = beam_centre_px or (detector.image_size[0] / 2, detector.image_size[1] / 2)
    rings = []
    for d in spacings:
        polylines = resolution_ring_px(detector, s0, d)
        rings.append(Ring(d, polylines, ring_label_position(polylines, detector.image_size, margin, _LABEL_DIRECTION, centre)))
    return rings


def _beam_centre_px(experiment: Experiment) -> tuple[float, float] | None:
    xy_mm, front = experiment.detector.ray_intersection_mm(experiment.beam.s0)
    return tuple(float(v) for v in experiment.detector.mm_to_pixel(xy_mm)) if front else None


def _select_experiment(experiments: list[Experiment], experiment_id: int) -> Experiment:
    if not experiments:
        raise InputFileError("no experiments to show; give an imported.expt")
    if not 0 <= experiment_id < len(experiments):
        raise ParameterError(f"experiment_id={experiment_id}: the file has experiments 0–{len(experiments) - 1}")
    experiment = experiments[experiment_id]
    if experiment.scan is None or not experiment.imageset.get("template"):
        raise InputFileError(f"experiment {experiment_id} has no image sweep (scan and image template); give the imported.expt of a rotation sweep")
    return experiment


def run(experiments: list[Experiment], reflections: ReflectionTable | None, params: Params) -> StepResult:
    """Render the chosen images; ``summary["png"]`` holds the PNG bytes, the rest describes them."""
    experiment = _select_experiment(experiments, params.experiment_id)
    if params.brightness <= 0:
        raise ParameterError(f"brightness={params.brightness}: give a positive percentage (100 = automatic)")
    if params.colour_scheme not in COLOUR_SCHEMES:
        raise ParameterError(f"colour_scheme={params.colour_scheme}: choose one of {', '.join(COLOUR_SCHEMES)}")
    first, last = _image_range(experiment, params)
    chunk_images = params.mp.chunksize or DEFAULT_CHUNK_IMAGES
    detector, s0 = experiment.detector, experiment.beam.s0
    panel_mask = static_mask(detector, s0)
    threshold = _dispersion_parameters(params.threshold) if params.threshold_pixels else None
    stacked = stacked_images(experiment, first, last, params.stack_type, panel_mask, threshold, chunk_images)
    masked = ~panel_mask | stacked.untrusted

    beam_centre = _beam_centre_px(experiment)
    z_range = (first - 1, last)  # 0-based, half-open: image k covers z ∈ [k−1, k)
    spots = spots_on_images(reflections, params.experiment_id, z_range) if params.show_spots else np.zeros((0, 2))
    axis_line = None
    if params.show_rotation_axis and experiment.goniometer is not None:
        axis_line = rotation_axis_line_px(detector, s0, experiment.goniometer.rotation_axis_lab)
    what = f"image {first}" if first == last else f"{params.stack_type} of images {first}–{last}"
    picture = DetectorPicture(
        image=stacked.image,
        masked=masked if params.show_mask else None,
        strong=stacked.strong,
        spots_px=spots,
        rings=_rings(experiment, params, beam_centre) if params.resolution_rings else [],
        beam_centre_px=beam_centre if params.show_beam_centre else None,
        axis_line=axis_line,
        title=what,
    )
    scale = params.scale if params.scale is not None else max(1, round(_DEFAULT_PNG_WIDTH / max(detector.image_size)))
    if scale < 1:
        raise ParameterError(f"scale={scale}: give at least 1 PNG pixel per detector pixel")
    display_maximum = auto_display_maximum(stacked.image, ~masked)
    png = render_png(picture, params.colour_scheme, params.brightness, display_maximum, scale)
    summary = {
        "png": png,
        "experiment_id": params.experiment_id,
        "images": (first, last),
        "description": what,
        "display_maximum": display_maximum,
        "n_strong_pixels": int(stacked.strong.sum()) if stacked.strong is not None else None,
        "n_masked_pixels": int(masked.sum()),
        "n_spots_shown": int(len(spots)),
        "ring_d_spacings": [ring.d_angstrom for ring in picture.rings],
        "beam_centre_px": beam_centre,
        "rotation_axis_px": None if axis_line is None else (axis_line.start_px, axis_line.end_px),
        "scale": scale,
    }
    return StepResult(experiments=experiments, reflections=reflections, summary=summary)


def format_image_log(summary: dict) -> str:
    lines = [f"Experiment {summary['experiment_id']}: {summary['description']}",
             f"Full scale (brightness 100): {summary['display_maximum']:.1f} counts"]
    if summary["n_strong_pixels"] is not None:
        lines.append(f"Strong pixels (dispersion threshold, on any shown image): {summary['n_strong_pixels']}")
    lines.append(f"Masked or untrusted pixels: {summary['n_masked_pixels']}")
    lines.append(f"Spots shown: {summary['n_spots_shown']}")
    if summary["ring_d_spacings"]:
        lines.append("Resolution rings (Å): " + ", ".join(f"{d:g}" for d in summary["ring_d_spacings"]))
    if summary["beam_centre_px"] is not None:
        lines.append("Beam centre (px): ({:.2f}, {:.2f})".format(*summary["beam_centre_px"]))
    if summary["rotation_axis_px"] is not None:
        (x0, y0), (x1, y1) = summary["rotation_axis_px"]
        lines.append(f"Rotation axis projection (px): ({x0:.1f}, {y0:.1f}) → ({x1:.1f}, {y1:.1f}) (+axis end last)")
    return "\n".join(lines)


def cli(params: Params, files: list[str]) -> None:
    """``ewald image imported.expt [strong.refl] ...``: write ``output`` and log its path."""
    from pipeline.formats.expt import read_experiments, write_bytes_atomically
    from pipeline.formats.refl import read_reflections

    expt_files = [f for f in files if f.endswith(".expt")]
    refl_files = [f for f in files if f.endswith(".refl")]
    others = [f for f in files if f not in expt_files and f not in refl_files]
    if not expt_files or others or len(refl_files) > 1:
        raise InputFileError("give one experiment file and optionally one reflection file, e.g. "
                             "ewald image imported.expt strong.refl stack=72")
    experiments = [e for path in expt_files for e in read_experiments(path)]
    reflections = read_reflections(refl_files[0]) if refl_files else None
    result = run(experiments, reflections, params)
    logger.info(format_image_log(result.summary))
    write_bytes_atomically(params.output, result.summary["png"])
    logger.info("Wrote %s", params.output)
