"""One detector image with the image viewer's overlays, rendered to PNG bytes.

The picture is pixel-aligned with the detector: the PNG is ``scale`` × the panel's size with no
margins, so detector pixel (x, y) (x along fast, y along slow, pixel corners at integers) covers
PNG pixels [x·scale, (x+1)·scale) × [y·scale, (y+1)·scale). Pixel values, strong pixels and the
mask are composed in numpy as one RGB raster; rings, the rotation axis, spot circles and the
beam centre are vector overlays drawn by matplotlib's Agg renderer (no display, no pyplot).

Colours are fixed (module constants) so that a test or a user can find each overlay by colour.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from pipeline.views.overlays import AxisLine

RING_COLOUR = (0.0, 0.7, 1.0)
SPOT_COLOUR = (0.1, 0.9, 0.1)
STRONG_COLOUR = (1.0, 0.55, 0.0)
STRONG_COLOUR_ON_HEATMAP = (0.0, 1.0, 1.0)  # orange would hide among the heatmap's own colours
BEAM_CENTRE_COLOUR = (1.0, 0.0, 0.0)
AXIS_COLOUR = (1.0, 0.0, 1.0)
MASK_COLOUR = (0.25, 0.25, 1.0)
MASK_OPACITY = 0.45
TITLE_COLOUR = (1.0, 0.85, 0.0)

COLOUR_SCHEMES = {"greyscale": "gray_r", "inverse": "gray", "heatmap": "hot"}
# percentile of the valid pixels shown at full scale when brightness=100
AUTO_WHITE_PERCENTILE = 95.0

SPOT_RADIUS_PX = 5.0  # detector pixels
LINE_WIDTH_PX = 2.0  # PNG pixels; ≥ 2 so that a line covers some pixel completely
BEAM_CROSS_HALF_PX = 6.0  # detector pixels
FONT_PX = 11.0  # PNG pixels at scale 1


@dataclass
class Ring:
    d_angstrom: float
    polylines_px: list[np.ndarray]
    label_px: tuple[float, float] | None


@dataclass
class DetectorPicture:
    """Everything drawn on one picture; positions in detector pixels."""

    image: np.ndarray  # (n_slow, n_fast) values shown
    masked: np.ndarray | None = None  # True = masked pixel (shaded)
    strong: np.ndarray | None = None  # True = strong pixel (painted)
    spots_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    rings: list[Ring] = field(default_factory=list)
    beam_centre_px: tuple[float, float] | None = None
    axis_line: AxisLine | None = None
    title: str = ""


def auto_display_maximum(image: np.ndarray, valid: np.ndarray | None = None) -> float:
    """The value shown at full scale at brightness 100: the 95th percentile of the valid pixels
    above zero. The bright centre of an electron-diffraction image (direct beam and inelastic
    scatter) then saturates instead of compressing everything else into the lightest greys, and
    spots well above the background stay dark (chosen by eye on Timepix lysozyme images)."""
    values = image[valid] if valid is not None else image.ravel()
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return 1.0
    return max(float(np.percentile(values, AUTO_WHITE_PERCENTILE)), 1e-6)


def colour_raster(picture: DetectorPicture, colour_scheme: str, display_maximum: float, brightness: float) -> np.ndarray:
    """(n_slow, n_fast, 3) RGB in [0, 1]: the colour-mapped values, then strong pixels painted
    and masked pixels shaded."""
    from matplotlib import colormaps

    if colour_scheme not in COLOUR_SCHEMES:
        raise ValueError(f"colour_scheme must be one of {', '.join(COLOUR_SCHEMES)}, not {colour_scheme}")
    white = display_maximum * 100.0 / brightness
    scaled = np.clip(np.nan_to_num(picture.image / white), 0.0, 1.0)
    rgb = colormaps[COLOUR_SCHEMES[colour_scheme]](scaled)[..., :3]
    if picture.strong is not None:
        rgb[picture.strong] = STRONG_COLOUR_ON_HEATMAP if colour_scheme == "heatmap" else STRONG_COLOUR
    if picture.masked is not None:
        rgb[picture.masked] = (1.0 - MASK_OPACITY) * rgb[picture.masked] + MASK_OPACITY * np.asarray(MASK_COLOUR)
    return rgb


def render_png(picture: DetectorPicture, colour_scheme: str = "greyscale", brightness: float = 100.0,
               display_maximum: float | None = None, scale: int = 1) -> bytes:
    """The picture as PNG bytes, ``scale`` PNG pixels per detector pixel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib import patheffects

    if brightness <= 0:
        raise ValueError(f"brightness must be positive, got {brightness}")
    n_slow, n_fast = picture.image.shape
    valid = None if picture.masked is None else ~picture.masked
    maximum = auto_display_maximum(picture.image, valid) if display_maximum is None else display_maximum
    rgb = colour_raster(picture, colour_scheme, maximum, brightness)

    dpi = 100.0
    figure = Figure(figsize=(n_fast * scale / dpi, n_slow * scale / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    axes.imshow(rgb, extent=(0, n_fast, n_slow, 0), interpolation="nearest", resample=False)
    axes.set_xlim(0, n_fast)
    axes.set_ylim(n_slow, 0)
    points_per_png_pixel = 72.0 / dpi
    line_width = LINE_WIDTH_PX * points_per_png_pixel
    font_size = FONT_PX * scale * points_per_png_pixel
    outline = [patheffects.withStroke(linewidth=2.0 * line_width, foreground="black")]

    for ring in picture.rings:
        for polyline in ring.polylines_px:
            axes.plot(polyline[:, 0], polyline[:, 1], color=RING_COLOUR, linewidth=line_width, solid_capstyle="butt")
        if ring.label_px is not None:
            # text on the beam-centre side of the ring point, so that it stays inside the image
            right, below = ring.label_px[0] > n_fast / 2, ring.label_px[1] > n_slow / 2
            axes.text(ring.label_px[0], ring.label_px[1], f" {ring.d_angstrom:g} Å ", color=RING_COLOUR, fontsize=font_size,
                      ha="right" if right else "left", va="bottom" if below else "top", path_effects=outline)
    if picture.axis_line is not None:
        (x0, y0), (x1, y1) = picture.axis_line.start_px, picture.axis_line.end_px
        axes.plot([x0, x1], [y0, y1], color=AXIS_COLOUR, linewidth=line_width, linestyle=(0, (6, 4)))
        # the label sits at the +ê end, inside the image
        lx, ly = x0 + 0.85 * (x1 - x0), y0 + 0.85 * (y1 - y0)
        # image rows grow downwards, so the on-screen angle has the opposite sign; keep text upright
        angle_deg = np.degrees(np.arctan2(-(y1 - y0), x1 - x0))
        angle_deg = angle_deg - 180.0 if angle_deg > 90.0 else angle_deg + 180.0 if angle_deg < -90.0 else angle_deg
        axes.text(lx, ly, "rotation axis", color=AXIS_COLOUR, fontsize=font_size, ha="center", va="bottom",
                  rotation=angle_deg, rotation_mode="anchor", path_effects=outline)
    if len(picture.spots_px):
        # a circle of SPOT_RADIUS_PX detector pixels around each centroid, as an unfilled marker
        marker_size_points = 2.0 * SPOT_RADIUS_PX * scale * points_per_png_pixel
        axes.plot(picture.spots_px[:, 0], picture.spots_px[:, 1], linestyle="none", marker="o", markersize=marker_size_points,
                  markerfacecolor="none", markeredgecolor=SPOT_COLOUR, markeredgewidth=line_width)
    if picture.beam_centre_px is not None:
        bx, by = picture.beam_centre_px
        half = BEAM_CROSS_HALF_PX
        axes.plot([bx - half, bx + half], [by, by], color=BEAM_CENTRE_COLOUR, linewidth=line_width, solid_capstyle="butt")
        axes.plot([bx, bx], [by - half, by + half], color=BEAM_CENTRE_COLOUR, linewidth=line_width, solid_capstyle="butt")
    if picture.title:
        axes.text(0.01 * n_fast, 0.01 * n_slow, picture.title, color=TITLE_COLOUR, fontsize=font_size, ha="left", va="top",
                  path_effects=outline)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
