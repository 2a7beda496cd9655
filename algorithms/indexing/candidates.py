"""Candidate lattices from triples of basis vectors, and the non-primitive-basis correction.

Triples (i < j < k) of the strongest vectors are taken in order of increasing |(i, j, k)|, so
that combinations of the strongest peaks come first; a triple is used if a–b is neither nearly
parallel nor anti-parallel (20°–160°; b is negated to make the angle obtuse), c is at least 20°
out of the a–b plane, and the set is right-handed.  The crystal is Niggli-reduced and kept if
V > abc/100 (LABELIT's guard against degenerate cells).  (DIALS ``candidate_orientation_matrices``;
Sauter et al. 2004, J. Appl. Cryst. 37, 399–409.)

A basis that is a supercell of the true lattice indexes the spots with a systematic
"absence": v·h ≡ 0 (mod m) for most h; the sub-cell is then taken (rstbx/DIALS
``detect_non_primitive_basis``, sys_absent_threshold 0.9).  ewald tests every sublattice of
prime index m ≤ 7, so that repeated corrections remove any supercell of index ≤ 10.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable, Iterator

import numpy as np

from algorithms.geometry.models import Crystal
from algorithms.symmetry.reduction import niggli_reduce_crystal

MAX_VECTORS = 100
MIN_CELL_VOLUME = 25.0
SYS_ABSENT_THRESHOLD = 0.9


@lru_cache(maxsize=8)
def _ordered_triples(n: int) -> np.ndarray:
    triples = np.array(list(itertools.combinations(range(n), 3)), dtype=np.int64).reshape(-1, 3)
    return triples[np.argsort(np.sum(triples.astype(float) ** 2, axis=1), kind="stable")]


def _angles_deg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    c = np.sum(u * v, axis=1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def basis_triples(vectors: np.ndarray, max_vectors: int = MAX_VECTORS) -> np.ndarray:
    """Right-handed (a, b, c) bases (m, 3, 3) from vector triples that pass DIALS' angle rules."""
    vectors = np.asarray(vectors, float)[:max_vectors]
    triples = _ordered_triples(len(vectors))
    if len(triples) == 0:
        return np.zeros((0, 3, 3))
    a, b, c = (vectors[triples[:, i]] for i in range(3))
    ab = _angles_deg(a, b)
    usable = (ab >= 20.0) & (ab <= 160.0)
    b = np.where((ab < 90.0)[:, None], -b, b)
    normal = np.cross(a, b)
    out_of_plane = np.abs(90.0 - _angles_deg(normal, c))
    usable &= out_of_plane >= 20.0
    bases = np.stack([a, b, c], axis=1)[usable]
    handedness = np.sign(np.einsum("ni,ni->n", np.cross(bases[:, 0], bases[:, 1]), bases[:, 2]))
    return bases * handedness[:, None, None]


def same_lattice(M: np.ndarray, others_inverse: np.ndarray, tolerance: float = 0.1) -> np.ndarray:
    """For each basis in ``others_inverse`` (k, 3, 3: inverses of real-space row bases), whether
    M spans the same lattice (M·M_other⁻¹ ≈ an integer matrix with determinant ±1)."""
    T = M @ others_inverse
    integral = np.all(np.abs(T - np.rint(T)) < tolerance, axis=(1, 2))
    return integral & (np.abs(np.abs(np.linalg.det(np.rint(T))) - 1.0) < 1e-6)


def candidate_crystals(
    vectors: np.ndarray,
    max_candidates: int = 50,
    max_vectors: int = MAX_VECTORS,
) -> Iterator[Crystal]:
    """Niggli-reduced P1 crystals from basis-vector triples, distinct lattices only, in triple order
    (at most ``max_candidates``)."""
    kept_inverse = np.zeros((0, 3, 3))
    for basis in basis_triples(vectors, max_vectors):
        crystal, _ = niggli_reduce_crystal(Crystal.from_real_space_vectors(*basis))
        M = crystal.real_space_vectors
        if abs(np.linalg.det(M)) <= np.prod(np.linalg.norm(M, axis=1)) / 100.0:
            continue
        if len(kept_inverse) and same_lattice(M, kept_inverse).any():
            continue
        kept_inverse = np.concatenate([kept_inverse, np.linalg.inv(M)[None]])
        yield crystal
        if len(kept_inverse) >= max_candidates:
            return


