"""``ewald find_spots``: imported.expt → strong.refl (the equivalent of ``dials.find_spots``).

The Dask graph per sweep: the image stack's chunks of whole images, one task per chunk that
thresholds its images and labels their strong pixels in 3D (:func:`strong_pixels_in_chunk`,
numba, GIL released), and one reduce that joins spots across chunk boundaries and builds the
table (:func:`join_chunks`, :func:`spots_from_strong_pixels`). Only the sparse strong pixels
leave a chunk task; the result does not depend on the chunk size.

Parameters, defaults and log lines are DIALS' (algorithms.md §3).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dask
import numpy as np

from algorithms.geometry.models import Experiment
from algorithms.reflection_table import ReflectionTable
from algorithms.spotfinding import (
    DispersionParameters,
    FoundSpots,
    SpotFilter,
    default_min_spot_size,
    join_chunks,
    spot_counts_per_image_histogram,
    spots_from_strong_pixels,
    StrongPixels,
    ring_map,
    static_mask,
    strong_pixels_in_chunk,
    WeakSpotParameters,
    with_weak_spots,
)
from pipeline.errors import InputFileError, ParameterError
from pipeline.images import open_image_stack
from pipeline.params import param, scope
from pipeline.steps import StepResult

NAME = "find_spots"
HELP = "Find strong spots on every image and write them (strong.refl), as dials.find_spots."

logger = logging.getLogger(__name__)
RULE = "-" * 80


@dataclass
class Dispersion:
    gain: float | None = param(None, "Detector gain for the Poisson statistics; None = 1.")
    kernel_size: tuple[int, int] = param((3, 3), "Half-widths of the local window, slow then fast (3,3 → 7×7 pixels).")
    sigma_background: float = param(6.0, "Index-of-dispersion threshold (σ) for pixels to count as non-background.")
    sigma_strong: float = param(3.0, "Threshold (σ above the local background mean) for a strong pixel.")
    min_local: int = param(2, "Minimum number of unmasked pixels in the window; ≤ 0 = the whole window.")
    global_threshold: float = param(0.0, "Strong pixels must exceed this value (counts).")


@dataclass
class WeakSpots:
    enable: bool = param(
        False, "Find spots with a 3D matched filter (a Gaussian in x, y and image number) as well: reflections "
        "spread over many images and pixels, each too faint for the per-pixel test, and bright ones whole where "
        "that test keeps pieces of their rocking curves; the per-pixel test's spots stay where the filter has "
        "none. On simulated myd88 sweeps (d_max=20): reflections of summed I/σ ≥ 5 found 95.2 % (25 % "
        "without), of best-image I/σ ≥ 5 97.8 % (32 %), 2.9 % of the spots spurious (2.5 %). Costs ~8× the "
        "CPU of the per-pixel test alone (60 against 459 images per CPU-second, 516×516 images).")
    sigma_px: float = param(2.0, "σ of the filter in x and y (pixels): about the spots' own.")
    sigma_images: float = param(1.0, "σ of the filter across images: about the rocking curve's width in images.")
    background_half_width: int = param(10, "Half-width (pixels) of the window the background is averaged over.")
    sigma_strong: float = param(5.0, "Threshold: standard deviations of the filtered counts above the background.")
    min_prominence: float = param(
        1.0, "A component of the filter's pixels is split at each peak of its statistic that rises at least this "
             "many σ (and relative_prominence of itself) above where it meets a higher one: reflections that "
             "follow each other on the same pixels a few images apart become separate spots.")
    relative_prominence: float = param(0.1, "The split's second condition, as a fraction of the lower peak (0 to <1).")
    ring_correction: bool = param(
        True, "Take each ring's mean statistic about the beam off its pixels: background features with the "
              "beam's symmetry that the window mean cannot follow (a diffuse solvent ring, the curvature of the "
              "inelastic peak). Real cRED lysozyme (reference find_spots parameters): spots that the reference "
              "cell indexes 2154 -> 2214 and 1302 -> 1364, those it does not 586 -> 366 and 458 -> 396 (at the "
              "first crystal's diffuse ring, 3.6-4.0 Å, 45 % -> 15 %).")


@dataclass
class Threshold:
    algorithm: Literal["dispersion", "dispersion_extended"] = param(
        "dispersion_extended", "The strong-pixel threshold: DIALS' classic index-of-dispersion test or its "
                               "extended form (dispersion regions eroded, background from the rest).")
    dispersion: Dispersion = scope(Dispersion, "Parameters of both dispersion algorithms.")
    weak_spots: WeakSpots = scope(WeakSpots, "Weak spots spread over images (beyond DIALS; off by default).")


@dataclass
class Untrusted:
    rectangle: tuple[int, int, int, int] | None = param(None, "A masked rectangle x0,x1,y0,y1 (pixels, end exclusive).")
    circle: tuple[float, float, float] | None = param(None, "A masked circle x,y,radius (pixels).")


@dataclass
class Filter:
    d_min: float | None = param(None, "Mask pixels with resolution below d_min (Å) before thresholding.")
    d_max: float | None = param(None, "Mask pixels with resolution above d_max (Å) before thresholding.")
    min_spot_size: int | None = param(None, "Smallest spot kept (pixels); None = 3 for pixel-array detectors, else 6.")
    max_spot_size: int = param(1000, "Largest spot kept (pixels).")
    max_separation: float = param(2.0, "Largest distance (pixels, images) between a spot's brightest voxel and its centroid.")
    max_strong_pixel_fraction: float = param(
        0.25, "An image with more strong pixels than this fraction is left out with a warning (DIALS fails).")
    border: int = param(0, "Mask this many pixels at the edges of the detector.")
    untrusted: list[Untrusted] = scope(Untrusted, "Regions of the detector to mask.", multiple=True)


@dataclass
class Lookup:
    mask: str | None = param(None, "A user mask: a .npy boolean array (slow, fast), True = use the pixel.")


@dataclass
class Mp:
    chunksize: int | None = param(None, "Images per Dask task; None = 8. Results do not depend on it.")


@dataclass
class Spotfinder:
    threshold: Threshold = scope(Threshold, "Strong-pixel threshold.")
    filter: Filter = scope(Filter, "Masks and spot filters.")
    lookup: Lookup = scope(Lookup, "Lookup files.")
    mp: Mp = scope(Mp, "Parallel processing.")


@dataclass
class Output:
    reflections: str = param("strong.refl", "The output reflection file.")
    shoeboxes: bool = param(True, "Save the strong pixels of each spot (needed to model profiles in integration).")


@dataclass
class Params:
    spotfinder: Spotfinder = scope(Spotfinder, "Spot finding.")
    output: Output = scope(Output, "Output files.")


DEFAULT_CHUNK_IMAGES = 8


# ------------------------------------------------------------------------------------ params


def dispersion_parameters(params: Params) -> DispersionParameters:
    threshold = params.spotfinder.threshold
    d = threshold.dispersion
    try:
        return DispersionParameters(
            algorithm=threshold.algorithm, gain=d.gain, kernel_size=tuple(d.kernel_size),
            sigma_background=d.sigma_background, sigma_strong=d.sigma_strong, min_local=d.min_local,
            global_threshold=d.global_threshold,
        )
    except ValueError as error:
        raise ParameterError(f"spotfinder.threshold: {error}") from None


def weak_spot_parameters(params: Params) -> WeakSpotParameters | None:
    """The weak-spot filter's parameters, or None when it is off."""
    w = params.spotfinder.threshold.weak_spots
    if not w.enable:
        return None
    try:
        return WeakSpotParameters(sigma_px=w.sigma_px, sigma_images=w.sigma_images,
                                  background_half_width=w.background_half_width, sigma_strong=w.sigma_strong,
                                  min_prominence=w.min_prominence, relative_prominence=w.relative_prominence)
    except ValueError as error:
        raise ParameterError(f"spotfinder.threshold.weak_spots: {error}") from None


