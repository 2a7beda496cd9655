"""From labelled strong pixels to DIALS' strong-spot table, with DIALS' filters, and the static
pixel mask a scan is thresholded with (algorithms.md §3.1, §3.3–3.5).

Order of operations as in ``dials.find_spots``: extract components → size filter
(min_spot_size ≤ n ≤ max_spot_size) → centroids and intensities → peak-centroid separation filter.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numba
import numpy as np

from algorithms.geometry.models import Detector
from algorithms.reflection_table import Flags, ReflectionTable
from algorithms.shoebox import MaskCode, Shoeboxes
from algorithms.spotfinding.centroids import peak_centroid_distance, spot_properties, strong_shoeboxes
from algorithms.spotfinding.labelling import StrongPixels, join_chunks, strong_pixels_in_chunk
from algorithms.spotfinding.threshold import DispersionParameters
from algorithms.spotfinding.weak_spots import WeakSpotParameters, renumber_by_first_appearance, segment_by_prominence


def default_min_spot_size(detector_type: str) -> int:
    """DIALS' ``min_spot_size = Auto``: 3 for pixel-array (SENSOR_PAD) detectors, else 6."""
    return 3 if detector_type == "SENSOR_PAD" else 6


@dataclass(frozen=True)
class SpotFilter:
    """``spotfinder.filter`` size and separation limits (min_spot_size already resolved)."""

    min_spot_size: int = 3
    max_spot_size: int = 1000
    max_separation: float = 2.0


@dataclass
class FoundSpots:
    """The strong-spot table and the counts DIALS logs on the way to it."""

    reflections: ReflectionTable
    strong_per_image: np.ndarray  # strong pixels on each image of the scan
    rejected_images: np.ndarray  # images left out for too many strong pixels
    n_extracted: int
    n_too_small: int
    n_too_large: int
    n_centroided: int  # after the size filter


@numba.njit(cache=True, nogil=True)
def _resolution_mask(origin, fast_axis, slow_axis, pixel_size, s0, d_min, d_max, mask):
    """mask &= d_min ≤ d ≤ d_max at pixel centres, with the arithmetic of
    :meth:`Detector.resolution_of_pixel` (p = o + x·f̂ + y·ŝ, s1 = p/|p|·|s0|, d = 1/|s1 − s0|)
    but without its (n_slow, n_fast, 3) temporaries (~50× faster)."""
    n_slow, n_fast = mask.shape
    s0_length = np.sqrt(s0[0] * s0[0] + s0[1] * s0[1] + s0[2] * s0[2])
    for y in range(n_slow):
        y_mm = (y + 0.5) * pixel_size[1]
        for x in range(n_fast):
            x_mm = (x + 0.5) * pixel_size[0]
            p0 = origin[0] + x_mm * fast_axis[0] + y_mm * slow_axis[0]
            p1 = origin[1] + x_mm * fast_axis[1] + y_mm * slow_axis[1]
            p2 = origin[2] + x_mm * fast_axis[2] + y_mm * slow_axis[2]
            length = np.sqrt(p0 * p0 + p1 * p1 + p2 * p2)
            q0 = p0 / length * s0_length - s0[0]
            q1 = p1 / length * s0_length - s0[1]
            q2 = p2 / length * s0_length - s0[2]
            d = 1.0 / np.sqrt(q0 * q0 + q1 * q1 + q2 * q2)
            if d < d_min or d > d_max:
                mask[y, x] = False


