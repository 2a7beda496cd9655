"""Shoeboxes: ragged storage, selection and joining against a per-row reference."""
import numpy as np
import pytest

from algorithms.reflection_table import ReflectionTable
from algorithms.shoebox import MaskCode, Shoeboxes, bbox_shapes


def random_boxes(n, rng, with_empty=True):
    x0 = rng.integers(0, 100, n)
    y0 = rng.integers(0, 100, n)
    z0 = rng.integers(0, 20, n)
    size = rng.integers(1, 6, (n, 3))
    if with_empty:
        size[::7, 0] = 0  # some boxes with no voxels
    bbox = np.stack([x0, x0 + size[:, 0], y0, y0 + size[:, 1], z0, z0 + size[:, 2]], axis=1)
    panel = rng.integers(0, 3, n)
    shapes = bbox_shapes(bbox)
    data = [rng.normal(size=tuple(s)).astype(np.float32) if i % 5 != 3 else None for i, s in enumerate(shapes)]
    mask = [None if d is None else rng.integers(0, 64, d.shape).astype(np.uint8) for d in data]
    background = [None if d is None else rng.normal(size=d.shape).astype(np.float32) for d in data]
    return panel, bbox, data, mask, background


def assert_rows_equal(boxes, rows, panel, bbox, data, mask, background):
    assert len(boxes) == len(rows)
    for k, i in enumerate(rows):
        assert boxes.panel[k] == panel[i]
        np.testing.assert_array_equal(boxes.bbox[k], bbox[i])
        d, m, b = boxes.get(k)
        if data[i] is None or data[i].size == 0:
            assert not boxes.has_data[k] and d.size == 0
        else:
            assert boxes.has_data[k]
            np.testing.assert_array_equal(d, data[i])
            np.testing.assert_array_equal(m, mask[i])
            np.testing.assert_array_equal(b, background[i])


def test_mask_codes_are_dials_bits():
    assert [int(c) for c in MaskCode] == [1, 2, 4, 8, 16, 32]
    assert MaskCode.Valid | MaskCode.Foreground == 5


def test_from_arrays_and_get_give_back_each_row():
    rng = np.random.default_rng(1)
    panel, bbox, data, mask, background = random_boxes(40, rng)
    boxes = Shoeboxes.from_arrays(panel, bbox, data, mask, background)
    assert boxes.mask.dtype == np.uint8
    assert_rows_equal(boxes, range(40), panel, bbox, data, mask, background)
    sizes = [0 if d is None else d.size for d in data]
    np.testing.assert_array_equal(np.diff(boxes.offsets), sizes)
    assert boxes.has_data.tolist() == [s > 0 for s in sizes]
    assert any(d is not None and d.size == 0 for d in data)  # the zero-volume case is covered


@pytest.mark.parametrize("kind", ["indices", "boolean", "negative"])
def test_select_matches_per_row_reference(kind):
    rng = np.random.default_rng(2)
    panel, bbox, data, mask, background = random_boxes(200, rng)
    boxes = Shoeboxes.from_arrays(panel, bbox, data, mask, background)
    if kind == "indices":
        rows = rng.integers(0, 200, 150)  # repeats and any order
        chosen = boxes.select(rows)
    elif kind == "boolean":
        keep = rng.random(200) < 0.4
        rows = np.flatnonzero(keep)
        chosen = boxes.select(keep)
    else:
        rows = np.array([199, 0, 5])
        chosen = boxes.select(np.array([-1, 0, 5]))
    assert_rows_equal(chosen, rows, panel, bbox, data, mask, background)


def test_select_nothing_and_concat_nothing():
    rng = np.random.default_rng(3)
    boxes = Shoeboxes.from_arrays(*random_boxes(5, rng))
    none = boxes.select(np.zeros(5, bool))
    assert len(none) == 0 and none.offsets.tolist() == [0] and len(none.data) == 0
    assert len(Shoeboxes.concat([])) == 0


def test_concat_then_select_recovers_the_parts():
    rng = np.random.default_rng(4)
    parts = [random_boxes(n, rng) for n in (10, 0, 25)]
    columns = [Shoeboxes.from_arrays(*p) for p in parts]
    joined = Shoeboxes.concat(columns)
    assert len(joined) == 35
    assert_rows_equal(joined.select(np.arange(10, 35)), range(25), *parts[2])
    assert_rows_equal(joined.select(np.arange(10)), range(10), *parts[0])


def test_concat_widens_mixed_masks_to_int32():
    a = Shoeboxes.empty([0], [[0, 1, 0, 1, 0, 1]])
    b = Shoeboxes.empty([0], [[0, 1, 0, 1, 0, 1]], mask_dtype=np.int32)
    b.mask[:] = 300
    joined = Shoeboxes.concat([a, b])
    assert joined.mask.dtype == np.int32 and joined.mask.tolist() == [0, 300]
    assert Shoeboxes.concat([a, a]).mask.dtype == np.uint8


def test_empty_allocates_zeros_with_bbox_shapes():
    boxes = Shoeboxes.empty(1, [[2, 5, 10, 12, 3, 4], [0, 0, 0, 4, 0, 1]])
    d, m, b = boxes.get(0)
    assert d.shape == m.shape == b.shape == (1, 2, 3)
    assert not d.any() and not m.any() and not b.any()
    assert boxes.has_data.tolist() == [True, False]
    assert boxes.panel.tolist() == [1, 1]
    # get() returns views: writing into them fills the column
    d[0, 1, 2] = 7.0
    assert boxes.data[5] == 7.0


def test_copy_is_independent():
    boxes = Shoeboxes.empty(0, [[0, 2, 0, 2, 0, 1]])
    other = boxes.copy()
    other.data[:] = 1
    other.bbox[0, 0] = 1
    assert not boxes.data.any() and boxes.bbox[0, 0] == 0


def test_inconsistent_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        Shoeboxes.from_arrays([0], [[0, 2, 0, 2, 0, 1]], [np.zeros((1, 2, 3))], [np.zeros((1, 2, 3))], [np.zeros((1, 2, 3))])
    with pytest.raises(ValueError, match="voxels"):
        Shoeboxes([0], [[0, 2, 0, 2, 0, 1]], [0, 3], np.zeros(3), np.zeros(3, np.uint8), np.zeros(3), [True])
    with pytest.raises(ValueError, match="bbox"):
        Shoeboxes.empty([0], [[3, 2, 0, 1, 0, 1]])


def test_shoebox_column_in_a_reflection_table():
    rng = np.random.default_rng(5)
    panel, bbox, data, mask, background = random_boxes(30, rng)
    table = ReflectionTable({"id": np.zeros(30, np.int32), "bbox": bbox})
    table["shoebox"] = Shoeboxes.from_arrays(panel, bbox, data, mask, background)
    picked = table.select(np.arange(30) % 3 == 0)
    assert_rows_equal(picked["shoebox"], range(0, 30, 3), panel, bbox, data, mask, background)
    both = ReflectionTable.concat([picked, table.copy()])
    assert len(both["shoebox"]) == 40
    assert_rows_equal(both["shoebox"].select(np.arange(10, 40)), range(30), panel, bbox, data, mask, background)