def _user_mask(path: str | None, detector) -> np.ndarray | None:
    if path is None:
        return None
    if Path(path).suffix != ".npy":
        raise ParameterError(f"lookup.mask={path}: give the mask as a .npy boolean array (slow, fast), True = use")
    try:
        mask = np.load(path)
    except (OSError, ValueError) as error:
        raise InputFileError(f"{path}: cannot read the mask ({error}); give a .npy boolean array") from None
    n_fast, n_slow = detector.image_size
    if mask.shape != (n_slow, n_fast):
        raise InputFileError(f"{path}: the mask is {mask.shape} (slow, fast) but the detector has {(n_slow, n_fast)} pixels")
    return mask.astype(bool)


def experiment_mask(experiment: Experiment, params: Params) -> np.ndarray:
    """The static pixel mask of a sweep: panel and user masks, border and resolution limits."""
    f = params.spotfinder.filter
    return static_mask(
        experiment.detector, experiment.beam.s0, d_min=f.d_min, d_max=f.d_max, border=f.border,
        untrusted_rectangles=[u.rectangle for u in f.untrusted if u.rectangle is not None],
        untrusted_circles=[u.circle for u in f.untrusted if u.circle is not None],
        user_mask=_user_mask(params.spotfinder.lookup.mask, experiment.detector),
    )


