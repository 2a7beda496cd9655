"""Strong pixels of a chunk of images, labelled into 3D connected components, and the join
of components across chunk boundaries.

A chunk is a run of consecutive images. :func:`strong_pixels_in_chunk` thresholds each image
(threshold.py) and labels the strong pixels with 6-connectivity (±x, ±y, ±image) by union-find
over the strong pixels only, so memory and time scale with the (sparse) strong pixels, never
with a 3D label volume. Pixels are kept in raster order (image, slow, fast); each union keeps
the smaller index as root, so a component's root is its first pixel in raster order and
components are numbered in that order.

:func:`join_chunks` concatenates the chunks of a scan in image order and unions components
whose pixels touch across each boundary (same pixel on the last image of one chunk and the first
image of the next). Because the numbering rule is the same (first pixel in raster order), the
result — pixel order and labels — is identical for any chunking of the scan.

Reference: connected-component labelling by union-find (Wu, Otoo & Suzuki 2009, Pattern Anal.
Appl. 12, 117); DIALS labels strong pixels the same way (6-connectivity, algorithms.md §3.3).
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from algorithms.spotfinding.threshold import DispersionParameters, ThresholdWork, corrected_value, row_of, threshold_image_into
from algorithms.spotfinding.weak_spots import WeakSpotParameters, gaussian_taps, static_weights_into, weak_spot_pixels_into


@dataclass
class StrongPixels:
    """Strong pixels in raster order with their component label.

    ``z`` is the absolute 0-based image (array) index; ``value`` the corrected counts;
    ``label`` runs 0 … n_components−1 in order of each component's first pixel;
    ``strong_per_image`` counts the strong pixels of images first_z, first_z+1, …;
    ``rejected_images`` marks images with too many strong pixels, whose pixels are left out.
    """

    first_z: int
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    value: np.ndarray
    label: np.ndarray
    n_components: int
    strong_per_image: np.ndarray
    rejected_images: np.ndarray
    # per component: found by the weak-spot filter (spots.with_weak_spots), None = none are
    weak_components: np.ndarray | None = None
    # per pixel: the weak-spot filter's statistic (σ), None for a per-pixel test's pixels
    score: np.ndarray | None = None

    @property
    def n_images(self) -> int:
        return len(self.strong_per_image)

    def __len__(self) -> int:
        return len(self.z)


@numba.njit(cache=True, nogil=True, inline="always")
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True, inline="always")
def _union(parent, a, b):
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@numba.njit(cache=True, nogil=True)
def _grow(array, size):
    out = np.empty(size, array.dtype)
    out[: len(array)] = array
    return out


@numba.njit(cache=True, nogil=True)
def _label_roots(parent, n):
    """Component number of every element: roots numbered in index order (roots are minima)."""
    label = np.empty(n, np.int32)
    n_components = 0
    for i in range(n):
        root = _find(parent, i)
        if root == i:
            label[i] = n_components
            n_components += 1
        else:
            label[i] = label[root]
    return label, n_components


def forget_stale_kernels(module: Path, dependencies: Sequence[Path]) -> bool:
    """Delete numba's on-disk cache of ``module``'s kernels if ``dependencies`` (the modules whose
    kernels they call) changed since it was written; returns whether it did.

    numba keys a cache on its own source file only: a kernel compiled with a callee from another
    module keeps running the old callee after that module changes (an upgrade in place, an
    edit). A digest of the dependencies' sources beside the cache tells. Caches elsewhere
    (``NUMBA_CACHE_DIR``, read-only installs) are left alone."""
    cache = module.parent / "__pycache__"
    stamp = cache / f"{module.stem}.dependencies.sha256"
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in dependencies)).hexdigest()
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    try:
        for stale in [*cache.glob(f"{module.stem}.*.nbi"), *cache.glob(f"{module.stem}.*.nbc")]:
            stale.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        return False
    return True


forget_stale_kernels(Path(__file__), [Path(__file__).with_name("threshold.py"), Path(__file__).with_name("weak_spots.py")])


@numba.njit(cache=True, nogil=True)
def _strong_pixels_in_chunk(
    raw_chunk, halo_before, n_images, static_mask, trusted_low, trusted_high, pedestal, panel_gain, gain_map,
    kernel_x, kernel_y, sigma_background, sigma_strong, min_local, global_threshold, extended, max_strong,
    weak, usable_images, taps_xy, taps_z, ring, n_rings, weak_background_half_width, weak_sigma_strong, weak_work,
    strong, previous_strong, strong_list, index, previous_index,
    valid, sat_count, sat_sum, sat_sumsq, sat_core_count, sat_core_sum, row_hit, flags, dispersed_list, core_list,
):
    n_slow, n_fast = static_mask.shape
    # the buffers hold the previous chunk's values: threshold_image_into clears strong for each
    # image, previous_strong is read from the second image on, index where strong only
    capacity = 4096
    zs = np.empty(capacity, np.int32)
    ys = np.empty(capacity, np.int32)
    xs = np.empty(capacity, np.int32)
    values = np.empty(capacity, np.float32)
    scores = np.empty(capacity, np.float32)
    parent = np.empty(capacity, np.int32)
    strong_per_image = np.zeros(n_images, np.int64)
    rejected = np.zeros(n_images, np.bool_)
    n = 0
    if weak:
        static_weights_into(static_mask, taps_xy, weak_work)
    for z in range(n_images):  # the chunk's own images; halo images only feed the weak-spot filter
        if weak and not usable_images[z + halo_before]:  # left out by the caller
            strong[:, :] = False
            rejected[z] = True
            n_strong = 0
        else:
            if weak:
                n_strong = weak_spot_pixels_into(
                    raw_chunk, z + halo_before, usable_images, taps_xy, taps_z, static_mask, trusted_low, trusted_high,
                    pedestal, panel_gain, gain_map, ring, n_rings, weak_background_half_width, weak_sigma_strong, strong,
                    strong_list, weak_work,
                )
            else:
                n_strong = threshold_image_into(
                    raw_chunk[z + halo_before], static_mask, trusted_low, trusted_high, pedestal, panel_gain, gain_map,
                    kernel_x, kernel_y, sigma_background, sigma_strong, min_local, global_threshold, extended,
                    strong, strong_list, valid, sat_count, sat_sum, sat_sumsq, sat_core_count, sat_core_sum, row_hit,
                    flags, dispersed_list, core_list,
                )
            strong_per_image[z] = n_strong
            if n_strong > max_strong:
                # DIALS stops here; one corrupted image should not lose the whole sweep
                rejected[z] = True
                strong[:, :] = False
                n_strong = 0
        if n + n_strong > capacity:
            capacity = max(2 * capacity, n + n_strong)
            zs = _grow(zs, capacity)
            ys = _grow(ys, capacity)
            xs = _grow(xs, capacity)
            values = _grow(values, capacity)
            scores = _grow(scores, capacity)
            parent = _grow(parent, capacity)
        y = 0
        for k in range(n_strong):  # raster order
            y = row_of(strong_list[k], y, n_fast)
            x = strong_list[k] - y * n_fast
            zs[n] = z
            ys[n] = y
            xs[n] = x
            values[n] = corrected_value(raw_chunk[z + halo_before], y, x, pedestal, panel_gain)
            scores[n] = weak_work[5, y, x] if weak else values[n]
            parent[n] = n
            index[y, x] = n
            if x > 0 and strong[y, x - 1]:
                _union(parent, n, index[y, x - 1])
            if y > 0 and strong[y - 1, x]:
                _union(parent, n, index[y - 1, x])
            if z > 0 and previous_strong[y, x]:
                _union(parent, n, previous_index[y, x])
            n += 1
        strong, previous_strong = previous_strong, strong
        index, previous_index = previous_index, index
    label, n_components = _label_roots(parent, n)
    return (zs[:n].copy(), ys[:n].copy(), xs[:n].copy(), values[:n].copy(), scores[:n].copy(), label, n_components,
            strong_per_image, rejected)


class _ChunkWork:
    """Work buffers of :func:`_strong_pixels_in_chunk` for one image size: the thresholds' and the
    labelling's (two strong-pixel images and two pixel-number images, current and previous)."""

    def __init__(self, n_slow: int, n_fast: int):
        self.shape = (n_slow, n_fast)
        self.threshold = ThresholdWork(n_slow, n_fast)
        self.strong = np.zeros(self.shape, np.bool_)
        self.previous_strong = np.zeros(self.shape, np.bool_)
        self.strong_list = np.empty(n_slow * n_fast, np.int64)
        self.index = np.empty(self.shape, np.int32)
        self.previous_index = np.empty(self.shape, np.int32)
        self._gain_map = None
        self._weak_work = None

    def weak_work(self, needed: bool) -> np.ndarray:
        """The weak-spot filter's (13, slow, fast) scratch (a 1-pixel dummy when not used)."""
        if not needed:
            return np.zeros((13, 1, 1))
        if self._weak_work is None:
            self._weak_work = np.zeros((13, *self.shape))
        return self._weak_work

    def labelling_buffers(self) -> tuple:
        return self.strong, self.previous_strong, self.strong_list, self.index, self.previous_index

    def uniform_gain_map(self, gain: float) -> np.ndarray:
        if self._gain_map is None or self._gain_map[0, 0] != gain:
            self._gain_map = np.full(self.shape, gain)
        return self._gain_map


