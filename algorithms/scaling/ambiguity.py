"""Indexing-ambiguity resolution between crystals (Brehm & Diederichs 2014, Acta Cryst. D70:101–109).

When the lattice has more symmetry than the space group (P4 on a tetragonal lattice, P3 on a
hexagonal one, pseudo-merohedry), each crystal can be indexed in several ways that fit its lattice
equally well but index its intensities differently: the *alternative indexings* are the cosets of
the space group's point group in the lattice's, represented by the twin laws
(``gemmi.find_twin_laws``; k,h,−l for P4 on a tetragonal lattice, none for C2). Crystals indexed
independently end up in different settings at random, and scaling them together mixes up
reflections.

Algorithm: for every crystal i, alternative indexing a and unique reflection h, the mean
*normalised* intensity E²ᵢ,ₐ(h) = I/⟨I⟩ (⟨I⟩ the crystal's mean in its resolution shell, so that
scale and B differences between crystals do not dominate the correlations); then the Pearson
correlations r(i,a; j,b) over the reflections common to crystal i reindexed by a and crystal j
reindexed by b (sparse matrix products, all pairs at once). The assignment aᵢ maximises
Σ_{i≠j} n_ij·r(i,aᵢ; j,aⱼ) (n_ij = common reflections, averaged over the settings): each crystal in turn takes the setting with
the highest weighted sum of correlations with all others in their current settings, sweeps until
nothing changes (BD 2014's iterative assignment; their functional Σ(r_ij − xᵢ·xⱼ)² in a reduced
dimension is the continuous relative of this discrete maximisation), from the identity and from a
few seeded random starts, the best total winning. Finally the settings are relabelled so that the
most common one (the first crystal's among equally common ones) is the identity: as few crystals as
possible are reindexed. A crystal is reindexed only if the evidence is significant: the Fisher-z
difference between its correlation with the others in the new setting and as indexed, times
sqrt((n − 3)/2), must exceed ``min_z`` (3). Where the alternative indexing is really a symmetry of the
intensities (lysozyme, P4₃2₁2, processed in P4: both settings correlate equally, 0.60 vs 0.62 on
the real cRED data) the crystals stay as indexed instead of being flipped on noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np
from scipy import sparse

from algorithms.merging.symmetry import map_to_asu, point_group_rotations

N_SHELLS = 10
MIN_COMMON = 3  # pairs with fewer common reflections carry no evidence


def _hkl_matrix(op: gemmi.Op) -> np.ndarray:
    """P with h' = P·h (column indices) for a real-space operator: intensities follow h' = h·R."""
    return (np.array(op.rot, dtype=np.int64) // op.DEN).T


def hkl_triplet(matrix: np.ndarray) -> str:
    """'k,h,-l' for P = [[0,1,0],[1,0,0],[0,0,-1]] (row i gives new index i in terms of h, k, l)."""
    terms = []
    for row in np.asarray(matrix, dtype=np.int64):
        text = ""
        for value, letter in zip(row, "hkl"):
            if value == 0:
                continue
            sign = "-" if value < 0 else ("+" if text else "")
            text += sign + (f"{abs(value)}*" if abs(value) != 1 else "") + letter
        terms.append(text or "0")
    return ",".join(terms)


def _proper_rotations_hkl(space_group: gemmi.SpaceGroup) -> np.ndarray:
    """Point-group rotations of the space group as h' = R·h matrices (proper ones only)."""
    rotations = np.transpose(point_group_rotations(space_group), (0, 2, 1))
    return rotations[np.round(np.linalg.det(rotations)) > 0]


def _nicest(coset: np.ndarray) -> np.ndarray:
    """The coset member with the fewest minus signs and non-zero terms (k,h,−l rather than −h,k,−l)."""
    order = sorted(range(len(coset)), key=lambda k: (int((coset[k] < 0).sum()), int((coset[k] != 0).sum()),
                                                     hkl_triplet(coset[k])))
    return coset[order[0]]


def alternative_indexings(unit_cell: gemmi.UnitCell, space_group: gemmi.SpaceGroup,
                          max_obliquity_deg: float = 3.0) -> list[np.ndarray]:
    """Identity first, then one P (h' = P·h, det +1) per twin law of the lattice vs the space group;
    ``max_obliquity_deg`` as in Le Page's lattice-symmetry search (pseudo-merohedry within it counts)."""
    group = _proper_rotations_hkl(space_group)
    result = [np.eye(3, dtype=np.int64)]
    for op in gemmi.find_twin_laws(unit_cell, space_group, max_obliquity_deg, False):
        p = _hkl_matrix(op)
        if np.round(np.linalg.det(p)) < 0:
            p = -p  # Friedel's law: −P indexes the same intensities
        result.append(_nicest(np.einsum("ij,kjl->kil", p, group)))
    return result