# ------------------------------------------------------------------ non-primitive-basis correction


SUPERCELL_PRIMES = (2, 3, 5, 7)  # every index ≤ 10 is a product of these: composite ones go step by step


@lru_cache(maxsize=1)
def _absence_tests() -> list[tuple[np.ndarray, int, np.ndarray]]:
    """(v, m, T) for v·h ≡ 0 (mod m): T (integer, det m) has columns spanning {h : v·h ≡ 0 mod m}.

    For a prime m every sublattice of index m is such a set, one per point v of the projective
    plane over Z/m (m² + m + 1 of them); v is taken with components in [−m/2, m/2] and the
    tests are ordered by m, then |v|.  DIALS tests only m ∈ {2, 3, 5} with |v|² ≤ 6, which
    misses index 7 and some index-5 supercells.
    """
    tests = []
    for m in SUPERCELL_PRIMES:
        half = m // 2
        box = range(-half, half + 1)
        seen = set()
        vs = []
        for v in sorted(itertools.product(box, box, box), key=lambda v: (sum(x * x for x in v), v)):
            if not any(v):
                continue
            k = next(i for i in range(3) if v[i] % m)
            normalised = tuple((x * pow(v[k], -1, m)) % m for x in v)  # the projective point
            if normalised not in seen:
                seen.add(normalised)
                vs.append(np.array(v))
        tests.extend((v, m, _sublattice_basis(v, m)) for v in vs)
    return tests


def _sublattice_basis(v: np.ndarray, m: int) -> np.ndarray:
    """Columns spanning {h : v·h ≡ 0 (mod m)} for prime m: with v_k invertible mod m,
    e_i − (v_i/v_k mod m)·e_k for i ≠ k and m·e_k (Hermite normal form; det = m)."""
    k = next(i for i in range(3) if v[i] % m)
    inverse = pow(int(v[k]), -1, m)
    T = np.zeros((3, 3), np.int64)
    for i in range(3):
        if i == k:
            T[k, i] = m
        else:
            T[i, i] = 1
            T[k, i] = -((int(v[i]) * inverse) % m)
    return T if np.linalg.det(T) > 0 else T[:, [1, 0, 2]]


@lru_cache(maxsize=1)
def _absence_test_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tests = _absence_tests()
    return (np.array([v for v, _, _ in tests]), np.array([m for _, m, _ in tests]),
            np.array([T for _, _, T in tests]))


def detect_non_primitive_basis(hkl: np.ndarray, threshold: float = SYS_ABSENT_THRESHOLD) -> np.ndarray | None:
    """The integer matrix T (det m) if > threshold of the indexed h lie on the sublattice
    {h : v·h ≡ 0 (mod m)}; the true reciprocal basis is then A·T (real space: T⁻¹·M)."""
    if len(hkl) == 0:
        return None
    vs, ms, Ts = _absence_test_arrays()
    fractions = np.mean((np.asarray(hkl) @ vs.T) % ms == 0, axis=0)
    passing = np.nonzero(fractions > threshold)[0]
    return Ts[passing[0]] if len(passing) else None


def correct_non_primitive_basis(
    crystal: Crystal,
    reindex: Callable[[Crystal], np.ndarray],
    min_cell_volume: float = MIN_CELL_VOLUME,
    threshold: float = SYS_ABSENT_THRESHOLD,
    max_iterations: int = 5,
) -> tuple[Crystal | None, np.ndarray]:
    """Remove supercells: while the indexed h (``reindex(crystal)`` → indexed rows) show a
    systematic absence, take the sub-cell A·T, Niggli-reduce and re-index.

    Returns (crystal, hkl of the indexed spots); the crystal is None if the cell became smaller
    than ``min_cell_volume``.
    """
    hkl = reindex(crystal)
    for _ in range(max_iterations):
        T = detect_non_primitive_basis(hkl, threshold)
        if T is None:
            break
        crystal, _ = niggli_reduce_crystal(Crystal(A=crystal.A @ T, space_group=crystal.space_group))
        if crystal.unit_cell.volume < min_cell_volume:
            return None, hkl
        hkl = reindex(crystal)
    return crystal, hkl
