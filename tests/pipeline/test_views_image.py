"""``ewald image``: the PNG is pixel-aligned with the detector, and every overlay is drawn where
the geometry puts it (rings, beam centre, rotation axis, spots, strong pixels, mask), on
synthetic Timepix images with Gaussian spots at known places."""
from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import pytest
from matplotlib import colormaps

from algorithms.geometry.models import rotation_matrix
from algorithms.reflection_table import ReflectionTable
from algorithms.spotfinding import dispersion_threshold_mask, static_mask
from pipeline.images import import_experiments, read_image
from pipeline.params import parse_parameters
from pipeline.steps import image as image_step
from pipeline.views import detector_png
from pipeline.views.overlays import ring_d_spacings, spots_on_images
from smv_files import timepix_header, write_smv

DISTANCE_MM = 1000.0
BEAM_CENTRE_PX = (228.875, 235.78)
N_IMAGES = 6
# (x_px, y_px, image number): spot centres; the last one is on image 6, outside the stack 1–5
SPOTS = [(120.3, 140.6, 2), (400.4, 380.7, 5), (290.3, 90.6, 1), (150.7, 330.2, 3), (100.5, 420.5, 6)]
SPOT_PEAK_COUNTS = 300.0
BACKGROUND_COUNTS = 2.0
SCALE = 2
TOLERANCE = 0.12  # colour distance (RGB in [0, 1]) for antialiased line pixels


def _spot_image(number: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:516, 0:516] + 0.5
    expected = np.full((516, 516), BACKGROUND_COUNTS)
    for sx, sy, on in SPOTS:
        if on == number:
            expected += SPOT_PEAK_COUNTS * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2 * 1.2**2))
    return rng.poisson(expected).astype(np.uint16)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spots")
    rng = np.random.default_rng(7)
    for k in range(1, N_IMAGES + 1):
        header = timepix_header(OSC_START=f"{-10 + (k - 1) * 1.0:.4f}", OSC_RANGE="1.0", DISTANCE=DISTANCE_MM)
        write_smv(folder / f"{k:05d}.img", _spot_image(k, rng), header)
    (experiment,) = import_experiments([folder], mask_timepix_cross=True)
    return experiment


def _strong_table() -> ReflectionTable:
    """The known spots as find_spots would list them: centroid, bbox (z half-open)."""
    xyz = np.array([[x, y, k - 0.5] for x, y, k in SPOTS])
    bbox = np.array([[int(x) - 3, int(x) + 4, int(y) - 3, int(y) + 4, k - 1, k] for x, y, k in SPOTS])
    return ReflectionTable({"id": np.zeros(len(SPOTS), int), "xyzobs.px.value": xyz, "bbox": bbox})


def _params(*args: str):
    params, files = parse_parameters(image_step.Params, list(args))
    assert files == []
    return params


def _render(experiment, reflections, *args):
    result = image_step.run([experiment], reflections, _params(f"scale={SCALE}", *args))
    rgb = matplotlib.image.imread(io.BytesIO(result.summary["png"]), format="png")[..., :3]
    return rgb, result.summary


def _pixel(rgb, x_px, y_px):
    """The PNG pixel showing detector position (x_px, y_px)."""
    return rgb[int(np.floor(y_px * SCALE)), int(np.floor(x_px * SCALE))]


def _colour_near(rgb, x_px, y_px, colour, radius_png_px=1) -> bool:
    """Whether a PNG pixel within ``radius_png_px`` of detector position (x_px, y_px) has ``colour``."""
    X, Y = int(np.floor(x_px * SCALE)), int(np.floor(y_px * SCALE))
    patch = rgb[max(Y - radius_png_px, 0) : Y + radius_png_px + 1, max(X - radius_png_px, 0) : X + radius_png_px + 1]
    return bool((np.linalg.norm(patch - np.asarray(colour), axis=-1) < TOLERANCE).any())


def _fraction_coloured(rgb, points_px, colour, radius_png_px=1) -> float:
    inside = [(x, y) for x, y in points_px if 1 <= x < 515 and 1 <= y < 515]
    return float(np.mean([_colour_near(rgb, x, y, colour, radius_png_px) for x, y in inside]))


def _ring_radius_px(d_angstrom: float, wavelength: float) -> float:
    """A detector normal to the beam: r = D·tan 2θ, λ = 2d sin θ."""
    return DISTANCE_MM * np.tan(2 * np.arcsin(wavelength / (2 * d_angstrom))) / 0.055


def _circle(centre, radius, n=360):
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)])


@pytest.fixture(scope="module")
def max_stack(sweep):
    return _render(sweep, _strong_table(), "image=1", "stack=5", "stack_type=max", "rings.d_spacings=4.0,2.5")