def _coset_index(matrix: np.ndarray, operators: list[np.ndarray], group: np.ndarray) -> int:
    """Which alternative indexing ``matrix`` belongs to (P_k⁻¹·M in the point group)."""
    for k, p in enumerate(operators):
        relative = np.rint(np.linalg.inv(p) @ matrix).astype(np.int64)
        if np.any(np.all(group == relative, axis=(1, 2))):
            return k
    raise ValueError(f"{hkl_triplet(matrix)} is not one of the alternative indexings")


@dataclass
class AmbiguityResult:
    operators: list[np.ndarray]  # alternative indexings, identity first
    assignment: np.ndarray  # per crystal: index into operators (0 = keep as indexed)
    correlation: np.ndarray  # (m, m, N, N): r(i reindexed by a, j reindexed by b)
    n_common: np.ndarray  # (m, m, N, N) common reflections of those pairs
    objective: float
    undecided: list  # (crystal, setting, z) whose preferred setting was not significantly better: kept as indexed

    def reindexed(self) -> list[tuple[int, str]]:
        """(crystal, 'k,h,-l') for every crystal that needs reindexing."""
        return [(int(i), hkl_triplet(self.operators[a])) for i, a in enumerate(self.assignment) if a != 0]

    def mean_correlation(self, crystal: int, setting: int) -> float:
        """n-weighted mean correlation of ``crystal`` in ``setting`` with the others in their final settings."""
        return _mean_correlation(self.correlation, self.n_common, self.assignment, crystal, setting)[0]


def _mean_correlation(correlation, n_common, assignment, crystal, setting) -> tuple[float, float]:
    others = np.nonzero(np.arange(len(assignment)) != crystal)[0]
    r = correlation[setting, assignment[others], crystal, others]
    n = n_common[setting, assignment[others], crystal, others]
    total = float(np.sum(n))
    return (float(np.sum(n * r) / total) if total > 0 else float("nan")), total


def _significance(correlation, n_common, assignment, crystal, setting) -> float:
    """Fisher-z score of crystal's correlation in ``setting`` over its correlation as indexed."""
    r_new, n_new = _mean_correlation(correlation, n_common, assignment, crystal, setting)
    r_old, n_old = _mean_correlation(correlation, n_common, assignment, crystal, 0)
    n = min(n_new, n_old)
    if not (np.isfinite(r_new) and np.isfinite(r_old)) or n <= 3:
        return 0.0
    clip = lambda r: np.clip(r, -0.999999, 0.999999)
    return float((np.arctanh(clip(r_new)) - np.arctanh(clip(r_old))) * np.sqrt((n - 3) / 2.0))


def _normalised_intensities(dataset: np.ndarray, intensity: np.ndarray, d: np.ndarray, n_datasets: int) -> tuple[np.ndarray, np.ndarray]:
    """I/⟨I⟩ per crystal and resolution shell (equal steps in 1/d²); invalid where ⟨I⟩ ≤ 0."""
    s2 = 1.0 / d**2
    span = max(float(s2.max() - s2.min()), 1e-12)
    shell = np.clip(((s2 - s2.min()) / span * N_SHELLS).astype(np.int64), 0, N_SHELLS - 1)
    cell = dataset * N_SHELLS + shell
    total = np.bincount(cell, intensity, n_datasets * N_SHELLS)
    count = np.bincount(cell, minlength=n_datasets * N_SHELLS)
    mean = np.divide(total, count, out=np.zeros(len(total)), where=count > 0)
    valid = mean[cell] > 0
    return np.divide(intensity, mean[cell], out=np.zeros(len(intensity)), where=valid), valid


