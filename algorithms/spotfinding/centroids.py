"""Spot properties from labelled strong pixels: size, bounding box, centroid and its variance,
summed intensity, peak position, and strong-pixel shoeboxes; plus DIALS' spot filters.

Over a spot's voxels with weights w = corrected counts (no background subtraction) at voxel
centres (x+0.5, y+0.5, z+0.5) (algorithms.md §3.4):

- centroid m = Σw·x / Σw;
- unbiased weighted variance v = Σw·(x−m)² · Σw / ((Σw)² − Σw²) (0 if (Σw)² ≤ Σw²);
- ``xyzobs.px.variance`` = v/Σw + 1/12 (squared standard error of the centroid plus the
  variance of a uniform pixel); a spot on one image has z = z0 + 0.5 and z variance 1/12;
- ``intensity.sum.value`` = ``intensity.sum.variance`` = Σw.

Pixels are visited in raster order, so every sum is formed in the same order whatever the
chunking that produced the labels (bit-identical results).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from algorithms.spotfinding.labelling import StrongPixels

PIXEL_VARIANCE = 1.0 / 12.0


@dataclass
class SpotProperties:
    """Per-component properties (arrays of length n_components, in label order)."""

    n_pixels: np.ndarray  # int
    bbox: np.ndarray  # (n, 6) int: x0, x1, y0, y1, z0, z1 (half-open)
    centroid: np.ndarray  # (n, 3) x, y, z in pixels / images
    centroid_variance: np.ndarray  # (n, 3)
    intensity: np.ndarray  # Σw
    peak: np.ndarray  # (n, 3) x, y, z of the brightest voxel (first in raster order on ties)

    def __len__(self) -> int:
        return len(self.n_pixels)

    def select(self, selection) -> "SpotProperties":
        return SpotProperties(*(getattr(self, f)[selection] for f in self.__dataclass_fields__))


@numba.njit(cache=True, nogil=True)
def _moments(z, y, x, value, label, n_components):
    n_pixels = np.zeros(n_components, np.int64)
    bbox = np.empty((n_components, 6), np.int32)
    sum_w = np.zeros(n_components)
    sum_w2 = np.zeros(n_components)
    sum_wx = np.zeros((n_components, 3))
    peak_value = np.full(n_components, -np.inf)
    peak = np.zeros((n_components, 3), np.int32)
    for i in range(len(z)):
        k = label[i]
        w = np.float64(value[i])
        if n_pixels[k] == 0:
            bbox[k, 0] = x[i]
            bbox[k, 1] = x[i] + 1
            bbox[k, 2] = y[i]
            bbox[k, 3] = y[i] + 1
            bbox[k, 4] = z[i]
            bbox[k, 5] = z[i] + 1
        else:
            bbox[k, 0] = min(bbox[k, 0], x[i])
            bbox[k, 1] = max(bbox[k, 1], x[i] + 1)
            bbox[k, 2] = min(bbox[k, 2], y[i])
            bbox[k, 3] = max(bbox[k, 3], y[i] + 1)
            bbox[k, 5] = max(bbox[k, 5], z[i] + 1)
        n_pixels[k] += 1
        sum_w[k] += w
        sum_w2[k] += w * w
        sum_wx[k, 0] += w * (x[i] + 0.5)
        sum_wx[k, 1] += w * (y[i] + 0.5)
        sum_wx[k, 2] += w * (z[i] + 0.5)
        if w > peak_value[k]:
            peak_value[k] = w
            peak[k, 0] = x[i]
            peak[k, 1] = y[i]
            peak[k, 2] = z[i]
    centroid = np.empty((n_components, 3))
    for k in range(n_components):
        for a in range(3):
            centroid[k, a] = sum_wx[k, a] / sum_w[k]
    # Second pass about the centroid (no cancellation between large sums).
    spread = np.zeros((n_components, 3))
    for i in range(len(z)):
        k = label[i]
        w = np.float64(value[i])
        dx = x[i] + 0.5 - centroid[k, 0]
        dy = y[i] + 0.5 - centroid[k, 1]
        dz = z[i] + 0.5 - centroid[k, 2]
        spread[k, 0] += w * dx * dx
        spread[k, 1] += w * dy * dy
        spread[k, 2] += w * dz * dz
    variance = np.empty((n_components, 3))
    for k in range(n_components):
        denominator = sum_w[k] * sum_w[k] - sum_w2[k]
        for a in range(3):
            v = spread[k, a] * sum_w[k] / denominator if denominator > 0 else 0.0
            variance[k, a] = v / sum_w[k] + PIXEL_VARIANCE if denominator > 0 else PIXEL_VARIANCE
        if bbox[k, 5] - bbox[k, 4] == 1:
            centroid[k, 2] = bbox[k, 4] + 0.5
            variance[k, 2] = PIXEL_VARIANCE
    return n_pixels, bbox, centroid, variance, sum_w, peak


def spot_properties(pixels: StrongPixels) -> SpotProperties:
    """Size, bbox, centroid, centroid variance, Σw and peak voxel of every component."""
    n_pixels, bbox, centroid, variance, intensity, peak = _moments(
        pixels.z, pixels.y, pixels.x, pixels.value, pixels.label, pixels.n_components
    )
    return SpotProperties(n_pixels, bbox, centroid, variance, intensity, peak)


def peak_centroid_distance(spots: SpotProperties) -> np.ndarray:
    """3D distance (pixels, images) between the brightest voxel's centre and the centroid."""
    return np.linalg.norm(spots.peak + 0.5 - spots.centroid, axis=1)


@numba.njit(cache=True, nogil=True)
def _fill_shoeboxes(z, y, x, value, label, row_of_label, bbox, offsets, data, mask, foreground_code):
    for i in range(len(z)):
        row = row_of_label[label[i]]
        if row < 0:
            continue
        width = bbox[row, 1] - bbox[row, 0]
        height = bbox[row, 3] - bbox[row, 2]
        at = offsets[row] + ((z[i] - bbox[row, 4]) * height + (y[i] - bbox[row, 2])) * width + (x[i] - bbox[row, 0])
        data[at] = value[i]
        mask[at] = foreground_code


def strong_shoeboxes(pixels: StrongPixels, labels: np.ndarray, bbox: np.ndarray, foreground_code: int):
    """Dense shoebox arrays of the components ``labels`` (with boxes ``bbox``, same order).

    Returns (offsets (n+1,), data float32, mask uint8): voxel j of row r is at offsets[r] + j in
    z-major order inside its bbox; spot voxels hold their counts and ``foreground_code``, the rest
    of the box 0 and 0 (as DIALS' strong.refl shoeboxes).
    """
    bbox = np.asarray(bbox, np.int64)
    volume = (bbox[:, 1] - bbox[:, 0]) * (bbox[:, 3] - bbox[:, 2]) * (bbox[:, 5] - bbox[:, 4])
    offsets = np.concatenate([[0], np.cumsum(volume)]).astype(np.int64)
    data = np.zeros(offsets[-1], np.float32)
    mask = np.zeros(offsets[-1], np.uint8)
    row_of_label = np.full(pixels.n_components, -1, np.int64)
    row_of_label[np.asarray(labels, np.int64)] = np.arange(len(labels))
    _fill_shoeboxes(pixels.z, pixels.y, pixels.x, pixels.value, pixels.label, row_of_label, bbox, offsets, data, mask, foreground_code)
    return offsets, data, mask
