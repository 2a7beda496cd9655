"""Experiment models in the DIALS/dxtbx conventions.

Lab frame: right-handed, origin at the sample; lengths in mm, wavelength and cell edges in Å,
reciprocal vectors in Å⁻¹ without 2π, angles in degrees at the interface.

- :class:`Beam` stores the direction *from sample to source* (dxtbx convention), so
  ``s0 = -direction / wavelength``.
- :class:`Detector` is one flat panel: ``origin`` is the lab position of the corner of pixel
  (0, 0); ``fast_axis``/``slow_axis`` are the directions of increasing column/row index.
- :class:`Goniometer`: ``R_total(φ) = S · R(ê, φ) · F`` with R right-handed about the datum ê.
- :class:`Scan`: 1-based inclusive ``image_range``; ``oscillation = (φ_start, Δφ)`` where
  φ_start is the angle at the start of the first image. Pixel-space z ("array index") is 0-based
  and absolute: ``φ(z) = φ_start + (z + 1 − first)·Δφ``.
- :class:`Crystal`: A = U·B with DIALS' lower-triangular B = (Frac)ᵀ; the real-space vectors
  a, b, c are the rows of A⁻¹.

Reference: Waterman et al. (2016) Acta Cryst. D72, 558–575; the dxtbx model documentation.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import gemmi
import numpy as np

from algorithms.errors import DataError


def _vec(v) -> np.ndarray:
    return np.asarray(v, dtype=float).reshape(3)


def _unit(v) -> np.ndarray:
    v = _vec(v)
    n = np.linalg.norm(v)
    if n == 0:
        raise DataError("a direction vector has zero length; give a non-zero vector such as -107,-122,0")
    return v / n


def rotation_matrix(axis, angle_rad: float | np.ndarray) -> np.ndarray:
    """Right-handed rotation by ``angle_rad`` about the unit ``axis`` (Rodrigues' formula).

    Vectorised over ``angle_rad``: returns (3, 3) for a scalar, (n, 3, 3) for n angles.
    """
    e = _unit(axis)
    angle = np.asarray(angle_rad, dtype=float)
    c, s = np.cos(angle)[..., None, None], np.sin(angle)[..., None, None]
    K = np.array([[0.0, -e[2], e[1]], [e[2], 0.0, -e[0]], [-e[1], e[0], 0.0]])
    return np.eye(3) * c + K * s + np.outer(e, e) * (1.0 - c)


# ----------------------------------------------------------------------------------------- beam


@dataclass
class Beam:
    """A monochromatic beam. ``direction`` points from the sample to the source."""

    direction: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    wavelength: float = 1.0
    divergence: float = 0.0
    sigma_divergence: float = 0.0
    polarization_normal: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))
    polarization_fraction: float = 0.5
    flux: float = 0.0
    transmission: float = 1.0
    probe: str | None = None  # "electron", "x-ray", "neutron"; None as in DIALS 3.5
    # The model's JSON mapping as read from an .expt file (empty for models built in memory):
    # pipeline.formats.expt writes back the keys the model does not interpret, and the exact
    # numbers of fields the model has left unchanged.
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.direction = _unit(self.direction)
        self.polarization_normal = _vec(self.polarization_normal)
        if not self.wavelength > 0:
            raise DataError(f"wavelength must be positive, got {self.wavelength}")

    @property
    def s0(self) -> np.ndarray:
        """Incident wave vector (Å⁻¹), |s0| = 1/λ, pointing from the source to the sample."""
        return -self.direction / self.wavelength

    @s0.setter
    def s0(self, value) -> None:
        value = _vec(value)
        n = np.linalg.norm(value)
        self.wavelength = 1.0 / n
        self.direction = -value / n

    def copy(self) -> "Beam":
        return copy.deepcopy(self)


# ------------------------------------------------------------------------------------- detector


@dataclass
class Detector:
    """A single flat panel in the lab frame (dxtbx ``Panel`` with ``SimplePxMmStrategy``)."""

    origin: np.ndarray
    fast_axis: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    slow_axis: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0, 0.0]))
    pixel_size: tuple[float, float] = (0.055, 0.055)
    image_size: tuple[int, int] = (516, 516)  # (n_fast, n_slow)
    trusted_range: tuple[float, float] = (-1.0, 65535.0)
    name: str = "Panel"
    type: str = "SENSOR_PAD"
    thickness: float = 0.3
    material: str = "Si"
    mu: float = 0.0
    gain: float = 1.0
    pedestal: float = 0.0
    identifier: str = ""
    raw_image_offset: tuple[int, int] = (0, 0)
    mask: list = field(default_factory=list)  # rectangles [x0, x1, y0, y1] (px, half-open)
    # The model's JSON mapping as read from an .expt file (empty for models built in memory):
    # pipeline.formats.expt writes back the keys the model does not interpret, and the exact
    # numbers of fields the model has left unchanged.
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.origin = _vec(self.origin)
        self.fast_axis = _unit(self.fast_axis)
        self.slow_axis = _unit(self.slow_axis)
        self.pixel_size = (float(self.pixel_size[0]), float(self.pixel_size[1]))
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.trusted_range = (float(self.trusted_range[0]), float(self.trusted_range[1]))

    # -- frame ---------------------------------------------------------------------------
    @property
    def normal(self) -> np.ndarray:
        """Unit normal f̂ × ŝ."""
        return _unit(np.cross(self.fast_axis, self.slow_axis))

    @property
    def distance_mm(self) -> float:
        """Signed ("directed") distance of the panel plane from the sample: origin · normal."""
        return float(self.origin @ self.normal)

    @property
    def d_matrix(self) -> np.ndarray:
        """D = [f̂ ŝ o] as columns: lab = D · (x_mm, y_mm, 1)."""
        return np.column_stack([self.fast_axis, self.slow_axis, self.origin])

    @property
    def image_size_mm(self) -> tuple[float, float]:
        return (self.image_size[0] * self.pixel_size[0], self.image_size[1] * self.pixel_size[1])

    # -- coordinate conversions (vectorised over leading dimensions) -------------------------
    def pixel_to_mm(self, xy_px) -> np.ndarray:
        xy = np.asarray(xy_px, dtype=float)
        return xy * np.asarray(self.pixel_size)

    def mm_to_pixel(self, xy_mm) -> np.ndarray:
        xy = np.asarray(xy_mm, dtype=float)
        return xy / np.asarray(self.pixel_size)

    def mm_to_lab(self, xy_mm) -> np.ndarray:
        """Lab position (mm) of panel coordinates (x_mm, y_mm)."""
        xy = np.asarray(xy_mm, dtype=float)
        return self.origin + xy[..., :1] * self.fast_axis + xy[..., 1:2] * self.slow_axis

    def pixel_to_lab(self, xy_px) -> np.ndarray:
        return self.mm_to_lab(self.pixel_to_mm(xy_px))

    def ray_intersection_mm(self, s) -> tuple[np.ndarray, np.ndarray]:
        """Where rays from the sample along ``s`` (any length) hit the panel plane.

        Returns (xy_mm of shape (..., 2), valid) where valid means the ray hits the front of
        the plane (v₂ > 0 with v = D⁻¹ s); position validity on the panel is not checked.
        """
        s = np.asarray(s, dtype=float)
        v = s @ np.linalg.inv(self.d_matrix).T
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = v[..., :2] / v[..., 2:3]
        return xy, v[..., 2] > 0

    def ray_intersection_px(self, s) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ray_intersection_mm` in pixels; valid also requires the point on the panel."""
        xy_mm, valid = self.ray_intersection_mm(s)
        xy = self.mm_to_pixel(xy_mm)
        with np.errstate(invalid="ignore"):
            on = (
                (xy[..., 0] >= 0)
                & (xy[..., 0] < self.image_size[0])
                & (xy[..., 1] >= 0)
                & (xy[..., 1] < self.image_size[1])
            )
        return xy, valid & on

    def pixel_to_s1(self, xy_px, s0) -> np.ndarray:
        """Scattered wave vectors s1 (|s1| = |s0|) towards panel positions in pixels."""
        p = self.pixel_to_lab(xy_px)
        return p / np.linalg.norm(p, axis=-1, keepdims=True) * np.linalg.norm(s0)

    def resolution_of_pixel(self, xy_px, s0) -> np.ndarray:
        """d-spacing (Å) of panel positions in pixels: d = 1/|s1 − s0|."""
        s0 = _vec(s0)
        s1 = self.pixel_to_s1(xy_px, s0)
        with np.errstate(divide="ignore"):
            return 1.0 / np.linalg.norm(s1 - s0, axis=-1)

    def resolution_map(self, s0) -> np.ndarray:
        """d-spacing at every pixel centre, shape (n_slow, n_fast)."""
        nf, ns = self.image_size
        x, y = np.meshgrid(np.arange(nf) + 0.5, np.arange(ns) + 0.5)
        return self.resolution_of_pixel(np.stack([x, y], axis=-1), s0)

    def max_resolution(self, s0) -> float:
        """The best (smallest) d on the panel, at its corners or edges."""
        nf, ns = self.image_size
        pts = np.array([[0, 0], [nf, 0], [0, ns], [nf, ns], [nf / 2, 0], [nf / 2, ns], [0, ns / 2], [nf, ns / 2]])
        return float(np.min(self.resolution_of_pixel(pts, s0)))

    # -- beam centre and distance ---------------------------------------------------------
    def beam_centre_mm(self, s0) -> tuple[float, float]:
        xy, valid = self.ray_intersection_mm(_vec(s0))
        if not valid:
            raise DataError("the beam does not intersect the detector plane; check the detector and beam models")
        return float(xy[0]), float(xy[1])

    def beam_centre_px(self, s0) -> tuple[float, float]:
        x, y = self.beam_centre_mm(s0)
        return x / self.pixel_size[0], y / self.pixel_size[1]

    def set_beam_centre_mm(self, x_mm: float, y_mm: float, s0) -> None:
        """Move the panel in its own plane so that the beam hits (x_mm, y_mm)."""
        cx, cy = self.beam_centre_mm(s0)
        self.origin = self.origin + (cx - x_mm) * self.fast_axis + (cy - y_mm) * self.slow_axis

    def set_beam_centre_px(self, x_px: float, y_px: float, s0) -> None:
        self.set_beam_centre_mm(x_px * self.pixel_size[0], y_px * self.pixel_size[1], s0)

    def set_distance_mm(self, distance_mm: float) -> None:
        """dxtbx's distance override: keep the axes and the in-plane part of the origin."""
        n = self.normal
        self.origin = distance_mm * n + (self.origin - (self.origin @ n) * n)

    def copy(self) -> "Detector":
        return copy.deepcopy(self)


# ----------------------------------------------------------------------------------- goniometer


@dataclass
class Goniometer:
    """Single-axis goniometer: ``R_total(φ) = S · R(ê, φ) · F``."""

    rotation_axis: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    fixed_rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    setting_rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    setting_rotation_at_scan_points: np.ndarray | None = None
    # The model's JSON mapping as read from an .expt file (empty for models built in memory):
    # pipeline.formats.expt writes back the keys the model does not interpret, and the exact
    # numbers of fields the model has left unchanged.
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.rotation_axis = _unit(self.rotation_axis)
        self.fixed_rotation = np.asarray(self.fixed_rotation, dtype=float).reshape(3, 3)
        self.setting_rotation = np.asarray(self.setting_rotation, dtype=float).reshape(3, 3)

    @property
    def rotation_axis_lab(self) -> np.ndarray:
        """The axis in the lab frame, S · ê."""
        return self.setting_rotation @ self.rotation_axis

    def rotation_matrix(self, phi_rad) -> np.ndarray:
        """R_total(φ) = S·R(ê, φ)·F, vectorised over φ (radians)."""
        return self.setting_rotation @ rotation_matrix(self.rotation_axis, phi_rad) @ self.fixed_rotation

    def invert(self) -> None:
        """Reverse the sense of rotation (ê → −ê)."""
        self.rotation_axis = -self.rotation_axis

    def copy(self) -> "Goniometer":
        return copy.deepcopy(self)


# ----------------------------------------------------------------------------------------- scan


@dataclass
class Scan:
    """A rotation scan over whole images, numbered ``image_range`` (1-based, inclusive)."""

    image_range: tuple[int, int]
    oscillation: tuple[float, float]  # (φ_start, Δφ) in degrees
    exposure_times: np.ndarray | None = None
    epochs: np.ndarray | None = None
    batch_offset: int = 0
    valid_image_ranges: dict = field(default_factory=dict)  # {identifier: [[first, last], ...]}
    # The model's JSON mapping as read from an .expt file (empty for models built in memory):
    # pipeline.formats.expt writes back the keys the model does not interpret, and the exact
    # numbers of fields the model has left unchanged.
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.image_range = (int(self.image_range[0]), int(self.image_range[1]))
        self.oscillation = (float(self.oscillation[0]), float(self.oscillation[1]))
        n = self.num_images
        self.exposure_times = (
            np.zeros(n) if self.exposure_times is None else np.broadcast_to(np.asarray(self.exposure_times, float), (n,)).copy()
        )
        self.epochs = np.zeros(n) if self.epochs is None else np.broadcast_to(np.asarray(self.epochs, float), (n,)).copy()

    @property
    def num_images(self) -> int:
        return self.image_range[1] - self.image_range[0] + 1

    @property
    def array_range(self) -> tuple[int, int]:
        """0-based half-open z range of the scan."""
        return self.image_range[0] - 1, self.image_range[1]

    @property
    def oscillation_range_deg(self) -> tuple[float, float]:
        start, width = self.oscillation
        return start, start + self.num_images * width

    def angle_from_image_index(self, index) -> np.ndarray:
        """φ (deg) at a (fractional) 1-based image index; the start of image k is index k."""
        start, width = self.oscillation
        return start + (np.asarray(index, float) - self.image_range[0]) * width

    def angle_from_array_index(self, z) -> np.ndarray:
        """φ (deg) at 0-based pixel-space z."""
        return self.angle_from_image_index(np.asarray(z, float) + 1.0)

    def array_index_from_angle(self, phi_deg) -> np.ndarray:
        """0-based z at φ (deg)."""
        start, width = self.oscillation
        return self.image_range[0] - 1 + (np.asarray(phi_deg, float) - start) / width

    def is_angle_valid(self, phi_deg) -> np.ndarray:
        lo, hi = sorted(self.oscillation_range_deg)
        phi = np.asarray(phi_deg, float)
        return (phi >= lo) & (phi <= hi)

    def copy(self) -> "Scan":
        return copy.deepcopy(self)


# -------------------------------------------------------------------------------------- crystal


def b_matrix(cell: gemmi.UnitCell) -> np.ndarray:
    """DIALS' B = (Frac)ᵀ, lower triangular, columns a*, b*, c* in the orthogonal frame."""
    return np.array(cell.frac.mat.tolist()).T


def unit_cell_from_a_matrix(A: np.ndarray) -> gemmi.UnitCell:
    """The unit cell whose real-space vectors are the rows of A⁻¹."""
    M = np.linalg.inv(A)
    a, b, c = M
    la, lb, lc = (float(np.linalg.norm(v)) for v in (a, b, c))

    def ang(u, v):
        return float(np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))

    return gemmi.UnitCell(la, lb, lc, ang(b, c), ang(a, c), ang(a, b))


