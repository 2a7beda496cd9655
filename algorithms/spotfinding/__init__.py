"""Spot finding as in ``dials.find_spots``: dispersion thresholds, 3D connected components
joined across image chunks, centroids, filters and the per-image histogram.

Data flow (each stage a pure function; the pipeline maps the first over Dask image chunks):
:func:`strong_pixels_in_chunk` (threshold + label one chunk) → :func:`join_chunks` (merge spots
across chunk boundaries) → :func:`spots_from_strong_pixels` (sizes, centroids, filters, table).
Optionally (beyond DIALS) the weak-spot filter's pixels are found the same way, with a halo of
images around each chunk, and :func:`with_weak_spots` makes its segments the spots, keeping the
per-pixel test's where the filter has none.
"""
from algorithms.spotfinding.histogram import spot_counts_per_image_histogram
from algorithms.spotfinding.labelling import StrongPixels, join_chunks, strong_pixels_in_chunk
from algorithms.spotfinding.spots import (
    FoundSpots,
    SpotFilter,
    default_min_spot_size,
    find_spots,
    ring_map,
    spots_from_strong_pixels,
    static_mask,
    with_weak_spots,
)
from algorithms.spotfinding.threshold import DispersionParameters, dispersion_threshold_mask
from algorithms.spotfinding.weak_spots import WeakSpotParameters

__all__ = [
    "DispersionParameters",
    "FoundSpots",
    "SpotFilter",
    "StrongPixels",
    "default_min_spot_size",
    "dispersion_threshold_mask",
    "find_spots",
    "join_chunks",
    "spot_counts_per_image_histogram",
    "spots_from_strong_pixels",
    "static_mask",
    "strong_pixels_in_chunk",
    "WeakSpotParameters",
    "ring_map",
    "with_weak_spots",
]