# -------------------------------------------------------------------------------------- geometry


def test_png_is_pixel_aligned_with_the_detector(max_stack):
    rgb, summary = max_stack
    assert rgb.shape[:2] == (516 * SCALE, 516 * SCALE)
    assert summary["scale"] == SCALE
    assert summary["images"] == (1, 5)


def test_beam_centre_cross_is_at_the_beam_centre(max_stack, sweep):
    rgb, summary = max_stack
    np.testing.assert_allclose(summary["beam_centre_px"], BEAM_CENTRE_PX, atol=1e-9)
    bx, by = BEAM_CENTRE_PX
    red = detector_png.BEAM_CENTRE_COLOUR
    for dx, dy in [(0, 0), (4, 0), (-4, 0), (0, 4), (0, -4)]:
        assert _colour_near(rgb, bx + dx, by + dy, red), (dx, dy)
    for dx, dy in [(3, 3), (-3, 3), (9, 0), (0, -9)]:  # between the arms and beyond their ends
        assert not _colour_near(rgb, bx + dx, by + dy, red), (dx, dy)


def test_rings_are_drawn_at_the_radius_of_their_d_spacing(max_stack, sweep):
    rgb, summary = max_stack
    assert summary["ring_d_spacings"] == [4.0, 2.5]
    for d in (4.0, 2.5):
        radius = _ring_radius_px(d, sweep.beam.wavelength)
        assert _fraction_coloured(rgb, _circle(BEAM_CENTRE_PX, radius), detector_png.RING_COLOUR) > 0.95, d
        for off in (-4.0, 4.0):  # a ring 4 px off would be found here instead
            assert _fraction_coloured(rgb, _circle(BEAM_CENTRE_PX, radius + off), detector_png.RING_COLOUR) < 0.05, (d, off)


def test_rings_on_a_tilted_detector_follow_the_resolution_of_each_pixel(sweep):
    """Tilt the panel 35° about an in-plane line through the beam centre: the rings become
    ellipses; each drawn point must lie where the pixel's own d equals the ring's d."""
    tilted = sweep.copy()
    detector, s0 = tilted.detector, tilted.beam.s0
    pivot = detector.pixel_to_lab(np.array(BEAM_CENTRE_PX))
    R = rotation_matrix(np.array([1.0, 1.0, 0.0]), np.radians(35.0))
    detector.origin = pivot + R @ (detector.origin - pivot)
    detector.fast_axis, detector.slow_axis = R @ detector.fast_axis, R @ detector.slow_axis
    rgb, summary = _render(tilted, None, "rings.d_spacings=3.0", "threshold_pixels=False", "show_rotation_axis=False")
    np.testing.assert_allclose(summary["beam_centre_px"], BEAM_CENTRE_PX, atol=1e-6)
    # along each direction from the beam centre, bisect for the pixel position whose d is 3.0 Å
    points, radii = [], []
    for angle in np.linspace(0, 2 * np.pi, 180, endpoint=False):
        direction = np.array([np.cos(angle), np.sin(angle)])
        lo, hi = 1.0, 400.0
        for _ in range(60):
            mid = (lo + hi) / 2
            d = detector.resolution_of_pixel(np.array(BEAM_CENTRE_PX) + mid * direction, s0)
            lo, hi = (mid, hi) if d > 3.0 else (lo, mid)
        points.append(np.array(BEAM_CENTRE_PX) + lo * direction)
        radii.append(lo)
    assert max(radii) / min(radii) > 1.15  # really an ellipse, not the untilted circle
    assert _fraction_coloured(rgb, points, detector_png.RING_COLOUR) > 0.95
    untilted_radius = _ring_radius_px(3.0, sweep.beam.wavelength)
    assert _fraction_coloured(rgb, _circle(BEAM_CENTRE_PX, untilted_radius), detector_png.RING_COLOUR) < 0.5


def test_rotation_axis_is_drawn_through_the_beam_centre_along_its_projection(max_stack, sweep):
    rgb, summary = max_stack
    axis = sweep.goniometer.rotation_axis_lab  # (0.7826, −0.6226, 0) for this detector class
    direction = np.array([axis[0], -axis[1]])  # fast = +x, slow = −y
    direction /= np.linalg.norm(direction)
    (x0, y0), (x1, y1) = summary["rotation_axis_px"]
    drawn = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0)
    np.testing.assert_allclose(drawn, direction, atol=1e-9)  # from the −ê end to the +ê end
    t = np.linspace(-200, 200, 200)
    t = t[np.abs(t) > 20]  # leave out the beam-centre cross
    on_line = np.array(BEAM_CENTRE_PX) + t[:, None] * direction
    beside = on_line + 5.0 * np.array([-direction[1], direction[0]])
    # a dashed line: about 60 % of the points on it are inked, none 5 px beside it
    assert _fraction_coloured(rgb, on_line, detector_png.AXIS_COLOUR) > 0.45
    assert _fraction_coloured(rgb, beside, detector_png.AXIS_COLOUR) < 0.02


