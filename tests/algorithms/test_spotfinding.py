"""Spot finding against exact references: an independent scipy.ndimage implementation of the
same algorithm, hand-made pixel patterns with known components, known spot centres, and DIALS'
own numbers (the first spot of the lysozyme strong.refl, histograms from DIALS logs)."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from algorithms.geometry.models import Beam, Detector
from algorithms.reflection_table import Flags
from algorithms.shoebox import MaskCode
from algorithms.spotfinding import (
    DispersionParameters,
    SpotFilter,
    default_min_spot_size,
    dispersion_threshold_mask,
    find_spots,
    join_chunks,
    spot_counts_per_image_histogram,
    static_mask,
    strong_pixels_in_chunk,
)
from algorithms.spotfinding.centroids import spot_properties
from algorithms.spotfinding.reference import reference_spots, reference_threshold


def gaussian_spots(rng, shape, centres_zyx, intensities, sigma_zyx=(0.7, 1.2, 1.2), background=3.0):
    """Poisson images of 3D Gaussian spots (expected counts integrate to ``intensities``)."""
    nz, ny, nx = shape
    expected = np.full(shape, background, dtype=float)
    z, y, x = (np.arange(n) + 0.5 for n in shape)
    sz, sy, sx = sigma_zyx
    for (cz, cy, cx), intensity in zip(centres_zyx, intensities):
        gz = np.exp(-((z - cz) ** 2) / (2 * sz**2))
        gy = np.exp(-((y - cy) ** 2) / (2 * sy**2))
        gx = np.exp(-((x - cx) ** 2) / (2 * sx**2))
        profile = gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
        expected += intensity * profile / profile.sum()
    return rng.poisson(expected).astype(np.float32)


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(7)
    shape = (24, 90, 110)
    n = 60
    centres = rng.uniform([1, 5, 5], [shape[0] - 1, shape[1] - 5, shape[2] - 5], size=(n, 3))
    return gaussian_spots(rng, shape, centres, rng.uniform(200, 4000, n))


# ------------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("algorithm", ["dispersion", "dispersion_extended"])
@pytest.mark.parametrize("min_local,gain,kernel", [(2, None, (3, 3)), (0, None, (3, 3)), (5, 1.7, (2, 4))])
def test_threshold_equals_independent_reference(stack, algorithm, min_local, gain, kernel):
    mask = np.ones(stack.shape[1:], bool)
    mask[40:46, :] = False  # a masked band (like the Timepix cross) erodes spots next to it
    mask[:, :2] = False
    image = stack[5].copy()
    image[10, 10] = 65535  # at the exclusive upper trusted limit: masked
    image[60, 60] = 80  # a hot pixel
    parameters = DispersionParameters(algorithm=algorithm, min_local=min_local, gain=gain, kernel_size=kernel)
    ours = dispersion_threshold_mask(image, mask, parameters, trusted_range=(-1, 65535))
    reference = reference_threshold(image, mask, parameters, trusted_range=(-1, 65535))
    assert ours.sum() > 20
    np.testing.assert_array_equal(ours, reference)
    assert not ours[10, 10] and not ours[~mask].any()


@pytest.mark.parametrize("kernel", [(1, 1), (2, 3), (3, 3), (4, 4)])
def test_dense_and_edge_dispersed_regions_equal_the_reference(stack, kernel):
    """Erosion and the background test where dispersed regions are large, touch all four image
    edges or fill nearly the whole image (a scrambled frame), for reaches 0 to 3; two core
    pixels at 2²⁴ or more stay out of the window statistics."""
    rng = np.random.default_rng(11)
    scrambled = rng.permutation(stack[8].ravel()).reshape(stack.shape[1:])
    blobs = gaussian_spots(rng, (1,) + stack.shape[1:], [(0.5, 0, 0), (0.5, 0, 109), (0.5, 89, 0), (0.5, 89, 109),
                                                         (0.5, 45, 0), (0.5, 0, 55)], [60000] * 6,
                           sigma_zyx=(0.5, 4.0, 4.0))[0].astype(np.float64)
    blobs[1, 1] = blobs[45, 2] = 2.0**24 + 3  # core pixels left out of the statistics
    mask = np.ones(stack.shape[1:], bool)
    for image in (scrambled, blobs):
        parameters = DispersionParameters(kernel_size=kernel)
        ours = dispersion_threshold_mask(image, mask, parameters)
        np.testing.assert_array_equal(ours, reference_threshold(image, mask, parameters))
        assert ours.sum() > 100


def test_spots_at_every_edge_can_be_strong():
    """The erosion treats the outside of the image as not background on all four edges (DIALS
    2.1.1 found a strong pixel in column 0 of lysozyme experiment_14 image 1)."""
    images = pixels_image((1, 20, 20), [(0, 0, 10), (0, 10, 0), (0, 19, 12), (0, 5, 19)])
    strong = dispersion_threshold_mask(images[0], np.ones((20, 20), bool))
    assert np.argwhere(strong).tolist() == [[0, 10], [5, 19], [10, 0], [19, 12]]


def test_kernel_size_is_slow_then_fast_as_in_dials():
    """kernel_size=(1, 3): a 3-row × 7-column window; with min_local ≤ 0 a pixel needs the whole
    window on the detector, so 1 row from the top edge is enough but 2 columns from the side is not."""
    images = pixels_image((1, 20, 20), [(0, 1, 10), (0, 10, 2), (0, 10, 3)])
    strong = dispersion_threshold_mask(images[0], np.ones((20, 20), bool),
                                       DispersionParameters(algorithm="dispersion", kernel_size=(1, 3), min_local=0))
    assert np.argwhere(strong).tolist() == [[1, 10], [10, 3]]


def test_no_strong_pixels_in_pure_poisson_background():
    rng = np.random.default_rng(3)
    images = rng.poisson(20.0, (5, 200, 200)).astype(np.float32)
    mask = np.ones((200, 200), bool)
    n_strong = sum(dispersion_threshold_mask(im, mask).sum() for im in images)
    # dispersion_extended with σ_b = 6 essentially never fires on Poisson noise
    assert n_strong < 10


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="threshold algorithm"):
        DispersionParameters(algorithm="radial")
    with pytest.raises(ValueError, match="min_local"):
        DispersionParameters(min_local=1)
    with pytest.raises(ValueError, match="global_threshold"):
        DispersionParameters(global_threshold=-1)
    assert DispersionParameters(min_local=0).min_local_count == 49


# ------------------------------------------------------------------------------- labelling


def pixels_image(shape, points_zyx, value=100.0):
    """Zero images with bright pixels: exactly those pixels are strong (both algorithms)."""
    images = np.zeros(shape, np.float32)
    for z, y, x in points_zyx:
        images[z, y, x] = value
    return images


@pytest.mark.parametrize("chunk_images", [1, 2, 6])
def test_components_are_6_connected_across_images_and_chunks(chunk_images):
    points = [
        (0, 10, 10), (0, 11, 11),  # diagonal in-plane: two components
        (2, 20, 20), (3, 20, 20), (4, 20, 20), (4, 20, 21),  # through images 2–4, then sideways: one
        (2, 30, 30), (3, 31, 30),  # diagonal across images: two components
        (5, 40, 40), (5, 40, 41), (5, 41, 40),  # an L on one image: one component
    ]
    images = pixels_image((6, 60, 60), points)
    chunks = [strong_pixels_in_chunk(images[s : s + chunk_images], 10 + s, np.ones((60, 60), bool))
              for s in range(0, 6, chunk_images)]
    pixels = join_chunks(chunks[::-1], 60)  # chunk order must not matter
    assert len(pixels) == len(points)
    assert pixels.n_components == 6
    labels = {(int(z) - 10, int(y), int(x)): int(k) for z, y, x, k in zip(pixels.z, pixels.y, pixels.x, pixels.label)}
    assert labels[(0, 10, 10)] == 0 and labels[(0, 11, 11)] == 1  # numbered by first pixel in raster order
    assert labels[(2, 20, 20)] == labels[(3, 20, 20)] == labels[(4, 20, 20)] == labels[(4, 20, 21)]
    assert labels[(2, 30, 30)] != labels[(3, 31, 30)]
    assert labels[(5, 40, 40)] == labels[(5, 40, 41)] == labels[(5, 41, 40)]
    np.testing.assert_array_equal(pixels.strong_per_image, [2, 0, 2, 2, 2, 3])


def test_work_buffers_kept_between_chunks_change_no_result(stack):
    """A thread keeps its work buffers from chunk to chunk: a chunk gives the same pixels after
    a dense (scrambled) chunk, after a chunk of another image size and in a fresh thread."""
    mask = np.ones(stack.shape[1:], bool)

    def run(chunk):
        pixels = strong_pixels_in_chunk(chunk, 0, mask)
        return [getattr(pixels, name) for name in ("z", "y", "x", "value", "label", "strong_per_image")]

    first = run(stack[3:7])
    rng = np.random.default_rng(3)
    run(rng.permutation(stack[3:7].ravel()).reshape(4, *stack.shape[1:]))
    after_dense = run(stack[3:7])
    strong_pixels_in_chunk(stack[:2, :50, :70], 0, np.ones((50, 70), bool))
    after_other_size = run(stack[3:7])
    with ThreadPoolExecutor(1) as pool:
        fresh = pool.submit(run, stack[3:7]).result()
    assert len(first[0]) > 100
    for results in (after_dense, after_other_size, fresh):
        for a, b in zip(first, results):
            np.testing.assert_array_equal(a, b)


def test_join_chunks_rejects_gaps():
    images = pixels_image((4, 20, 20), [(0, 5, 5)])
    mask = np.ones((20, 20), bool)
    with pytest.raises(ValueError, match="tile"):
        join_chunks([strong_pixels_in_chunk(images[:2], 0, mask), strong_pixels_in_chunk(images[2:], 3, mask)], 20)


def test_spot_properties_equal_independent_reference(stack):
    mask = np.ones(stack.shape[1:], bool)
    ours = spot_properties(strong_pixels_in_chunk(stack, 7, mask))
    reference = reference_spots(stack, 7, mask, trusted_range=(-1, 65535))
    assert len(ours) > 40
    for name in ("n_pixels", "bbox", "peak", "intensity"):
        np.testing.assert_array_equal(getattr(ours, name), reference[name], err_msg=name)
    np.testing.assert_allclose(ours.centroid, reference["centroid"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.centroid_variance, reference["centroid_variance"], rtol=0, atol=1e-12)


def test_results_do_not_depend_on_chunking():
    rng = np.random.default_rng(11)
    shape = (72, 64, 64)
    n = 120
    centres = rng.uniform([0, 4, 4], [72, 60, 60], size=(n, 3))
    images = gaussian_spots(rng, shape, centres, rng.uniform(100, 3000, n), sigma_zyx=(1.5, 1.0, 1.0))
    mask = np.ones(shape[1:], bool)
    tables = [find_spots(images, 0, mask, chunk_images=c).reflections for c in (1, 5, 16, 72)]
    first = tables[0]
    assert len(first) > 50 and (first["bbox"][:, 5] - first["bbox"][:, 4] > 1).sum() > 20
    for other in tables[1:]:
        assert other.keys() == first.keys()
        for name in first.keys():
            if name == "shoebox":
                for field in ("bbox", "offsets", "data", "mask"):
                    np.testing.assert_array_equal(getattr(other[name], field), getattr(first[name], field))
            else:
                np.testing.assert_array_equal(other[name], first[name], err_msg=name)


def test_image_with_too_many_strong_pixels_is_left_out(stack):
    """A scrambled image makes nearly every pixel strong; with max_strong_pixel_fraction it is
    rejected and the result equals that of a blank image in its place."""
    mask = np.ones(stack.shape[1:], bool)
    scrambled = stack.copy()
    scrambled[9] = np.random.default_rng(1).uniform(0, 2000, stack.shape[1:]).astype(np.float32)
    blank = stack.copy()
    blank[9] = 0
    found = find_spots(scrambled, 0, mask, chunk_images=4, max_strong_pixel_fraction=0.25)
    reference = find_spots(blank, 0, mask, chunk_images=4)
    assert found.strong_per_image[9] > 0.25 * mask.size
    np.testing.assert_array_equal(np.flatnonzero(found.rejected_images), [9])
    assert not reference.rejected_images.any()
    for name in ("bbox", "xyzobs.px.value", "n_signal"):
        np.testing.assert_array_equal(found.reflections[name], reference.reflections[name])


# ------------------------------------------------------------------------------- centroids


def test_centroid_and_variance_of_a_dials_spot():
    """The first spot of DIALS 2.1.1's strong.refl for lysozyme experiment_14 (real numbers)."""
    images = np.zeros((1, 60, 400), np.float32)
    images[0, 32:35, 339:342] = [[0, 0, 52], [47, 62, 56], [45, 45, 45]]
    found = find_spots(images, 0, np.ones((60, 400), bool))
    table = found.reflections
    assert len(table) == 1
    np.testing.assert_allclose(table["xyzobs.px.value"][0], [340.67329545, 33.73579545, 0.5], atol=1e-8)
    np.testing.assert_allclose(table["xyzobs.px.variance"][0], [0.08554626, 0.08491381, 1 / 12], atol=1e-8)
    assert table["intensity.sum.value"][0] == table["intensity.sum.variance"][0] == 352
    assert table["n_signal"][0] == 7
    np.testing.assert_array_equal(table["bbox"][0], [339, 342, 32, 35, 0, 1])
    assert table["flags"][0] == Flags.strong and table["id"][0] == 0 and table["panel"][0] == 0
    shoebox = table["shoebox"]
    data = shoebox.data[shoebox.offsets[0] : shoebox.offsets[1]].reshape(1, 3, 3)
    mask = shoebox.mask[shoebox.offsets[0] : shoebox.offsets[1]].reshape(1, 3, 3)
    np.testing.assert_array_equal(data, images[:, 32:35, 339:342])
    np.testing.assert_array_equal(mask, np.where(data > 0, MaskCode.Valid | MaskCode.Foreground, 0))