def static_mask(
    detector: Detector,
    s0: np.ndarray,
    d_min: float | None = None,
    d_max: float | None = None,
    border: int = 0,
    untrusted_rectangles: Sequence[Sequence[int]] = (),
    untrusted_circles: Sequence[Sequence[float]] = (),
    user_mask: np.ndarray | None = None,
) -> np.ndarray:
    """True for the pixels of the panel to use, (n_slow, n_fast).

    Combines the panel's mask rectangles and ``untrusted_rectangles`` (x0, x1, y0, y1; half-open
    pixel ranges), ``untrusted_circles`` (x, y, r in pixels; pixel centres within r), an edge
    ``border`` (pixels), ``user_mask`` (True = use) and the resolution limits, evaluated at pixel
    centres: pixels with d < d_min or d > d_max are masked before thresholding, as in DIALS.
    The trusted range is per image and is applied by the threshold kernels.
    """
    n_fast, n_slow = detector.image_size
    mask = np.ones((n_slow, n_fast), dtype=bool)
    for x0, x1, y0, y1 in list(detector.mask) + [tuple(r) for r in untrusted_rectangles]:
        mask[max(0, int(y0)) : max(0, int(y1)), max(0, int(x0)) : max(0, int(x1))] = False
    if untrusted_circles:
        y, x = np.mgrid[0:n_slow, 0:n_fast] + 0.5
        for xc, yc, radius in untrusted_circles:
            mask &= (x - xc) ** 2 + (y - yc) ** 2 > radius**2
    if border > 0:
        mask[:border, :] = mask[-border:, :] = False
        mask[:, :border] = mask[:, -border:] = False
    if user_mask is not None:
        if user_mask.shape != mask.shape:
            raise ValueError(f"the user mask is {user_mask.shape[::-1]} pixels (fast, slow), the detector {(n_fast, n_slow)}")
        mask &= user_mask.astype(bool)
    if d_min is not None or d_max is not None:
        _resolution_mask(detector.origin, detector.fast_axis, detector.slow_axis, np.asarray(detector.pixel_size, float),
                         np.asarray(s0, float), -np.inf if d_min is None else float(d_min),
                         np.inf if d_max is None else float(d_max), mask)
    return mask


def ring_map(detector: Detector, s0: np.ndarray) -> np.ndarray:
    """Each pixel's ring about the direct beam, for the weak-spot filter to flatten the
    background's radial shape with (int32, (n_slow, n_fast)): the pixel centre's distance from
    the beam centre in whole pixels."""
    n_fast, n_slow = detector.image_size
    beam_x, beam_y = detector.beam_centre_px(np.asarray(s0, float))
    y, x = np.ogrid[:n_slow, :n_fast]
    return np.floor(np.hypot(x + 0.5 - beam_x, y + 0.5 - beam_y)).astype(np.int32)


def with_weak_spots(strong: StrongPixels, weak: StrongPixels, n_slow: int, n_fast: int,
                    parameters: WeakSpotParameters) -> StrongPixels:
    """The spots of ``weak`` (the weak-spot filter's pixels, split at their statistic's
    significant peaks: weak_spots.segment_by_prominence) and the components of ``strong`` (a
    per-pixel test's) that no kept filter pixel comes within 1 pixel of on the same image.

    The filter's segments cover a reflection's whole rocking curve, where the per-pixel test
    keeps only the images on which it stands out (a reflection near the rotation axis becomes
    pieces, a lattice row's neighbours one component), so they are the spots wherever the filter
    has them. ``weak`` must come from a filter that left out the images the per-pixel test
    rejected (``excluded_images``); a corrupted image it did not leave out (the filter finds
    several times the sweep's typical number of pixels on it) spoils the filter on every image
    within the z filter's reach: segments peaking there are dropped, the others lose their
    pixels there, and the per-pixel test's spots stand.

    Pixels in raster order, components numbered by their first pixel, as labelling.py does; the
    strong pixels per image are both sets' kept pixels; ``weak_components`` marks the filter's
    (exempt from the peak-centroid separation filter, since a faint spot's brightest pixel is
    mostly noise)."""
    reach = parameters.halo_images
    segment, n_segments = segment_by_prominence(weak.z, weak.y, weak.x, weak.score, n_slow, n_fast,
                                                parameters.min_prominence, parameters.relative_prominence)
    image = weak.z - weak.first_z
    suspect = (weak.strong_per_image > 3 * max(np.median(weak.strong_per_image), 1)) & ~strong.rejected_images
    suspect = (np.convolve(suspect, np.ones(2 * reach + 1), mode="same") > 0)[image]
    keep = ~suspect[_highest_pixel_per_label(segment, weak.score, n_segments)][segment] & ~suspect
    covered = _near_pixels(weak.z[keep], weak.y[keep], weak.x[keep], strong.z, strong.y, strong.x, n_slow, n_fast)
    replaced = np.zeros(strong.n_components, bool)
    replaced[strong.label[covered]] = True
    own = ~replaced[strong.label]
    strong_label = renumber_by_first_appearance(strong.label[own], strong.n_components)[0]
    strong = replace(strong, z=strong.z[own], y=strong.y[own], x=strong.x[own], value=strong.value[own],
                     label=strong_label, n_components=int(strong_label.max(initial=-1)) + 1)
    weak_label = renumber_by_first_appearance(segment[keep], n_segments)[0]
    order = _merge_order(_linear(strong, n_slow, n_fast), _linear(weak, n_slow, n_fast)[keep])
    z = np.concatenate([strong.z, weak.z[keep]])[order]
    y = np.concatenate([strong.y, weak.y[keep]])[order]
    x = np.concatenate([strong.x, weak.x[keep]])[order]
    value = np.concatenate([strong.value, weak.value[keep]])[order]
    n_components = strong.n_components + int(weak_label.max(initial=-1)) + 1
    label, rank = renumber_by_first_appearance(
        np.concatenate([strong.label, strong.n_components + weak_label])[order], n_components)
    per_image = np.bincount(z - strong.first_z, minlength=strong.n_images)
    weak_components = np.zeros(n_components, bool)
    weak_components[rank[strong.n_components:]] = True
    return StrongPixels(strong.first_z, z, y, x, value, label, n_components, per_image,
                        strong.rejected_images | weak.rejected_images, weak_components)