def _pairwise_correlations(matrices: list[sparse.csr_matrix], masks: list[sparse.csr_matrix]) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and counts over common columns for every (a, b, i, j), by sparse products."""
    m, n = len(matrices), matrices[0].shape[0]
    r = np.zeros((m, m, n, n))
    count = np.zeros((m, m, n, n))
    squares = [x.multiply(x) for x in matrices]
    for a in range(m):
        for b in range(m):
            x, y, mx, my = matrices[a], matrices[b], masks[a], masks[b]
            k = (mx @ my.T).toarray()
            sx, sy = (x @ my.T).toarray(), (mx @ y.T).toarray()
            sxx, syy = (squares[a] @ my.T).toarray(), (mx @ squares[b].T).toarray()
            sxy = (x @ y.T).toarray()
            with np.errstate(invalid="ignore", divide="ignore"):
                covariance = sxy - sx * sy / k
                denominator = np.sqrt((sxx - sx**2 / k) * (syy - sy**2 / k))
                value = covariance / denominator
            usable = (k >= MIN_COMMON) & (denominator > 0)
            r[a, b] = np.where(usable, value, 0.0)
            count[a, b] = np.where(usable, k, 0.0)
    return r, count


def _objective(assignment: np.ndarray, weighted: np.ndarray) -> float:
    n = len(assignment)
    values = weighted[assignment[:, None], assignment[None, :], np.arange(n)[:, None], np.arange(n)[None, :]]
    return float(values.sum() - np.trace(values))


def _sweep(assignment: np.ndarray, weighted: np.ndarray, max_sweeps: int = 100) -> np.ndarray:
    n = len(assignment)
    assignment = assignment.copy()
    for _ in range(max_sweeps):
        changed = False
        for i in range(n):  # loop over crystals, not reflections
            others = np.arange(n) != i
            scores = weighted[:, assignment[others], i, np.nonzero(others)[0]].sum(axis=1)
            best = int(np.argmax(scores))
            if scores[best] > scores[assignment[i]] + 1e-12:
                assignment[i], changed = best, True
        if not changed:
            break
    return assignment


def resolve_indexing_ambiguity(dataset: np.ndarray, miller_index: np.ndarray, intensity: np.ndarray, d: np.ndarray,
                               n_datasets: int, space_group: gemmi.SpaceGroup, operators: list[np.ndarray],
                               n_random_starts: int = 5, seed: int = 0, min_z: float = 3.0) -> AmbiguityResult:
    """Consistent settings for all crystals (rows: one observation each; use only trusted ones).

    ``operators`` from :func:`alternative_indexings` (identity first). Returns, per crystal, the
    index of the operator h' = P·h to apply so that all crystals share one indexing."""
    dataset = np.asarray(dataset, dtype=np.int64)
    hkl = np.asarray(miller_index, dtype=np.int64).reshape(-1, 3)
    normalised, valid = _normalised_intensities(dataset, np.asarray(intensity, float), np.asarray(d, float), n_datasets)
    dataset, hkl, normalised = dataset[valid], hkl[valid], normalised[valid]
    m, n_obs = len(operators), len(dataset)
    mapping = map_to_asu(np.concatenate([hkl @ p.T for p in operators]), space_group)
    n_unique = len(mapping.unique_asu_index)
    matrices, masks = [], []
    for a in range(m):
        group = mapping.group[a * n_obs:(a + 1) * n_obs]
        total = sparse.csr_matrix((normalised, (dataset, group)), shape=(n_datasets, n_unique))
        count = sparse.csr_matrix((np.ones(n_obs), (dataset, group)), shape=(n_datasets, n_unique))
        mask = count.copy()
        mask.data[:] = 1.0
        matrices.append(total.multiply(count.power(-1)).tocsr())  # mean per crystal and reflection
        masks.append(mask)
    correlation, n_common = _pairwise_correlations(matrices, masks)
    # One weight per pair, the same for every setting: with the count of each setting's own common
    # reflections, a setting would win by overlapping more rather than by correlating better.
    n_common = np.broadcast_to(n_common.mean(axis=(0, 1)), n_common.shape) * (n_common > 0)
    weighted = correlation * n_common
    rng = np.random.default_rng(seed)
    starts = [np.zeros(n_datasets, dtype=np.int64)] + [rng.integers(0, m, n_datasets) for _ in range(n_random_starts)]
    best, best_value = None, -np.inf
    for start in starts:
        candidate = _sweep(start, weighted)
        value = _objective(candidate, weighted)
        if value > best_value + 1e-9:
            best, best_value = candidate, value
    group_ops = _proper_rotations_hkl(space_group)
    counts = np.bincount(best, minlength=m)
    reference = max(range(m), key=lambda k: (counts[k], -int(np.argmax(best == k)) if counts[k] else -n_datasets))
    inverse = np.linalg.inv(operators[reference])
    relabelled = np.array([_coset_index(inverse @ operators[a], operators, group_ops) for a in best], dtype=np.int64)
    undecided = []
    for k in np.nonzero(relabelled)[0]:
        z = _significance(correlation, n_common, relabelled, k, relabelled[k])
        if z < min_z:
            undecided.append((int(k), int(relabelled[k]), z))
    for k, _, _ in undecided:
        relabelled[k] = 0
    return AmbiguityResult(operators=operators, assignment=relabelled, correlation=correlation, n_common=n_common,
                           objective=best_value, undecided=undecided)