def test_centroids_of_known_spots(stack):
    rng = np.random.default_rng(5)
    shape = (16, 100, 100)
    grid = np.array([(z, y, x) for z in (4.3, 10.8) for y in (20.2, 50.5, 80.7) for x in (15.1, 45.6, 75.9)])
    images = gaussian_spots(rng, shape, grid, np.full(len(grid), 20000.0), sigma_zyx=(0.8, 1.0, 1.0), background=1.0)
    table = find_spots(images, 0, np.ones(shape[1:], bool)).reflections
    assert len(table) == len(grid)
    found = table["xyzobs.px.value"][:, ::-1]  # z, y, x
    nearest = np.argmin(np.linalg.norm(found[:, None] - grid[None], axis=2), axis=1)
    assert sorted(nearest) == list(range(len(grid)))
    np.testing.assert_allclose(found, grid[nearest], atol=0.06)
    # the centroid variance is the squared error of the mean (tiny for 20000 counts) plus 1/12
    np.testing.assert_allclose(table["xyzobs.px.variance"], 1 / 12, atol=2e-4)


def test_size_and_separation_filters():
    images = pixels_image((3, 40, 40), [(0, 5, 5), (0, 5, 6), (0, 20, 20), (0, 20, 21), (0, 21, 20)])
    images[1, 30:33, 10:13] = 10.0  # a 9-pixel flat spot
    found = find_spots(images, 0, np.ones((40, 40), bool), spot_filter=SpotFilter(min_spot_size=3, max_spot_size=8))
    assert (found.n_extracted, found.n_too_small, found.n_too_large, found.n_centroided) == (3, 1, 1, 1)
    assert len(found.reflections) == 1 and found.reflections["n_signal"][0] == 3
    # a long streak whose brightest voxel lies far from its centroid is dropped by max_separation
    streak = np.zeros((1, 20, 40), np.float32)
    streak[0, 10, 5:30] = 10.0
    streak[0, 10, 5] = 12.0
    kept = find_spots(streak, 0, np.ones((20, 40), bool)).reflections
    assert len(kept) == 0
    kept = find_spots(streak, 0, np.ones((20, 40), bool), spot_filter=SpotFilter(max_separation=20)).reflections
    assert len(kept) == 1
    assert default_min_spot_size("SENSOR_PAD") == 3 and default_min_spot_size("SENSOR_CCD") == 6


