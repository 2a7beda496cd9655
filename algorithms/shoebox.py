"""Shoeboxes: the ragged per-reflection pixel boxes of a reflection table.

A shoebox is the block of pixels around one reflection, bounded by its ``bbox``
(x0, x1, y0, y1, z0, z1; half-open, pixels and 0-based image index z) on one ``panel``, with
per-voxel ``data`` (counts), ``mask`` (:class:`MaskCode` bits) and ``background``.
DIALS stores one C++ object per reflection; here a whole column is held in three flat arrays
plus row offsets, so that selecting, joining and (de)serialising many thousands of shoeboxes
are a few numpy operations instead of a Python loop per reflection. Each row's voxels are
z-major: ``data[offsets[i]:offsets[i+1]].reshape(nz, ny, nx)``.

Reference: Winter et al. (2018) Acta Cryst. D74, 85–97 (DIALS shoeboxes and mask codes);
``dials/model/data/shoebox.h`` for the semantics re-implemented here.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np


class MaskCode(enum.IntFlag):
    """DIALS' per-voxel shoebox mask bits."""

    Valid = 1
    Background = 2
    Foreground = 4
    Strong = 8
    BackgroundUsed = 16
    Overlapped = 32


def bbox_shapes(bbox: np.ndarray) -> np.ndarray:
    """(n, 3) array of (nz, ny, nx) for half-open boxes (x0, x1, y0, y1, z0, z1)."""
    bbox = np.asarray(bbox, dtype=np.int64).reshape(-1, 6)
    return np.stack([bbox[:, 5] - bbox[:, 4], bbox[:, 3] - bbox[:, 2], bbox[:, 1] - bbox[:, 0]], axis=1)


