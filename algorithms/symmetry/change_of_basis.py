"""Change-of-basis operators in the cctbx/DIALS convention.

A cb_op string lists the new basis vectors in terms of the old ones: ``"a-2*b,a,c"`` means
a′ = a − 2b, b′ = a, c′ = c.  With P the matrix whose rows are those coefficients:
real-space rows M′ = P·M, Miller indices h′ = P·h, setting matrix A′ = A·P⁻¹, and fractional
coordinates x′ = P⁻ᵀ·x (the "xyz" form of the same operator, as cctbx prints with ``as_xyz``).
Strings in h,k,l form ("h-2*k,h,l") are read like the a,b,c form; strings in x,y,z form are
coordinate transformations and are converted with P = C⁻ᵀ.  Parsing uses ``gemmi.Op``.

Reference: Grosse-Kunstleve (1999) Acta Cryst. A55, 383–395 (cctbx change-of-basis operators).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal

_INTEGRAL_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ChangeOfBasis:
    """A change of basis with matrix P (rows: new basis vectors in terms of the old)."""

    P: np.ndarray

    def __post_init__(self):
        P = np.asarray(self.P, dtype=float).reshape(3, 3)
        if abs(np.linalg.det(P)) < 1e-9:
            raise DataError(f"change-of-basis matrix {P.tolist()} is singular; give three independent basis vectors")
        object.__setattr__(self, "P", P)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def identity(cls) -> "ChangeOfBasis":
        return cls(np.eye(3))

    @classmethod
    def from_string(cls, text: str) -> "ChangeOfBasis":
        """Parse "a-2*b,a,c", "c,a,-a+2*b-c", "-h,k,-l" or an x,y,z coordinate form."""
        cleaned = text.strip().replace(" ", "")
        # an h,k,l operator has the same coefficients as the a,b,c one (h' = P·h)
        cleaned = cleaned.translate(str.maketrans("hklHKL", "abcabc"))
        try:
            op = gemmi.Op(cleaned)
        except (RuntimeError, ValueError) as exc:
            raise DataError(
                f"cannot read change_of_basis_op '{text}': {exc}; write it like a-2*b,a,c or h,k,l"
            ) from None
        matrix = np.array(op.rot, dtype=float) / op.DEN
        letters = set(cleaned.lower()) & set("abcxyz")
        if letters & set("xyz"):
            if letters & set("abc"):
                raise DataError(f"change_of_basis_op '{text}' mixes x,y,z with a,b,c/h,k,l letters; use one form")
            matrix = np.linalg.inv(matrix).T
        return cls(matrix)

    # -- algebra -----------------------------------------------------------------------------
    def inverse(self) -> "ChangeOfBasis":
        return ChangeOfBasis(np.linalg.inv(self.P))

    def then(self, other: "ChangeOfBasis") -> "ChangeOfBasis":
        """The operator that applies ``self`` first and ``other`` second."""
        return ChangeOfBasis(other.P @ self.P)

    def __matmul__(self, other: "ChangeOfBasis") -> "ChangeOfBasis":
        """cctbx-style composition: (x @ y) applies y first, then x."""
        return other.then(self)

    def is_identity(self) -> bool:
        return bool(np.allclose(self.P, np.eye(3), atol=_INTEGRAL_TOLERANCE))

    @property
    def determinant(self) -> float:
        return float(np.linalg.det(self.P))

    # -- application -------------------------------------------------------------------------
    def apply_to_hkl(self, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """h′ = P·h for an (n, 3) array. Returns (integer indices, mask of integral results);
        rows whose transformed index is not integral (e.g. C → P) are set to (0, 0, 0)."""
        hkl = np.asarray(hkl, dtype=float).reshape(-1, 3)
        new = hkl @ self.P.T
        rounded = np.rint(new)
        integral = np.all(np.abs(new - rounded) < _INTEGRAL_TOLERANCE, axis=1)
        result = rounded.astype(np.int64)
        result[~integral] = 0
        return result, integral

    def apply_to_crystal(self, crystal: Crystal) -> Crystal:
        return crystal.change_basis(self.P)

    def apply_to_cell(self, cell: gemmi.UnitCell) -> gemmi.UnitCell:
        return Crystal.from_cell_and_U(cell, np.eye(3)).change_basis(self.P).unit_cell

    # -- text --------------------------------------------------------------------------------
    def as_string(self, letters: str = "abc") -> str:
        """DIALS-style text, e.g. "a-2*b,a,c" (``letters="hkl"`` gives "h-2*k,h,l")."""
        return ",".join(_row_as_string(row, letters) for row in self.P)

    def __str__(self) -> str:
        return self.as_string()

    def __repr__(self) -> str:
        return f"ChangeOfBasis('{self.as_string()}')"


def _row_as_string(row: np.ndarray, letters: str) -> str:
    text = ""
    for coefficient, letter in zip(row, letters):
        value = Fraction(float(coefficient)).limit_denominator(48)
        if value == 0:
            continue
        sign = "-" if value < 0 else ("+" if text else "")
        magnitude = abs(value)
        term = letter if magnitude == 1 else f"{magnitude}*{letter}"
        text += sign + term
    return text or "0"
