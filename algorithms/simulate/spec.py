"""What to simulate: the job-wide settings (:class:`SimulationSpec`), the presets, and the
per-crystal draw of orientation, beam centre, start angle, scale, B, decay, drift, corrupted
images and non-isomorphous crystals (:func:`plan_crystals`).

Random draws use numpy's ``SeedSequence`` keyed by (seed, purpose, crystal), so every crystal's
truth and noise are the same whatever the number of workers or the order they run in.
Random orientations are uniform over SO(3) (unit quaternions from a 4-D normal; Shoemake 1992,
"Uniform random rotations", Graphics Gems III).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Beam, Crystal, Detector, Goniometer, Scan, b_matrix, rotation_matrix

CORRUPTION_KINDS = ("noise", "scrambled", "streak")
BAD_CRYSTAL_KINDS = ("cell", "structure", "both")
IMAGE_FORMATS = ("timepix_su", "adsc")
# the beam dxtbx builds from each header: Timepix SU unpolarised, ADSC (synchrotron) 0.999
POLARIZATION_FRACTION = {"timepix_su": 0.5, "adsc": 0.999}

class Stream(enum.IntEnum):
    """What a seeded random stream is for."""

    STRUCTURE = 0
    PLAN = 1
    OBSERVATIONS = 2
    NOISE = 3
    BAD_STRUCTURE = 4


def rng_for(seed: int, stream: Stream, crystal_index: int = 0) -> np.random.Generator:
    """An independent random stream for (seed, purpose, crystal)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), crystal_index]))


