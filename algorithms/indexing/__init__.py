"""Indexing: max_cell estimate, FFT basis-vector searches, candidate lattices, index assignment."""
from algorithms.indexing.assign import assign_indices, fit_a_matrix, rlp_rmsd, split_pieces
from algorithms.indexing.candidates import candidate_crystals, correct_non_primitive_basis, detect_non_primitive_basis
from algorithms.indexing.fft1d import fft1d_candidate_vectors
from algorithms.indexing.fft3d import fft3d_candidate_vectors
from algorithms.indexing.index import Candidate, IndexingResult, index_reflections
from algorithms.indexing.known_symmetry import apply_known_symmetry
from algorithms.indexing.max_cell import estimate_max_cell, max_cell_from_unit_cell
from algorithms.indexing.scoring import score_candidates

__all__ = [
    "assign_indices", "fit_a_matrix", "rlp_rmsd", "split_pieces", "candidate_crystals", "correct_non_primitive_basis",
    "detect_non_primitive_basis", "fft1d_candidate_vectors", "fft3d_candidate_vectors", "Candidate",
    "IndexingResult", "index_reflections", "apply_known_symmetry", "estimate_max_cell",
    "max_cell_from_unit_cell", "score_candidates",
]
