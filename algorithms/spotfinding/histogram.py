"""The ASCII histogram of spots per image that ends DIALS' find_spots log (algorithms.md §3.6).

The z centroids get an alternating −0.25/+0.25 offset (row 0 −0.25, row 1 +0.25, …) so that
spots sitting exactly on bin edges spread evenly; the bins are ``width`` equal steps over
[min z, max z] of the unshifted values (the last bin takes everything above its lower edge);
bar heights are counts scaled to ``height`` rows and rounded half up. The footer shows the
first and last image numbers ⌈min z⌉ and ⌈max z⌉ with "image" centred between them.
"""
from __future__ import annotations

import math

import numpy as np


def spot_counts_per_image_histogram(z: np.ndarray, char: str = "*", width: int = 60, height: int = 10) -> str:
    """The histogram text for the z centroids (0-based array index) of the spots, in row order."""
    z = np.asarray(z, dtype=float)
    if len(z) == 0:
        return "\n"
    min_z, max_z = float(z.min()), float(z.max())
    shifted = z + np.where(np.arange(len(z)) % 2 == 1, 0.25, -0.25)
    first_image, last_image = math.ceil(min_z), math.ceil(max_z)
    n_images = last_image - first_image + 1
    if n_images <= 1:
        return f"{len(z)} spots found on 1 image"
    width = min(n_images, width)
    step = (max_z - min_z) / width
    inner_edges = min_z + np.arange(1, width) * step
    below = np.array([np.count_nonzero(shifted < edge) for edge in inner_edges])
    counts = np.diff(np.concatenate([[0], below, [len(z)]]))
    max_count = int(counts.max())
    bar_heights = np.floor(counts * (height / max_count) + 0.5)
    rows = [f"{len(z)} spots found on {n_images} images (max {max_count} / bin)"]
    for row in range(height, 0, -1):
        rows.append("".join(char if h > row - 1 else " " for h in bar_heights))
    padding = width - len(str(first_image)) - len(str(last_image))
    middle = ("image" if padding >= 7 else " ").center(padding) if padding > 0 else ""
    rows.append(f"{first_image}{middle}{last_image}")
    return "\n".join(rows)