@dataclass
class Crystal:
    """A crystal: setting matrix A = U·B in the φ = 0 frame and a space group.

    ``A_at_scan_points`` (N+1, 3, 3), if set, is the scan-varying A at image boundaries
    z = first−1 … last.
    """

    A: np.ndarray
    space_group: gemmi.SpaceGroup = field(default_factory=lambda: gemmi.SpaceGroup("P 1"))
    A_at_scan_points: np.ndarray | None = None
    B_covariance: np.ndarray | None = None
    mosaicity: float | None = None
    # The model's JSON mapping as read from an .expt file (empty for models built in memory):
    # pipeline.formats.expt writes back the keys the model does not interpret, and the exact
    # numbers of fields the model has left unchanged.
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.A = np.asarray(self.A, dtype=float).reshape(3, 3)
        if isinstance(self.space_group, str):
            self.space_group = gemmi.SpaceGroup(self.space_group)
        if self.A_at_scan_points is not None:
            self.A_at_scan_points = np.asarray(self.A_at_scan_points, dtype=float).reshape(-1, 3, 3)

    @classmethod
    def from_real_space_vectors(cls, a, b, c, space_group="P 1", **kw) -> "Crystal":
        M = np.array([_vec(a), _vec(b), _vec(c)])
        return cls(A=np.linalg.inv(M), space_group=space_group, **kw)

    @classmethod
    def from_cell_and_U(cls, cell, U, space_group="P 1", **kw) -> "Crystal":
        if not isinstance(cell, gemmi.UnitCell):
            cell = gemmi.UnitCell(*cell)
        return cls(A=np.asarray(U, float) @ b_matrix(cell), space_group=space_group, **kw)

    @property
    def real_space_vectors(self) -> np.ndarray:
        """Rows a, b, c (Å) in the φ = 0 frame."""
        return np.linalg.inv(self.A)

    @property
    def unit_cell(self) -> gemmi.UnitCell:
        return unit_cell_from_a_matrix(self.A)

    @property
    def B(self) -> np.ndarray:
        return b_matrix(self.unit_cell)

    @property
    def U(self) -> np.ndarray:
        return self.A @ np.linalg.inv(self.B)

    @property
    def num_scan_points(self) -> int:
        return 0 if self.A_at_scan_points is None else len(self.A_at_scan_points)

    def change_basis(self, P) -> "Crystal":
        """A crystal in a new basis; P's rows are the new basis vectors in terms of the old
        (e.g. "a-2*b,a,c" → rows (1,−2,0), (1,0,0), (0,0,1)); A' = A·P⁻¹, h' = P·h."""
        P = np.asarray(P, dtype=float)
        Pinv = np.linalg.inv(P)
        new = copy.deepcopy(self)
        new.A = self.A @ Pinv
        if self.A_at_scan_points is not None:
            new.A_at_scan_points = self.A_at_scan_points @ Pinv
        new.B_covariance = None
        return new

    def copy(self) -> "Crystal":
        return copy.deepcopy(self)


# ----------------------------------------------------------------------------------- experiment


@dataclass
class Experiment:
    """One sweep of one crystal: the models plus where its images are.

    ``imageset`` holds the image template/file list and format facts (a plain dict, as in the
    .expt file); ``profile`` and ``scaling_model`` are plain dicts until integration/scaling
    fill them.
    """

    beam: Beam
    detector: Detector
    goniometer: Goniometer | None = None
    scan: Scan | None = None
    crystal: Crystal | None = None
    imageset: dict = field(default_factory=dict)
    profile: dict | None = None
    scaling_model: dict | None = None
    identifier: str = ""
    # folder of the file the experiment was read from: a relative image template is relative to
    # it, as in dxtbx (not written to files)
    directory: str | None = field(default=None, repr=False, compare=False)

    def copy(self) -> "Experiment":
        return copy.deepcopy(self)

    def replace(self, **changes) -> "Experiment":
        return dataclasses.replace(self.copy(), **changes)