_per_thread = threading.local()


def _chunk_work(n_slow: int, n_fast: int) -> _ChunkWork:
    """This thread's work buffers, kept from one chunk to the next: allocating and first touching
    their ~15 MB (516×516 pixels) for every chunk cost as much as thresholding 5 images. Every
    entry the kernels read is written first in each image (the tables' zero row and column are
    never written), so reuse cannot change a result."""
    work = getattr(_per_thread, "work", None)
    if work is None or work.shape != (n_slow, n_fast):
        work = _per_thread.work = _ChunkWork(n_slow, n_fast)
    return work


def strong_pixels_in_chunk(
    raw_chunk: np.ndarray,
    first_z: int,
    static_mask: np.ndarray,
    parameters: DispersionParameters = DispersionParameters(),
    trusted_range: tuple[float, float] = (-1.0, 65535.0),
    pedestal: float = 0.0,
    panel_gain: float = 1.0,
    gain_map: np.ndarray | None = None,
    max_strong_pixel_fraction: float = 1.0,
    weak_spots: WeakSpotParameters | None = None,
    halo_before: int = 0,
    halo_after: int = 0,
    excluded_images: np.ndarray | None = None,
    rings: np.ndarray | None = None,
) -> StrongPixels:
    """Threshold a chunk of raw images (n_images, slow, fast) and label its strong pixels in 3D.

    ``first_z`` is the 0-based array index of the chunk's first own image; ``static_mask`` (slow,
    fast) is True for pixels to use (detector, user and resolution masks). With ``weak_spots``
    the pixels are those of the weak-spot filter (weak_spots.py) instead of ``parameters``'
    test; the first ``halo_before`` and last ``halo_after`` images then belong to neighbouring
    chunks and only feed the filter (``weak_spots.halo_images`` of them, fewer at the scan's
    ends), and ``excluded_images`` (True per image of ``raw_chunk``, halos included: those the
    per-pixel test rejected) neither feed it nor get pixels; ``rings`` (int, (slow, fast): each
    pixel's ring about the beam, −1 for none) lets it flatten the background's radial shape
    (weak_spots.py). An image with more than
    ⌈max_strong_pixel_fraction × pixels⌉ strong pixels is marked rejected and contributes none.
    Runs without the GIL.
    """
    raw_chunk = np.ascontiguousarray(raw_chunk)
    if raw_chunk.ndim != 3:
        raise ValueError(f"a chunk must be (n_images, slow, fast), got shape {raw_chunk.shape}")
    n_all, n_slow, n_fast = raw_chunk.shape
    n_images = n_all - halo_before - halo_after
    if n_images < 1 or halo_before < 0 or halo_after < 0:
        raise ValueError(f"a chunk of {n_all} images cannot have halos of {halo_before} and {halo_after}")
    weak = weak_spots is not None
    usable_images = np.ones(n_all, np.bool_)
    if excluded_images is not None:
        if len(excluded_images) != n_all:
            raise ValueError(f"excluded_images has {len(excluded_images)} entries for a chunk of {n_all} images")
        usable_images &= ~np.asarray(excluded_images, np.bool_)
    ring_map = np.full((1, 1), -1, np.int32) if rings is None or not weak else np.ascontiguousarray(rings, np.int32)
    if rings is not None and weak and ring_map.shape != (n_slow, n_fast):
        raise ValueError(f"rings is {ring_map.shape}, the images {(n_slow, n_fast)}")
    n_rings = int(ring_map.max()) + 1 if rings is not None and weak else 0
    taps_xy = gaussian_taps(weak_spots.sigma_px) if weak else np.ones(1)
    taps_z = gaussian_taps(weak_spots.sigma_images) if weak else np.ones(1)
    work = _chunk_work(n_slow, n_fast)
    if gain_map is None:
        gain_map = work.uniform_gain_map(parameters.gain_value)
    ky, kx = parameters.kernel_size
    max_strong = int(np.ceil(max_strong_pixel_fraction * n_slow * n_fast))
    z, y, x, value, score, label, n_components, per_image, rejected = _strong_pixels_in_chunk(
        raw_chunk, int(halo_before), int(n_images), np.ascontiguousarray(static_mask, np.bool_), float(trusted_range[0]),
        float(trusted_range[1]), float(pedestal), float(panel_gain), np.ascontiguousarray(gain_map, np.float64), kx, ky,
        float(parameters.sigma_background), float(parameters.sigma_strong), parameters.min_local_count,
        float(parameters.global_threshold), parameters.extended, max_strong, weak, usable_images, taps_xy, taps_z,
        ring_map, n_rings,
        int(weak_spots.background_half_width) if weak else 0, float(weak_spots.sigma_strong) if weak else 0.0,
        work.weak_work(weak), *work.labelling_buffers(), *work.threshold.buffers(),
    )
    return StrongPixels(int(first_z), z + np.int32(first_z), y, x, value, label, int(n_components), per_image, rejected,
                        score=score if weak else None)