def _linear(pixels: StrongPixels, n_slow: int, n_fast: int) -> np.ndarray:
    return (pixels.z.astype(np.int64) * n_slow + pixels.y) * n_fast + pixels.x


@numba.njit(cache=True, nogil=True)
def _near_pixels(z, y, x, query_z, query_y, query_x, n_slow, n_fast):
    """For each query pixel: is one of the pixels (z, y, x) within 1 pixel in x and y on the
    same image? Both lists in raster order; one image plane at a time."""
    occupied = np.zeros((n_slow, n_fast), np.bool_)
    near = np.zeros(len(query_z), np.bool_)
    i = j = 0
    while j < len(query_z):
        image = query_z[j]
        while i < len(z) and z[i] < image:
            i += 1
        first = i
        while i < len(z) and z[i] == image:
            occupied[y[i], x[i]] = True
            i += 1
        while j < len(query_z) and query_z[j] == image:
            x0, x1 = max(0, query_x[j] - 1), min(n_fast, query_x[j] + 2)
            for yy in range(max(0, query_y[j] - 1), min(n_slow, query_y[j] + 2)):
                near[j] |= occupied[yy, x0:x1].any()
            j += 1
        for k in range(first, i):
            occupied[y[k], x[k]] = False
    return near


@numba.njit(cache=True, nogil=True)
def _highest_pixel_per_label(label, score, n_labels):
    """The index of each label's highest-scoring pixel (its first on ties)."""
    highest = np.full(n_labels, -1, np.int64)
    for i in range(len(label)):
        k = label[i]
        if highest[k] < 0 or score[i] > score[highest[k]]:
            highest[k] = i
    return highest


@numba.njit(cache=True, nogil=True)
def _merge_order(a, b):
    """The order that merges two sorted arrays into one (ties: ``a`` first), as indices into
    their concatenation."""
    order = np.empty(len(a) + len(b), np.int64)
    i = j = 0
    for k in range(len(order)):
        if j == len(b) or (i < len(a) and a[i] <= b[j]):
            order[k] = i
            i += 1
        else:
            order[k] = len(a) + j
            j += 1
    return order