def spot_filter(experiment: Experiment, params: Params) -> SpotFilter:
    f = params.spotfinder.filter
    min_size = f.min_spot_size if f.min_spot_size is not None else default_min_spot_size(experiment.detector.type)
    return SpotFilter(min_spot_size=min_size, max_spot_size=f.max_spot_size, max_separation=f.max_separation)


# --------------------------------------------------------------------------------- the graph


def _spots_of_sweep(chunks, weak_chunks, image_size: tuple[int, int], spot_limits: SpotFilter, experiment_id: int,
                    identifier: str, shoeboxes: bool, weak_spots: WeakSpotParameters | None = None) -> FoundSpots:
    n_fast, n_slow = image_size
    pixels = join_chunks(list(chunks), n_fast)
    if weak_chunks:
        pixels = with_weak_spots(pixels, join_chunks(list(weak_chunks), n_fast), n_slow, n_fast, weak_spots)
    return spots_from_strong_pixels(pixels, spot_limits, panel=0, experiment_id=experiment_id,
                                    identifier=identifier or None, shoeboxes=shoeboxes)


def weak_pixels_in_chunk(before: Sequence[np.ndarray], block: np.ndarray, after: Sequence[np.ndarray],
                         strong_chunks: Sequence[StrongPixels], halo: int, first_z: int, *args, **kwargs):
    """:func:`strong_pixels_in_chunk` with the weak-spot filter for ``block``, given the blocks
    before and after it (their ``halo`` images nearest to it feed the filter; chunks shorter
    than the halo need several) and the per-pixel test's results for all those blocks (the
    images it rejected are left out)."""
    empty = block[:0]
    preceding = np.concatenate([empty, *before])
    before = preceding[max(0, len(preceding) - halo):]
    after = np.concatenate([empty, *after])[:halo]
    stack = np.concatenate([before, block, after])
    rejected = np.concatenate([c.rejected_images for c in strong_chunks])
    start = len(preceding) - len(before)
    return strong_pixels_in_chunk(stack, first_z, *args, halo_before=len(before), halo_after=len(after),
                                  excluded_images=rejected[start:start + len(stack)], **kwargs)