@dataclass(frozen=True)
class SimulationSpec:
    """Job-wide simulation settings (lengths mm, wavelength and cell Å, angles degrees).

    Intensity model of one observation (see :mod:`algorithms.simulate.observations`):
    counts = I_true · scale_factor · decay · dynamical_factor · partiality / lp.
    """

    n_crystals: int = 2
    n_images: int = 24
    unit_cell: tuple = (99.06, 31.01, 54.30, 90.0, 107.7, 90.0)
    space_group: str = "C 1 2 1"
    wavelength: float = 0.0251
    distance: float = 1762.0
    header_distance: float | None = None  # DISTANCE written to the image headers; None → distance
    image_size: tuple = (516, 516)  # (fast, slow) pixels
    image_format: str = "timepix_su"  # SMV header style: "timepix_su" (516×516 only) or "adsc"
    pixel_size: float = 0.055
    beam_centre_px: tuple = (228.0, 235.0)  # (fast, slow)
    beam_centre_jitter_px: float = 1.0
    rotation_axis: tuple = (-107.0, -122.0, 0.0)
    oscillation_start: float = -56.73
    oscillation_start_jitter: float = 10.0
    oscillation_width: float = 0.9149
    exposure_time: float = 2.0
    sigma_m: float = 1.1  # rocking width (deg)
    sigma_b: float = 0.004  # beam divergence (deg): spot size on the detector
    d_min: float | None = None  # None → the detector corners
    wilson_b: float = 30.0  # Å², fall-off of the true intensities
    mean_intensity: float = 1000.0  # Wilson ⟨I⟩ at d = ∞ (true-intensity units)
    scale: float = 0.029  # counts per unit true intensity per unit 1/lp
    scale_spread: float = 0.2  # log-normal σ of the per-crystal scale
    b_spread: float = 5.0  # Å², σ of the per-crystal relative B
    decay_per_image: float = 0.003  # radiation damage: × exp(−k·z)
    dynamical_error: float = 0.15  # log-normal σ of the per-observation factor; 0 = kinematic
    background_flat: float = 4.0  # counts per pixel per image
    inelastic_peak: float = 2200.0  # counts per pixel per image at the beam centre
    inelastic_radius_px: float = 20.0
    inelastic_power: float = 1.8  # bg = flat + peak·(1 + r/radius)^(−power)
    poisson: bool = True
    n_corrupted_images: int = 0
    n_bad_crystals: int = 0
    bad_crystal_kind: str = "both"
    bad_cell_change_percent: float = 3.0
    drift_cell_percent: float = 0.0
    drift_rotation_deg: float = 0.0
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.n_crystals >= 1, "n_crystals must be at least 1"),
            (self.n_images >= 1, "n_images must be at least 1"),
            (len(self.unit_cell) == 6, "unit_cell needs six numbers a,b,c,alpha,beta,gamma"),
            (self.wavelength > 0, "wavelength must be positive (Å)"),
            (self.distance > 0, "distance must be positive (mm)"),
            (self.pixel_size > 0, "pixel_size must be positive (mm)"),
            (self.oscillation_width > 0, "oscillation_width must be positive (deg)"),
            (self.sigma_m > 0 and self.sigma_b > 0, "sigma_m and sigma_b must be positive (deg)"),
            (self.image_format in IMAGE_FORMATS, f"image_format must be one of {IMAGE_FORMATS}"),
            (self.image_format != "timepix_su" or tuple(self.image_size) == (516, 516),
             "image_format=timepix_su needs image_size=516,516 (the only Timepix SU layout); use image_format=adsc"),
            (self.bad_crystal_kind in BAD_CRYSTAL_KINDS, f"bad_crystal_kind must be one of {BAD_CRYSTAL_KINDS}"),
            (0 <= self.n_bad_crystals < self.n_crystals or self.n_bad_crystals == 0,
             "n_bad_crystals must be smaller than n_crystals (crystal 1 is always good)"),
            (0 <= self.n_corrupted_images <= self.n_images * max(self.n_crystals - 1, 1) // 3,
             "n_corrupted_images is larger than a third of the images of crystals 2..n"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(f"simulation: {message}")
        try:
            space_group = gemmi.SpaceGroup(self.space_group)
        except ValueError:
            raise DataError(f"simulation: unknown space_group {self.space_group!r}; try e.g. C2 or P43212") from None
        if not gemmi.UnitCell(*self.unit_cell).is_compatible_with_spacegroup(space_group):
            raise DataError(f"simulation: unit_cell {','.join(map(str, self.unit_cell))} does not fit space_group "
                            f"{space_group.xhm()}; give a cell with its symmetry (e.g. a = b for tetragonal)")

    def replace(self, **changes) -> "SimulationSpec":
        return dataclasses.replace(self, **changes)

    @property
    def gemmi_space_group(self) -> gemmi.SpaceGroup:
        return gemmi.SpaceGroup(self.space_group)

    @property
    def gemmi_cell(self) -> gemmi.UnitCell:
        return gemmi.UnitCell(*self.unit_cell)


PRESETS: dict[str, SimulationSpec] = {
    # the MyD88 TIR small-wedge job (SBGrid 814, algorithms.md §11.1)
    "myd88": SimulationSpec(
        n_crystals=18,
        n_images=72,
        header_distance=2.193,
        n_corrupted_images=6,
        n_bad_crystals=1,
        drift_cell_percent=0.1,
        drift_rotation_deg=0.2,
    ),
    # two crystals × 24 images of the same ED geometry, for fast end-to-end tests
    "tiny": SimulationSpec(n_crystals=2, n_images=24),
    # tetragonal lysozyme, X-rays on a 1000×1000 pixel-array detector
    "xray": SimulationSpec(
        n_crystals=3,
        n_images=30,
        unit_cell=(79.1, 79.1, 38.0, 90.0, 90.0, 90.0),
        space_group="P 43 21 2",
        wavelength=0.9793,
        distance=150.0,
        image_size=(1000, 1000),
        image_format="adsc",
        pixel_size=0.172,
        beam_centre_px=(502.0, 497.0),
        beam_centre_jitter_px=0.5,
        rotation_axis=(1.0, 0.0, 0.0),
        oscillation_start=0.0,
        oscillation_start_jitter=90.0,
        oscillation_width=0.5,
        exposure_time=0.1,
        sigma_m=0.15,
        sigma_b=0.05,
        wilson_b=20.0,
        scale=2.0,
        decay_per_image=0.001,
        dynamical_error=0.0,
        background_flat=3.0,
        inelastic_peak=30.0,
        inelastic_radius_px=150.0,
        inelastic_power=1.5,
    ),
}


@dataclass
class CrystalPlan:
    """Everything drawn for one crystal before its observations are simulated.

    ``A_at_scan_points`` (n_images+1, 3, 3) is the setting matrix at the image boundaries
    z = 0 … n_images; ``A`` is the nominal (mid-scan) setting, equal to all of them without drift.
    """

    index: int  # 1-based crystal number (= output folder name)
    beam: Beam
    detector: Detector
    goniometer: Goniometer
    scan: Scan
    crystal: Crystal
    scale: float
    relative_b: float
    decay_per_image: float
    bad_kind: str | None = None  # None, "cell", "structure" or "both"
    corrupted_images: dict = field(default_factory=dict)  # {1-based image number: kind}
    drift_axis: np.ndarray | None = None

    @property
    def structure_key(self) -> str:
        """Which structure the crystal diffracts from: the true one or the impostor."""
        return "bad" if self.bad_kind in ("structure", "both") else "true"


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform over SO(3)."""
    w, x, y, z = rng.standard_normal(4)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def smv_detector(spec: SimulationSpec, beam_centre_px: tuple[float, float], distance: float) -> Detector:
    """The flat panel as dxtbx builds it from a Timepix SU or ADSC SMV header: fast +x, slow −y,
    origin (−bx, +by, −distance) with the beam centre (bx, by) in mm."""
    bx, by = beam_centre_px[0] * spec.pixel_size, beam_centre_px[1] * spec.pixel_size
    return Detector(
        origin=np.array([-bx, by, -distance]),
        fast_axis=(1.0, 0.0, 0.0),
        slow_axis=(0.0, -1.0, 0.0),
        pixel_size=(spec.pixel_size, spec.pixel_size),
        image_size=tuple(spec.image_size),
    )


def drifted_cell(cell: tuple, fraction: float) -> tuple:
    """The cell with its edges scaled by (1 + fraction)."""
    a, b, c, al, be, ga = cell
    f = 1.0 + fraction
    return (a * f, b * f, c * f, al, be, ga)


def _bad_cell(cell: tuple, percent: float, rng: np.random.Generator) -> tuple:
    """Change the edges by ±percent with random signs. Equal edges change together (the cell
    keeps its symmetry, e.g. a = b in tetragonal groups), and the signs are never all the same
    where the cell allows (an isotropic change would mimic a distance error in ED)."""
    a, b, c, al, be, ga = cell
    edges = np.array([a, b, c])
    group = np.array([int(np.argmax(np.isclose(edges, edge, rtol=1e-9))) for edge in edges])  # first equal edge
    signs = rng.choice([-1.0, 1.0], size=3)[group]
    if np.all(signs == signs[0]) and len(set(group)) > 1:
        signs[group == group[-1]] *= -1.0
    f = 1.0 + signs * percent / 100.0
    return (a * f[0], b * f[1], c * f[2], al, be, ga)


def _scan_points(U: np.ndarray, cell: tuple, spec: SimulationSpec, drift_axis: np.ndarray) -> np.ndarray:
    """A at the n_images+1 boundaries; drift is linear in z and zero at mid-scan."""
    t = np.arange(spec.n_images + 1) / spec.n_images - 0.5
    out = np.empty((len(t), 3, 3))
    for k, tk in enumerate(t):  # n_images+1 small matrices, once per crystal
        cell_k = drifted_cell(cell, tk * spec.drift_cell_percent / 100.0)
        R = rotation_matrix(drift_axis, np.radians(tk * spec.drift_rotation_deg))
        out[k] = R @ U @ b_matrix(gemmi.UnitCell(*cell_k))
    return out


def _choose_special_crystals(spec: SimulationSpec) -> tuple[dict, dict]:
    """Which crystals are non-isomorphous, and which images of which crystals are corrupted.

    Crystal 1 stays clean (it plays dataset 1 of the tutorial). Corrupted images alternate
    between a sweep end (first or last three images) and the middle third of a sweep, so that
    both DIALS' end trimming and a mid-sweep ΔCC½ rule are exercised.
    """
    rng = rng_for(spec.seed, Stream.PLAN, 0)
    candidates = np.arange(2, spec.n_crystals + 1)
    bad = rng.choice(candidates, size=spec.n_bad_crystals, replace=False) if spec.n_bad_crystals else []
    bad_kinds = {int(i): spec.bad_crystal_kind for i in bad}
    good = [int(i) for i in candidates if int(i) not in bad_kinds] or [1]
    corrupted: dict[int, dict[int, str]] = {}
    n = spec.n_images
    for j in range(spec.n_corrupted_images):
        crystal = int(good[rng.integers(len(good))])
        taken = corrupted.setdefault(crystal, {})
        for _ in range(100):  # draw until a free image is found
            if j % 2 == 0:
                image = int(rng.choice([1, 2, 3, n - 2, n - 1, n])) if n > 6 else int(rng.integers(1, n + 1))
            else:
                image = int(rng.integers(n // 3 + 1, max(2 * n // 3, n // 3 + 1) + 1))
            if image not in taken and 1 <= image <= n:
                break
        taken[image] = CORRUPTION_KINDS[j % len(CORRUPTION_KINDS)]
    return bad_kinds, corrupted


def plan_crystals(spec: SimulationSpec) -> list[CrystalPlan]:
    """Draw every crystal's geometry and nuisance parameters."""
    bad_kinds, corrupted = _choose_special_crystals(spec)
    sg = spec.gemmi_space_group
    plans = []
    for index in range(1, spec.n_crystals + 1):
        rng = rng_for(spec.seed, Stream.PLAN, index)
        U = random_rotation(rng)
        jitter = rng.uniform(-1.0, 1.0, size=2) * spec.beam_centre_jitter_px
        # rounded as the header writes them, so the header geometry is the true geometry
        centre = tuple(np.round(np.asarray(spec.beam_centre_px) + jitter, 2))
        start = round(spec.oscillation_start + rng.uniform(-1.0, 1.0) * spec.oscillation_start_jitter, 2)
        scale = spec.scale * float(np.exp(rng.normal(0.0, spec.scale_spread)))
        relative_b = float(rng.normal(0.0, spec.b_spread))
        decay = spec.decay_per_image * float(rng.uniform(0.5, 1.5))
        drift_axis = random_rotation(rng)[:, 0]
        bad_kind = bad_kinds.get(index)
        cell = spec.unit_cell
        if bad_kind in ("cell", "both"):
            cell = _bad_cell(cell, spec.bad_cell_change_percent, rng)
        A_points = _scan_points(U, cell, spec, drift_axis)
        beam = Beam(direction=(0.0, 0.0, 1.0), wavelength=spec.wavelength,
                    polarization_fraction=POLARIZATION_FRACTION[spec.image_format])
        plans.append(
            CrystalPlan(
                index=index,
                beam=beam,
                detector=smv_detector(spec, centre, spec.distance),
                goniometer=Goniometer(rotation_axis=spec.rotation_axis),
                scan=Scan(
                    image_range=(1, spec.n_images),
                    oscillation=(start, spec.oscillation_width),
                    exposure_times=spec.exposure_time,
                ),
                crystal=Crystal(
                    A=U @ b_matrix(gemmi.UnitCell(*cell)),
                    space_group=gemmi.SpaceGroup(sg.xhm()),
                    A_at_scan_points=A_points,
                ),
                scale=scale,
                relative_b=relative_b,
                decay_per_image=decay,
                bad_kind=bad_kind,
                corrupted_images=dict(sorted(corrupted.get(index, {}).items())),
                drift_axis=drift_axis,
            )
        )
    return plans