def ragged_take(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segments ``flat[offsets[r]:offsets[r+1]]`` of ``rows``, concatenated, and their new offsets.

    Vectorised: one index array built with repeat/cumsum, no loop over rows.
    """
    rows = np.asarray(rows, dtype=np.int64)
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    # Position k of the output comes from offsets[row] + (k - new_offsets[row's slot]).
    shift = np.repeat(offsets[rows] - new_offsets[:-1], lengths)
    index = np.arange(new_offsets[-1], dtype=np.int64) + shift
    return flat[index], new_offsets


class Shoeboxes:
    """A column of shoeboxes for :class:`algorithms.reflection_table.ReflectionTable`.

    Fields: ``panel`` (n,) uint32; ``bbox`` (n, 6) int32; ``offsets`` (n+1,) int64 into the flat
    arrays; ``data`` and ``background`` float32 (flat); ``mask`` int32 or uint8 (flat; DIALS
    files of version 1 carry int32 masks, version 2 uint8); ``has_data`` (n,) bool. A row
    without data (``has_data`` False) owns no voxels, as a DIALS shoebox whose arrays are not
    allocated (e.g. after ``dials.find_spots`` without shoeboxes, or before extraction).
    """

    def __init__(self, panel, bbox, offsets, data, mask, background, has_data):
        self.panel = np.ascontiguousarray(panel, dtype=np.uint32).reshape(-1)
        self.bbox = np.ascontiguousarray(bbox, dtype=np.int32).reshape(-1, 6)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
        self.data = np.ascontiguousarray(data, dtype=np.float32).reshape(-1)
        mask = np.asarray(mask)
        self.mask = np.ascontiguousarray(mask, dtype=mask.dtype if mask.dtype in (np.uint8, np.int32) else np.int32).reshape(-1)
        self.background = np.ascontiguousarray(background, dtype=np.float32).reshape(-1)
        self.has_data = np.ascontiguousarray(has_data, dtype=bool).reshape(-1)
        n = len(self.panel)
        if not (len(self.bbox) == len(self.has_data) == n and len(self.offsets) == n + 1):
            raise ValueError(
                f"shoebox fields disagree: {n} panels, {len(self.bbox)} boxes, {len(self.has_data)} has_data, "
                f"{len(self.offsets)} offsets (need n+1)"
            )
        total = int(self.offsets[-1]) if n else 0
        if not (len(self.data) == len(self.mask) == len(self.background) == total):
            raise ValueError(
                f"shoebox flat arrays have {len(self.data)}/{len(self.mask)}/{len(self.background)} voxels, offsets say {total}"
            )
        expected = np.where(self.has_data, np.prod(bbox_shapes(self.bbox), axis=1), 0)
        if np.any(np.diff(self.offsets) != expected):
            bad = int(np.flatnonzero(np.diff(self.offsets) != expected)[0])
            raise ValueError(f"shoebox {bad}: {int(np.diff(self.offsets)[bad])} voxels but its bbox holds {int(expected[bad])}")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def empty(cls, panel, bbox, mask_dtype=np.uint8) -> "Shoeboxes":
        """Shoeboxes for ``bbox`` with allocated, zeroed data, mask and background."""
        bbox = np.asarray(bbox, dtype=np.int32).reshape(-1, 6)
        panel = np.broadcast_to(np.asarray(panel, dtype=np.uint32), (len(bbox),))
        shapes = bbox_shapes(bbox)
        if np.any(shapes < 0):
            raise ValueError("a bbox has x1 < x0, y1 < y0 or z1 < z0")
        sizes = np.prod(shapes, axis=1)
        offsets = np.zeros(len(bbox) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        total = int(offsets[-1])
        return cls(
            panel, bbox, offsets, np.zeros(total, np.float32), np.zeros(total, mask_dtype), np.zeros(total, np.float32), sizes > 0
        )

    @classmethod
    def from_arrays(
        cls,
        panel,
        bbox,
        data_list: Sequence[np.ndarray | None],
        mask_list: Sequence[np.ndarray | None],
        background_list: Sequence[np.ndarray | None],
    ) -> "Shoeboxes":
        """Shoeboxes from per-row (nz, ny, nx) arrays; a row whose data is None has no data."""
        bbox = np.asarray(bbox, dtype=np.int32).reshape(-1, 6)
        n = len(bbox)
        if not (len(data_list) == len(mask_list) == len(background_list) == n):
            raise ValueError(f"{n} boxes but {len(data_list)}/{len(mask_list)}/{len(background_list)} data/mask/background arrays")
        panel = np.broadcast_to(np.asarray(panel, dtype=np.uint32), (n,))
        shapes = bbox_shapes(bbox)
        allocated = np.array([d is not None for d in data_list], dtype=bool)
        for i in np.flatnonzero(allocated):
            for name, arr in (("data", data_list[i]), ("mask", mask_list[i]), ("background", background_list[i])):
                if arr is None or np.shape(arr) != tuple(shapes[i]):
                    raise ValueError(f"shoebox {i}: {name} has shape {np.shape(arr)}, its bbox needs {tuple(shapes[i])}")
        # A box without voxels holds no data, as in DIALS (which writes it without arrays).
        has_data = allocated & (np.prod(shapes, axis=1) > 0)
        sizes = np.where(has_data, np.prod(shapes, axis=1), 0)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        rows = np.flatnonzero(has_data)
        masks = [np.asarray(mask_list[i]).ravel() for i in rows]
        mask_dtype = np.uint8 if all(m.dtype == np.uint8 for m in masks) else np.int32

        def flat(arrays, dtype):
            return np.concatenate([np.asarray(a, dtype).ravel() for a in arrays]) if len(rows) else np.zeros(0, dtype)

        return cls(
            panel,
            bbox,
            offsets,
            flat([data_list[i] for i in rows], np.float32),
            flat(masks, mask_dtype),
            flat([background_list[i] for i in rows], np.float32),
            has_data,
        )

    # -- column protocol (ReflectionTable) ---------------------------------------------------
    def __len__(self) -> int:
        return len(self.panel)

    def __repr__(self) -> str:
        return f"Shoeboxes({len(self)} rows, {len(self.data)} voxels, mask {self.mask.dtype})"

    def select(self, selection) -> "Shoeboxes":
        """Rows by boolean mask or integer indices."""
        selection = np.asarray(selection)
        rows = np.flatnonzero(selection) if selection.dtype == bool else selection.astype(np.int64).reshape(-1)
        if selection.dtype == bool and len(selection) != len(self):
            raise ValueError(f"boolean selection has {len(selection)} entries for {len(self)} shoeboxes")
        rows = np.where(rows < 0, rows + len(self), rows)
        data, offsets = ragged_take(self.data, self.offsets, rows)
        mask, _ = ragged_take(self.mask, self.offsets, rows)
        background, _ = ragged_take(self.background, self.offsets, rows)
        return Shoeboxes(self.panel[rows], self.bbox[rows], offsets, data, mask, background, self.has_data[rows])

    def copy(self) -> "Shoeboxes":
        return Shoeboxes(
            self.panel.copy(), self.bbox.copy(), self.offsets.copy(), self.data.copy(), self.mask.copy(),
            self.background.copy(), self.has_data.copy(),
        )

    @classmethod
    def concat(cls, columns: Sequence["Shoeboxes"]) -> "Shoeboxes":
        """Stack columns row-wise; masks become int32 unless all are uint8."""
        columns = list(columns)
        if not columns:
            return cls.empty(np.zeros(0), np.zeros((0, 6)))
        starts = np.cumsum([0] + [int(c.offsets[-1]) for c in columns[:-1]])
        offsets = np.concatenate([[0]] + [c.offsets[1:] + s for c, s in zip(columns, starts)])
        mask_dtype = np.uint8 if all(c.mask.dtype == np.uint8 for c in columns) else np.int32
        return cls(
            np.concatenate([c.panel for c in columns]),
            np.concatenate([c.bbox for c in columns]),
            offsets,
            np.concatenate([c.data for c in columns]),
            np.concatenate([c.mask.astype(mask_dtype) for c in columns]),
            np.concatenate([c.background for c in columns]),
            np.concatenate([c.has_data for c in columns]),
        )

    # -- access ------------------------------------------------------------------------------
    def shape(self, i: int) -> tuple[int, int, int]:
        """(nz, ny, nx) of row i's bbox."""
        return tuple(int(v) for v in bbox_shapes(self.bbox[i])[0])

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views (data, mask, background) of row i, each (nz, ny, nx); (0, 0, 0) arrays if it has no data."""
        shape = self.shape(i) if self.has_data[i] else (0, 0, 0)
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.data[lo:hi].reshape(shape), self.mask[lo:hi].reshape(shape), self.background[lo:hi].reshape(shape)