@numba.njit(cache=True, nogil=True)
def _union_across_boundary(parent, last_index, last_label, first_index, first_label):
    """Union components of pixels at the same position on the two images of a boundary.

    Both index lists are sorted (raster order within one image)."""
    i = 0
    j = 0
    while i < len(last_index) and j < len(first_index):
        if last_index[i] < first_index[j]:
            i += 1
        elif first_index[j] < last_index[i]:
            j += 1
        else:
            _union(parent, last_label[i], first_label[j])
            i += 1
            j += 1


def join_chunks(chunks: list[StrongPixels], n_fast: int) -> StrongPixels:
    """The strong pixels of a whole scan from its chunks (any order; they must tile the scan).

    Components touching across chunk boundaries are merged; the result equals labelling the
    whole scan as one chunk.
    """
    if not chunks:
        raise ValueError("join_chunks needs at least one chunk")
    chunks = sorted(chunks, key=lambda c: c.first_z)
    for a, b in zip(chunks, chunks[1:]):
        if a.first_z + a.n_images != b.first_z:
            raise ValueError(f"chunks do not tile the scan: a chunk ends at z={a.first_z + a.n_images}, the next starts at z={b.first_z}")
    offsets = np.cumsum([0] + [c.n_components for c in chunks])
    parent = np.arange(offsets[-1], dtype=np.int32)
    for k in range(len(chunks) - 1):
        a, b = chunks[k], chunks[k + 1]
        last_z = a.first_z + a.n_images - 1
        on_last = slice(np.searchsorted(a.z, last_z), len(a))  # raster order: the tail of a
        on_first = slice(0, np.searchsorted(b.z, b.first_z + 1))  # the head of b
        _union_across_boundary(
            parent,
            a.y[on_last].astype(np.int64) * n_fast + a.x[on_last],
            a.label[on_last] + np.int32(offsets[k]),
            b.y[on_first].astype(np.int64) * n_fast + b.x[on_first],
            b.label[on_first] + np.int32(offsets[k + 1]),
        )
    component_label, n_components = _label_roots(parent, len(parent))
    return StrongPixels(
        first_z=chunks[0].first_z,
        z=np.concatenate([c.z for c in chunks]),
        y=np.concatenate([c.y for c in chunks]),
        x=np.concatenate([c.x for c in chunks]),
        value=np.concatenate([c.value for c in chunks]),
        label=np.concatenate([component_label[c.label + offsets[k]] for k, c in enumerate(chunks)]).astype(np.int32),
        n_components=int(n_components),
        strong_per_image=np.concatenate([c.strong_per_image for c in chunks]),
        rejected_images=np.concatenate([c.rejected_images for c in chunks]),
        score=None if chunks[0].score is None else np.concatenate([c.score for c in chunks]),
    )