# ---------------------------------------------------------------------------------- masks


def test_static_mask_combines_rectangles_border_resolution_and_user_mask():
    detector = Detector(origin=(-14.0, 14.0, -200.0), image_size=(516, 516), mask=[[0, 516, 255, 261]])
    s0 = Beam(direction=(0, 0, 1), wavelength=0.0251).s0
    user = np.ones((516, 516), bool)
    user[0, 0] = False
    mask = static_mask(detector, s0, d_min=0.3, d_max=2.0, border=2, untrusted_rectangles=[(255, 261, 0, 516)],
                       untrusted_circles=[(100.0, 100.0, 3.0)], user_mask=user)
    d = detector.resolution_map(s0)
    y, x = np.mgrid[0:516, 0:516]
    expected = (
        ~((y >= 255) & (y < 261)) & ~((x >= 255) & (x < 261))
        & (x >= 2) & (x < 514) & (y >= 2) & (y < 514)
        & ((x + 0.5 - 100) ** 2 + (y + 0.5 - 100) ** 2 > 9)
        & (d >= 0.3) & (d <= 2.0) & user
    )
    np.testing.assert_array_equal(mask, expected)
    assert 0 < (d > 2.0).sum() and 0 < (d < 0.3).sum()  # both limits cut something here


# ------------------------------------------------------------------------------ histogram


def test_histogram_layout():
    z = np.array([0.5, 0.5, 1.5, 2.5, 2.5, 2.5, 9.5])
    text = spot_counts_per_image_histogram(z)
    lines = text.split("\n")
    assert lines[0] == "7 spots found on 10 images (max 3 / bin)"
    assert len(lines) == 12 and all(len(line) == 10 for line in lines[1:])
    # jittered z: 0.25 0.75 1.25 2.75 2.25 2.75 9.25; bins of 0.9 from 0.5 → counts 3 1 2 0 … 0 1
    assert lines[1] == "*         "  # row 10: only the bin of 3
    assert lines[7] == "* *       "  # row 4: heights 10, 3, 7, 0…, 3
    assert lines[10] == "***      *"  # row 1
    assert lines[-1] == "1 image 10"
    assert spot_counts_per_image_histogram(np.array([3.5, 3.6])) == "2 spots found on 1 image"
