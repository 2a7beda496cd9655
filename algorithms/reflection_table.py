"""A small columnar reflection table with DIALS' column names and flag bits.

Columns are numpy arrays of equal length (first axis = rows); vector columns are (n, 3),
``bbox`` is (n, 6) int, ``miller_index`` (n, 3) int. ``experiment_identifiers`` maps the
integer ``id`` column to experiment identifier strings, as in DIALS. File I/O (msgpack
``.refl``) lives in :mod:`pipeline.formats.refl`; this module has none.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import numpy as np


class Flags(enum.IntFlag):
    """DIALS' reflection flag bits (``dials.array_family.flex.reflection_table.flags``)."""

    predicted = 1 << 0
    observed = 1 << 1
    indexed = 1 << 2
    used_in_refinement = 1 << 3
    strong = 1 << 5
    reference_spot = 1 << 6
    dont_integrate = 1 << 7
    integrated_sum = 1 << 8
    integrated_prf = 1 << 9
    overloaded = 1 << 10
    overlapped_bg = 1 << 11
    overlapped_fg = 1 << 12
    in_powder_ring = 1 << 13
    foreground_includes_bad_pixels = 1 << 14
    background_includes_bad_pixels = 1 << 15
    used_in_modelling = 1 << 16
    centroid_outlier = 1 << 17
    failed_during_background_modelling = 1 << 18
    failed_during_summation = 1 << 19
    failed_during_profile_fitting = 1 << 20
    bad_reference = 1 << 21
    user_excluded_in_scaling = 1 << 22
    outlier_in_scaling = 1 << 23
    excluded_for_scaling = 1 << 24
    excluded_for_refinement = 1 << 25
    scaled = 1 << 26
    integrated = integrated_sum | integrated_prf
    bad_for_scaling = user_excluded_in_scaling | outlier_in_scaling | excluded_for_scaling
    bad_for_refinement = excluded_for_refinement | centroid_outlier


class ReflectionTable:
    """Named numpy columns of equal length plus experiment identifiers.

    >>> t = ReflectionTable({"id": np.zeros(2, int), "d": np.array([3.0, 2.0])})
    >>> len(t.select(t["d"] > 2.5))
    1
    """

    def __init__(self, columns: Mapping[str, np.ndarray] | None = None, experiment_identifiers: Mapping[int, str] | None = None):
        self._columns: dict[str, np.ndarray] = {}
        self.experiment_identifiers: dict[int, str] = dict(experiment_identifiers or {})
        # DIALS type name of columns read from a .refl file ("int", "vec3<double>", ...), so that
        # pipeline.formats.refl writes them back as they were; others are inferred on writing.
        self.column_types: dict[str, str] = {}
        for name, values in (columns or {}).items():
            self[name] = values

    # -- mapping interface -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def __contains__(self, name: str) -> bool:
        return name in self._columns

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"reflection table has no column '{name}' (columns: {', '.join(sorted(self._columns))})") from None

    def __setitem__(self, name: str, values) -> None:
        # Ragged columns (e.g. shoeboxes) are objects with __len__, select() and concat().
        if not (hasattr(values, "select") and hasattr(values, "__len__")):
            values = np.asarray(values)
        if isinstance(values, np.ndarray) and values.ndim == 0:
            values = np.full(len(self), values)
        if self._columns and len(values) != len(self):
            raise ValueError(f"column '{name}' has {len(values)} rows, table has {len(self)}")
        self._columns[name] = values

    def __delitem__(self, name: str) -> None:
        del self._columns[name]
        self.column_types.pop(name, None)

    def keys(self) -> list[str]:
        return list(self._columns)

    def items(self):
        return self._columns.items()

    def get(self, name: str, default=None):
        return self._columns.get(name, default)

    @property
    def size(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return f"ReflectionTable({len(self)} rows; {', '.join(self.keys())})"

    # -- rows ------------------------------------------------------------------------------
    def select(self, selection) -> "ReflectionTable":
        """Rows by boolean mask or integer indices (a new table sharing no arrays)."""
        selection = np.asarray(selection)
        out = ReflectionTable(experiment_identifiers=self.experiment_identifiers)
        out.column_types = dict(self.column_types)
        for name, values in self._columns.items():
            out._columns[name] = values.select(selection) if hasattr(values, "select") else values[selection]
        return out

    def copy(self) -> "ReflectionTable":
        out = ReflectionTable(experiment_identifiers=self.experiment_identifiers)
        out.column_types = dict(self.column_types)
        out._columns = {k: v.copy() for k, v in self._columns.items()}  # ragged columns provide copy()
        return out

    @classmethod
    def concat(cls, tables: Iterable["ReflectionTable"]) -> "ReflectionTable":
        """Stack tables row-wise; columns missing in some tables are dropped."""
        tables = [t for t in tables if t is not None]
        if not tables:
            return cls()
        common = [k for k in tables[0].keys() if all(k in t for t in tables[1:])]
        ids: dict[int, str] = {}
        for t in tables:
            for k, v in t.experiment_identifiers.items():
                if ids.get(k, v) != v:
                    raise ValueError(f"experiment id {k} maps to two identifiers ({ids[k]}, {v}); renumber before joining")
                ids[k] = v
        def join(columns):
            first = columns[0]
            return type(first).concat(columns) if hasattr(first, "select") else np.concatenate(columns)

        out = cls({k: join([t[k] for t in tables]) for k in common}, ids)
        out.column_types = {k: v for k, v in tables[0].column_types.items() if k in common}
        return out

    @classmethod
    def empty_like(cls, other: "ReflectionTable") -> "ReflectionTable":
        return other.select(np.zeros(len(other), dtype=bool))

    # -- flags -----------------------------------------------------------------------------
    def _flags(self) -> np.ndarray:
        if "flags" not in self._columns:
            self._columns["flags"] = np.zeros(len(self), dtype=np.uint64)
        return self._columns["flags"]

    def get_flags(self, flags: int, all: bool = True) -> np.ndarray:
        """Rows having all (or with ``all=False`` any) of the given bits."""
        f = self._flags() & np.uint64(int(flags))
        return f == np.uint64(int(flags)) if all else f != 0

    def set_flags(self, selection, flags: int) -> None:
        f = self._flags()
        f[np.asarray(selection)] |= np.uint64(int(flags))

    def unset_flags(self, selection, flags: int) -> None:
        f = self._flags()
        f[np.asarray(selection)] &= ~np.uint64(int(flags))

    # -- conversion ------------------------------------------------------------------------
    def to_pandas(self):
        """A pandas DataFrame with vector columns split (``xyzobs.px.value.0`` …)."""
        import pandas as pd

        data = {}
        for name, values in self._columns.items():
            if values.ndim == 1:
                data[name] = values
            else:
                flat = values.reshape(len(values), -1)
                for i in range(flat.shape[1]):
                    data[f"{name}.{i}"] = flat[:, i]
        return pd.DataFrame(data)
