"""Where the image viewer's overlays fall on the detector, in pixel coordinates.

- Resolution rings: the scattered beams of one d-spacing form a cone of half-angle 2θ about s0
  (Bragg: λ = 2d sin θ); the ring is the cone's intersection with the panel plane, traced here by
  intersecting rays on the cone with the plane (algorithms.md §1.3), so it is an exact circle for
  a detector normal to the beam and an exact ellipse (or hyperbola) for a tilted one.
- Rotation axis: diffraction vectors close to the axis (the "blind region") never cross the
  Ewald sphere, so spots avoid the band where s1 − s0 ∥ ê. Those s1 lie in the plane spanned by
  s0 and the lab axis S·ê, whose intersection with the panel is a straight line through the beam
  centre (Clabbers et al. 2018, Acta Cryst. D74, 506–518: reading the axis from a max-stack).
- Ring spacings: evenly spaced in 1/d² (equal areas between rings, as dials.image_viewer does),
  each rounded to two significant figures so that its label is the d at which it is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.geometry.models import Detector
from algorithms.reflection_table import ReflectionTable


def _perpendicular_basis(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``direction`` and to each other."""
    w = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0.0, 0.0]) if abs(w[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(w, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(w, u)


def _round_significant(value: float, digits: int = 2) -> float:
    return float(f"{value:.{digits}g}")


def ring_d_spacings(d_min_angstrom: float, number: int) -> list[float]:
    """``number`` d-spacings (Å, largest first) evenly spaced in 1/d² out to ``d_min_angstrom``,
    rounded to two significant figures (duplicates after rounding dropped)."""
    if number < 1 or not d_min_angstrom > 0:
        return []
    d_star_sq_max = 1.0 / d_min_angstrom**2
    spacings = [_round_significant(1.0 / np.sqrt(i * d_star_sq_max / number)) for i in range(1, number + 1)]
    return sorted(set(spacings), reverse=True)


def resolution_ring_px(detector: Detector, s0: np.ndarray, d_angstrom: float,
                       n_points: int = 1440) -> list[np.ndarray]:
    """The ring of ``d_angstrom`` on the panel plane as polylines of (x_px, y_px) points, one per
    run of rays that hit the front of the plane (empty if 2θ > 180°, i.e. d < λ/2)."""
    s0 = np.asarray(s0, float)
    wavelength = 1.0 / np.linalg.norm(s0)
    sin_theta = wavelength / (2.0 * d_angstrom)
    if sin_theta >= 1.0:
        return []
    two_theta = 2.0 * np.arcsin(sin_theta)
    beam = s0 / np.linalg.norm(s0)
    u, v = _perpendicular_basis(beam)
    azimuth = np.linspace(0.0, 2.0 * np.pi, n_points + 1)
    rays = (np.cos(two_theta) * beam + np.sin(two_theta) * (np.cos(azimuth)[:, None] * u + np.sin(azimuth)[:, None] * v))
    xy_mm, front = detector.ray_intersection_mm(rays)
    xy_px = detector.mm_to_pixel(xy_mm)
    # split where the cone leaves the front of the plane (a tilted panel cutting a wide cone)
    breaks = np.flatnonzero(np.diff(front.astype(int)) != 0) + 1
    return [part for part, ok in zip(np.split(xy_px, breaks), np.split(front, breaks)) if ok[0] and len(part) > 1]


def ring_label_position(polylines: list[np.ndarray], image_size: tuple[int, int], margin_px: float,
                        preferred_direction: tuple[float, float], centre_px: tuple[float, float]) -> tuple[float, float] | None:
    """The point of a ring inside the image (``margin_px`` from its edges) whose direction from
    ``centre_px`` is closest to ``preferred_direction``; None if no point of it is inside."""
    if not polylines:
        return None
    points = np.concatenate(polylines)
    n_fast, n_slow = image_size
    inside = ((points[:, 0] > margin_px) & (points[:, 0] < n_fast - margin_px)
              & (points[:, 1] > margin_px) & (points[:, 1] < n_slow - margin_px))
    if not inside.any():
        return None
    candidates = points[inside]
    offsets = candidates - np.asarray(centre_px)
    direction = np.asarray(preferred_direction, float) / np.linalg.norm(preferred_direction)
    cosines = offsets @ direction / np.maximum(np.linalg.norm(offsets, axis=1), 1e-12)
    best = candidates[int(np.argmax(cosines))]
    return float(best[0]), float(best[1])


@dataclass(frozen=True)
class AxisLine:
    """The projection of the rotation axis through the beam centre, clipped to the image:
    ``start_px`` on the −ê side, ``end_px`` on the +ê side (pixels)."""

    start_px: tuple[float, float]
    end_px: tuple[float, float]


def rotation_axis_line_px(detector: Detector, s0: np.ndarray, axis_lab: np.ndarray) -> AxisLine | None:
    """The line where the plane spanned by s0 and the lab rotation axis meets the panel, clipped
    to the image; None if the axis is parallel to the beam or the line misses the image."""
    beam = np.asarray(s0, float) / np.linalg.norm(s0)
    axis = np.asarray(axis_lab, float) / np.linalg.norm(axis_lab)
    if np.linalg.norm(np.cross(beam, axis)) < 1e-9:
        return None
    step = 1e-3  # a small tilt of the beam ray towards ±axis stays in the plane and hits the panel
    xy_mm, front = detector.ray_intersection_mm(np.array([beam, beam + step * axis]))
    if not front.all():
        return None
    centre, towards_axis = detector.mm_to_pixel(xy_mm)
    direction = towards_axis - centre
    direction /= np.linalg.norm(direction)
    # clip the infinite line centre + t·direction to the image rectangle (Liang–Barsky)
    n_fast, n_slow = detector.image_size
    t_low, t_high = -np.inf, np.inf
    for origin, delta, upper in ((centre[0], direction[0], n_fast), (centre[1], direction[1], n_slow)):
        if abs(delta) < 1e-15:
            if not 0.0 <= origin <= upper:
                return None
            continue
        t0, t1 = sorted(((0.0 - origin) / delta, (upper - origin) / delta))
        t_low, t_high = max(t_low, t0), min(t_high, t1)
    if t_low >= t_high:
        return None
    start, end = centre + t_low * direction, centre + t_high * direction
    return AxisLine((float(start[0]), float(start[1])), (float(end[0]), float(end[1])))


def spots_on_images(reflections: ReflectionTable, experiment_id: int, z_range: tuple[float, float]) -> np.ndarray:
    """Centroids (x_px, y_px) of the spots of ``experiment_id`` seen on the 0-based, half-open
    image range ``z_range``: those whose bounding box z range overlaps it (or, without a bbox
    column, whose centroid z lies in it)."""
    if reflections is None or len(reflections) == 0 or "xyzobs.px.value" not in reflections:
        return np.zeros((0, 2))
    selected = np.ones(len(reflections), bool)
    if "id" in reflections:
        selected &= reflections["id"] == experiment_id
    z_low, z_high = z_range
    if "bbox" in reflections:
        bbox = reflections["bbox"]
        selected &= (bbox[:, 4] < z_high) & (bbox[:, 5] > z_low)
    else:
        z = reflections["xyzobs.px.value"][:, 2]
        selected &= (z >= z_low) & (z < z_high)
    return np.asarray(reflections["xyzobs.px.value"][selected, :2], float)