def find_spots_graph(experiment: Experiment, params: Params, experiment_id: int = 0, name: str | None = None):
    """A Delayed FoundSpots for one sweep: one task per image chunk (two with the weak-spot
    filter, keyed ``…-weak-<chunk>``, which also read the neighbouring chunks' nearest images)
    plus one reduce. With a
    ``name`` (say ``ds3``) the tasks are keyed ``find_spots-ds3-<chunk>`` and ``find_spots-ds3``, so
    the dashboard says whose they are; the name must then be unique among the graphs of a run."""
    chunk_images = params.spotfinder.mp.chunksize
    chunk_images = DEFAULT_CHUNK_IMAGES if chunk_images is None else chunk_images
    if chunk_images < 1:
        raise ParameterError(f"mp.chunksize={chunk_images}: give at least 1 image per chunk")
    stack = open_image_stack(experiment, chunk_images=chunk_images)
    # one task builds the mask on a worker; the chunk tasks share it (not a copy in every task)
    mask = dask.delayed(experiment_mask, pure=True)(
        experiment, params, **({} if name is None else {"dask_key_name": f"find_spots-mask-{name}"}))
    detector = experiment.detector
    threshold = dispersion_parameters(params)
    first_z = experiment.scan.array_range[0]
    starts = np.cumsum((0,) + stack.data.chunks[0][:-1])
    find_in_chunk = dask.delayed(strong_pixels_in_chunk, pure=True)

    def key(suffix: str = "") -> dict:
        return {} if name is None else {"dask_key_name": f"find_spots-{name}{suffix}"}

    blocks = list(stack.data.to_delayed().ravel())
    max_fraction = params.spotfinder.filter.max_strong_pixel_fraction
    chunks = [
        find_in_chunk(block, first_z + int(start), mask, threshold, detector.trusted_range, detector.pedestal,
                      detector.gain, max_strong_pixel_fraction=max_fraction, **key(f"-{k}"))
        for k, (block, start) in enumerate(zip(blocks, starts))
    ]
    weak = weak_spot_parameters(params)
    reach = 0 if weak is None else -(-weak.halo_images // chunk_images)  # neighbouring blocks the halo needs
    rings = None
    if weak is not None and params.spotfinder.threshold.weak_spots.ring_correction:
        rings = dask.delayed(ring_map, pure=True)(
            detector, experiment.beam.s0, **({} if name is None else {"dask_key_name": f"find_spots-rings-{name}"}))
    weak_chunks = [] if weak is None else [
        dask.delayed(weak_pixels_in_chunk, pure=True)(
            blocks[max(0, k - reach): k], blocks[k], blocks[k + 1: k + 1 + reach],
            chunks[max(0, k - reach): k + 1 + reach], weak.halo_images,
            first_z + int(start), mask, threshold, detector.trusted_range, detector.pedestal, detector.gain,
            max_strong_pixel_fraction=max_fraction, weak_spots=weak, rings=rings, **key(f"-weak-{k}"))
        for k, start in enumerate(starts)
    ]
    return dask.delayed(_spots_of_sweep, pure=True)(
        chunks, weak_chunks, tuple(detector.image_size), spot_filter(experiment, params), experiment_id,
        experiment.identifier, params.output.shoeboxes, weak, **key())


def run(experiments: list[Experiment], reflections: ReflectionTable | None, params: Params) -> StepResult:
    """Find the strong spots of every sweep (``reflections`` is unused); one table, ``id`` = sweep."""
    if not experiments:
        raise InputFileError("no experiments to find spots in; give an imported.expt")
    for experiment in experiments:
        if experiment.scan is None or not experiment.imageset.get("template"):
            raise InputFileError("an experiment has no image sweep (scan and image template); give the imported.expt of a rotation sweep")
    graphs = [find_spots_graph(e, params, i) for i, e in enumerate(experiments)]
    results = dask.compute(*graphs)
    summary = {"imagesets": []}
    for experiment, found in zip(experiments, results):
        first_image = experiment.scan.image_range[0]
        table = found.reflections
        summary["imagesets"].append({
            "first_image": first_image,
            "strong_pixels_per_image": found.strong_per_image.tolist(),
            "rejected_images": (first_image + np.flatnonzero(found.rejected_images)).tolist(),
            "max_strong_pixel_fraction": params.spotfinder.filter.max_strong_pixel_fraction,
            "n_extracted": found.n_extracted,
            "n_too_small": found.n_too_small,
            "n_too_large": found.n_too_large,
            "min_spot_size": spot_filter(experiment, params).min_spot_size,
            "max_spot_size": params.spotfinder.filter.max_spot_size,
            "n_centroided": found.n_centroided,
            "n_spots": len(table),
            "histogram": spot_counts_per_image_histogram(table["xyzobs.px.value"][:, 2]),
        })
    return StepResult(experiments=experiments, reflections=ReflectionTable.concat([r.reflections for r in results]),
                      summary=summary)


# --------------------------------------------------------------------------------------- log


def format_find_spots_log(summary: dict) -> str:
    """The lines dials.find_spots logs for each imageset, ending with the histogram."""
    lines = []
    for index, s in enumerate(summary["imagesets"]):
        lines += [RULE, f"Finding strong spots in imageset {index}", RULE, ""]
        first = s["first_image"]
        lines += [f"Found {n} strong pixels on image {first + i}" for i, n in enumerate(s["strong_pixels_per_image"])]
        lines += [f"Warning: image {image} has more strong pixels than max_strong_pixel_fraction="
                  f"{s['max_strong_pixel_fraction']} allows (DIALS stops here); it is left out of spot finding"
                  for image in s["rejected_images"]]
        lines += [
            "",
            f"Extracted {s['n_extracted']} spots",
            f"Removed {s['n_too_small']} spots with size < {s['min_spot_size']} pixels",
            f"Removed {s['n_too_large']} spots with size > {s['max_spot_size']} pixels",
            f"Calculated {s['n_centroided']} spot centroids",
            f"Calculated {s['n_centroided']} spot intensities",
            f"Filtered {s['n_spots']} of {s['n_centroided']} spots by peak-centroid distance",
            "",
            f"Histogram of per-image spot count for imageset {index}:",
            s["histogram"],
            "",
        ]
    return "\n".join(lines)


def cli(params: Params, files: list[str]) -> None:
    """Find spots in the sweeps of the given experiment files and write ``output.reflections``."""
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.refl import write_reflections

    if not files:
        raise InputFileError("give the experiments to find spots in, e.g. ewald find_spots imported.expt")
    experiments = [e for path in files for e in read_experiments(path)]
    result = run(experiments, None, params)
    logger.info(format_find_spots_log(result.summary))
    write_reflections(result.reflections, params.output.reflections)
    logger.info(RULE)
    logger.info("Saved %d reflections to %s", len(result.reflections), params.output.reflections)