# ------------------------------------------------------------------------------- image content


def test_spot_circles_mark_the_spots_seen_on_the_stack(max_stack):
    rgb, summary = max_stack
    assert summary["n_spots_shown"] == 4  # the spot on image 6 is outside images 1–5
    for x, y, k in SPOTS:
        fraction = _fraction_coloured(rgb, _circle((x, y), detector_png.SPOT_RADIUS_PX, 24), detector_png.SPOT_COLOUR)
        if k <= 5:
            assert fraction > 0.9, (x, y, k)
        else:
            assert fraction == 0.0, (x, y, k)
        # the marker is a circle: not drawn at the centroid nor at twice its radius
        assert not _colour_near(rgb, x, y, detector_png.SPOT_COLOUR, 0)
        assert _fraction_coloured(rgb, _circle((x, y), 2 * detector_png.SPOT_RADIUS_PX, 24), detector_png.SPOT_COLOUR) < 0.1


def test_strong_pixels_are_those_of_the_dispersion_threshold_on_any_shown_image(max_stack, sweep):
    rgb, summary = max_stack
    mask = static_mask(sweep.detector, sweep.beam.s0)
    expected = np.zeros((516, 516), bool)
    for index in range(5):
        expected |= dispersion_threshold_mask(read_image(sweep, index), mask, trusted_range=sweep.detector.trusted_range)
    assert summary["n_strong_pixels"] == int(expected.sum())
    for x, y, k in SPOTS:  # the centre of each spot of images 1–5 is strong; image 6's is not shown
        assert expected[int(y), int(x)] == (k <= 5)
        assert _colour_near(rgb, x, y, detector_png.STRONG_COLOUR, 0) == (k <= 5), (x, y, k)
    # the raster itself: strong pixels painted (overlays aside), no others
    centres = rgb[SCALE // 2 :: SCALE, SCALE // 2 :: SCALE]
    painted = np.linalg.norm(centres - np.asarray(detector_png.STRONG_COLOUR), axis=-1) < 1e-3
    assert painted[expected].mean() > 0.8
    assert not painted[~expected].any()


def test_max_and_mean_stacks_show_the_max_and_mean_counts(max_stack, sweep):
    counts = np.array([read_image(sweep, i) for i in range(5)], dtype=float)
    region = (slice(40, 100), slice(440, 500))  # (slow, fast): no overlay there
    for stack_type, reduce in (("max", np.max), ("mean", np.mean)):
        if stack_type == "max":
            rgb, summary = max_stack
        else:
            rgb, summary = _render(sweep, None, "stack=5", "stack_type=mean", "threshold_pixels=False", "resolution_rings=False")
        reduced = reduce(counts, axis=0)
        valid = static_mask(sweep.detector, sweep.beam.s0)
        positive = reduced[valid & (reduced > 0)]
        assert summary["display_maximum"] == pytest.approx(np.percentile(positive, detector_png.AUTO_WHITE_PERCENTILE))
        expected = colormaps["gray_r"](np.clip(reduced[region] / summary["display_maximum"], 0, 1))[..., :3]
        shown = rgb[SCALE // 2 :: SCALE, SCALE // 2 :: SCALE][region]
        np.testing.assert_allclose(shown, expected, atol=1.0 / 255 + 1e-6)


def test_masked_pixels_are_shaded(max_stack, sweep):
    rgb, summary = max_stack
    counts = np.array([read_image(sweep, i) for i in range(5)], dtype=float).max(axis=0)
    assert summary["n_masked_pixels"] == 2 * 6 * 516 - 36  # the Timepix cross, rows and columns 255–260
    for x, y in [(258.5, 20.5), (30.5, 257.5), (490.5, 256.5)]:
        grey = colormaps["gray_r"](min(counts[int(y), int(x)] / summary["display_maximum"], 1.0))[:3]
        expected = (1 - detector_png.MASK_OPACITY) * np.asarray(grey) + detector_png.MASK_OPACITY * np.asarray(detector_png.MASK_COLOUR)
        np.testing.assert_allclose(_pixel(rgb, x, y), expected, atol=1.0 / 255 + 1e-6)


def test_brightness_scales_the_full_scale_value(sweep, max_stack):
    _, summary = max_stack
    rgb, _ = _render(sweep, None, "stack=5", "brightness=200", "threshold_pixels=False", "resolution_rings=False")
    counts = np.array([read_image(sweep, i) for i in range(5)], dtype=float).max(axis=0)
    region = (slice(40, 100), slice(440, 500))
    expected = colormaps["gray_r"](np.clip(counts[region] * 2 / summary["display_maximum"], 0, 1))[..., :3]
    np.testing.assert_allclose(rgb[SCALE // 2 :: SCALE, SCALE // 2 :: SCALE][region], expected, atol=1.0 / 255 + 1e-6)


# ------------------------------------------------------------------------------ small helpers


def test_ring_spacings_are_even_in_inverse_d_squared():
    # 1/d² = 0.25·i/4 → d = 4, 2.83, 2.31, 2 (two significant figures)
    assert ring_d_spacings(2.0, 4) == [4.0, 2.8, 2.3, 2.0]
    assert ring_d_spacings(2.0, 0) == []


def test_spots_shown_are_those_whose_z_range_overlaps_the_images():
    table = _strong_table()
    np.testing.assert_allclose(spots_on_images(table, 0, (1, 3)), [[120.3, 140.6], [150.7, 330.2]])
    assert len(spots_on_images(table, 1, (0, 6))) == 0  # another experiment
    del table["bbox"]
    np.testing.assert_allclose(spots_on_images(table, 0, (4, 6)), [[400.4, 380.7], [100.5, 420.5]])


# -------------------------------------------------------------------------------- command line


def test_cli_writes_the_png_and_refuses_an_image_outside_the_sweep(sweep, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main
    from pipeline.formats.expt import write_experiments
    from pipeline.formats.refl import write_reflections

    monkeypatch.chdir(tmp_path)
    write_experiments([sweep], "imported.expt")
    write_reflections(_strong_table(), "strong.refl")
    assert main(["image", "imported.expt", "strong.refl", "stack=6", "output=max.png"]) == 0
    assert (tmp_path / "max.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Spots shown: 5" in (tmp_path / "image.log").read_text()
    assert main(["image", "imported.expt", "image=7", "output=bad.png"]) == 2
    assert "image=7" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------------ simulated sweep (ewald simulate)


def _strong_fraction_near_line(strong: np.ndarray, centre, direction, half_width_px=8.0, inner_px=70.0) -> float:
    """Fraction of the pixels within ``half_width_px`` of the line through ``centre`` along
    ``direction`` (and farther than ``inner_px`` from ``centre``) that are strong."""
    y, x = np.mgrid[0 : strong.shape[0], 0 : strong.shape[1]] + 0.5
    offset = np.stack([x - centre[0], y - centre[1]], axis=-1)
    along = offset @ direction
    across = np.abs(offset @ np.array([-direction[1], direction[0]]))
    band = (across < half_width_px) & (np.abs(along) > inner_px)
    return float(strong[band].mean())


def test_max_stack_of_a_simulated_sweep_has_its_spot_free_band_along_the_drawn_axis(tmp_path, monkeypatch):
    """Spots of a rotation sweep thin out towards the projection of the rotation axis (a
    reciprocal-lattice point at distance ρ from the axis diffracts with density ∝ ρ), so in
    the max-stack the strong pixels avoid the drawn axis line; the perpendicular line through
    the beam centre (where a 90°-wrong axis would be drawn) crosses many spots."""
    pytest.importorskip("pipeline.steps.simulate")
    from pipeline.cli import main
    from pipeline.formats.expt import read_experiments
    from pipeline.views.overlays import rotation_axis_line_px

    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "preset=tiny", "n_crystals=1", "sim"]) == 0
    (experiment,) = read_experiments(tmp_path / "sim" / "1" / "truth.expt")
    first, last = experiment.scan.image_range
    mask = static_mask(experiment.detector, experiment.beam.s0)
    stacked = image_step.stacked_images(experiment, first, last, "max", mask, image_step.DispersionParameters())
    centre = experiment.detector.beam_centre_px(experiment.beam.s0)
    line = rotation_axis_line_px(experiment.detector, experiment.beam.s0, experiment.goniometer.rotation_axis_lab)
    direction = np.subtract(line.end_px, line.start_px)
    direction /= np.linalg.norm(direction)
    along_axis = _strong_fraction_near_line(stacked.strong, centre, direction)
    across_axis = _strong_fraction_near_line(stacked.strong, centre, np.array([-direction[1], direction[0]]))
    print(f"strong fraction along the axis {along_axis:.4f}, across it {across_axis:.4f}")
    assert across_axis > 0.03
    assert along_axis < 0.25 * across_axis