def spots_from_strong_pixels(
    pixels: StrongPixels,
    spot_filter: SpotFilter = SpotFilter(),
    panel: int = 0,
    experiment_id: int = 0,
    identifier: str | None = None,
    shoeboxes: bool = True,
) -> FoundSpots:
    """The strong-spot table (rows in order of each spot's first pixel) from a scan's pixels."""
    spots = spot_properties(pixels)
    too_small = spots.n_pixels < spot_filter.min_spot_size
    too_large = spots.n_pixels > spot_filter.max_spot_size
    sized = np.flatnonzero(~too_small & ~too_large)
    separated = peak_centroid_distance(spots.select(sized)) <= spot_filter.max_separation
    if pixels.weak_components is not None:
        # a weak spot's brightest pixel is mostly noise: the peak-centroid test is not for it
        separated |= pixels.weak_components[sized]
    labels = sized[separated]
    kept = spots.select(labels)
    n = len(kept)
    table = ReflectionTable(
        {
            "id": np.full(n, experiment_id, np.int32),
            "panel": np.full(n, panel, np.uint64),
            "flags": np.full(n, int(Flags.strong), np.uint64),
            "bbox": kept.bbox.astype(np.int32),
            "xyzobs.px.value": kept.centroid,
            "xyzobs.px.variance": kept.centroid_variance,
            "intensity.sum.value": kept.intensity,
            "intensity.sum.variance": kept.intensity.copy(),
            "n_signal": kept.n_pixels.astype(np.int32),
        },
        experiment_identifiers={experiment_id: identifier} if identifier else None,
    )
    if shoeboxes:
        offsets, data, mask = strong_shoeboxes(pixels, labels, kept.bbox, int(MaskCode.Valid | MaskCode.Foreground))
        table["shoebox"] = Shoeboxes(
            np.full(n, panel, np.uint32), kept.bbox, offsets, data, mask, np.zeros_like(data), np.ones(n, bool)
        )
    return FoundSpots(
        reflections=table,
        strong_per_image=pixels.strong_per_image,
        rejected_images=pixels.rejected_images,
        n_extracted=len(spots),
        n_too_small=int(too_small.sum()),
        n_too_large=int(too_large.sum()),
        n_centroided=len(sized),
    )


def find_spots(
    images: np.ndarray,
    first_z: int,
    mask: np.ndarray,
    parameters: DispersionParameters = DispersionParameters(),
    spot_filter: SpotFilter = SpotFilter(),
    chunk_images: int | None = None,
    trusted_range: tuple[float, float] = (-1.0, 65535.0),
    max_strong_pixel_fraction: float = 1.0,
    weak_spots: WeakSpotParameters | None = None,
    rings: np.ndarray | None = None,
    **table_options,
) -> FoundSpots:
    """Spot finding on an in-memory stack (n_images, slow, fast) in chunks of ``chunk_images``
    (None = one chunk), sequentially; the pipeline maps :func:`strong_pixels_in_chunk` over Dask
    chunks instead and calls :func:`join_chunks`, :func:`with_weak_spots` and
    :func:`spots_from_strong_pixels` the same way. With ``weak_spots`` the weak-spot filter's
    spots (weak_spots.py) join those of ``parameters``' test (:func:`with_weak_spots`); with
    ``rings`` (:func:`ring_map`) the filter flattens the background's radial shape first.
    """
    step = chunk_images or len(images)
    n = len(images)

    def pixels(weak, excluded=None):
        halo = weak.halo_images if weak is not None else 0
        chunks = []
        for start in range(0, n, step):
            lo, hi = max(0, start - halo), min(n, start + step + halo)
            chunks.append(strong_pixels_in_chunk(
                images[lo:hi], first_z + start, mask, parameters, trusted_range,
                max_strong_pixel_fraction=max_strong_pixel_fraction, weak_spots=weak, halo_before=start - lo,
                halo_after=hi - min(n, start + step), excluded_images=None if excluded is None else excluded[lo:hi],
                rings=rings))
        return join_chunks(chunks, images.shape[2])

    found = pixels(None)
    if weak_spots is not None:
        weak = pixels(weak_spots, excluded=found.rejected_images)
        found = with_weak_spots(found, weak, images.shape[1], images.shape[2], weak_spots)
    return spots_from_strong_pixels(found, spot_filter, **table_options)
