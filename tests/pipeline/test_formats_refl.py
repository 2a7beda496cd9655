"""DIALS .refl interchange: bit-exact round trips of real files, every column type, errors."""
import pickle
import struct

import msgpack
import numpy as np
import pytest

from algorithms.reflection_table import Flags, ReflectionTable
from algorithms.shoebox import Shoeboxes
from pipeline.errors import InputFileError
from pipeline.formats.refl import (
    column_type,
    read_reflections,
    reflections_from_bytes,
    reflections_to_bytes,
    write_reflections,
)

REFL_FILES = [
    "quartz_processed/strong.refl",
    "quartz_processed/indexed.refl",
    "quartz_processed/refined.refl",
    "quartz_processed/integrated.refl",
    "quartz_processed/scaled.refl",
    "l_cysteine_narrow_wedge/11_integrated.refl",
    "l_cysteine_narrow_wedge/23_integrated.refl",
    "ed_lysozyme_cred/reference_dials/experiment_14/strong.refl",
    "ed_lysozyme_cred/reference_dials/experiment_24/strong.refl",
]


@pytest.mark.parametrize("name", REFL_FILES)
def test_real_files_round_trip_bit_exactly(shared_data, tmp_path, name):
    source = shared_data / name
    table = read_reflections(source)
    write_reflections(table, tmp_path / "out.refl")
    assert (tmp_path / "out.refl").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("name", REFL_FILES)
def test_columns_match_an_independent_msgpack_decode(shared_data, name):
    """Each column equals the raw little-endian array that msgpack alone finds in the file."""
    document = msgpack.unpackb((shared_data / name).read_bytes(), strict_map_key=False)
    table = read_reflections(shared_data / name)
    dtypes = {"int": "<i4", "std::size_t": "<u8", "double": "<f8", "bool": "|b1", "int6": "<i4",
              "vec3<double>": "<f8", "cctbx::miller::index<>": "<i4"}
    assert len(table) == document[2]["nrows"]
    assert table.experiment_identifiers == document[2]["identifiers"]
    for name_, (type_name, (n, payload)) in document[2]["data"].items():
        assert table.column_types[name_] == type_name
        if type_name in dtypes:
            expected = np.frombuffer(payload, dtypes[type_name]).reshape(n, -1).squeeze(axis=1) if type_name in (
                "int", "std::size_t", "double", "bool") else np.frombuffer(payload, dtypes[type_name]).reshape(n, -1)
            np.testing.assert_array_equal(table[name_], expected)
            assert table[name_].flags.writeable


def parse_shoebox_records(payload: bytes, count: int):
    """A slow, independent reader of the first ``count`` shoebox records (struct module)."""
    records, pos = [], 0
    for _ in range(count):
        panel, *bbox = struct.unpack_from("<I6i", payload, pos)
        marker = payload[pos + 28]
        pos += 29
        record = {"panel": panel, "bbox": bbox, "marker": marker}
        if marker:
            n = (bbox[1] - bbox[0]) * (bbox[3] - bbox[2]) * (bbox[5] - bbox[4])
            record["data"] = np.frombuffer(payload, "<f4", n, pos)
            pos += 4 * n
            mask_type = "<i4" if marker == 1 else "u1"
            record["mask"] = np.frombuffer(payload, mask_type, n, pos)
            pos += np.dtype(mask_type).itemsize * n
            record["background"] = np.frombuffer(payload, "<f4", n, pos)
            pos += 4 * n
        records.append(record)
    return records


def test_shoeboxes_match_an_independent_record_parser(shared_data):
    path = shared_data / "quartz_processed/strong.refl"
    payload = msgpack.unpackb(path.read_bytes(), strict_map_key=False)[2]["data"]["shoebox"][1][1]
    boxes = read_reflections(path)["shoebox"]
    records = parse_shoebox_records(payload, 50)
    assert {r["marker"] for r in records} == {1}  # DIALS 3.x version-1 file: int32 masks
    for i, r in enumerate(records):
        assert boxes.panel[i] == r["panel"] and boxes.bbox[i].tolist() == r["bbox"]
        data, mask, background = boxes.get(i)
        nz, ny, nx = r["bbox"][5] - r["bbox"][4], r["bbox"][3] - r["bbox"][2], r["bbox"][1] - r["bbox"][0]
        np.testing.assert_array_equal(data, r["data"].reshape(nz, ny, nx))
        np.testing.assert_array_equal(mask, r["mask"].reshape(nz, ny, nx))
        np.testing.assert_array_equal(background, r["background"].reshape(nz, ny, nx))
    assert boxes.mask.min() >= 0 and boxes.mask.max() < 64  # only DIALS mask-code bits


def test_strong_spot_table_contents(shared_data):
    table = read_reflections(shared_data / "quartz_processed/strong.refl")
    assert table["id"].dtype == np.int32 and table["flags"].dtype == np.uint64
    assert table["bbox"].shape == (505, 6) and table["xyzobs.px.value"].shape == (505, 3)
    assert table.get_flags(Flags.strong).all()
    # centroids lie inside their boxes
    x, y, z = table["xyzobs.px.value"].T
    b = table["bbox"]
    assert np.all((b[:, 0] <= x) & (x <= b[:, 1]) & (b[:, 2] <= y) & (y <= b[:, 3]) & (b[:, 4] <= z) & (z <= b[:, 5]))


def every_type_table(rng, n=37):
    panel = rng.integers(0, 2, n)
    x0, y0, z0 = rng.integers(0, 50, n), rng.integers(0, 50, n), rng.integers(0, 9, n)
    size = rng.integers(0, 4, (n, 3))
    bbox = np.stack([x0, x0 + size[:, 0], y0, y0 + size[:, 1], z0, z0 + size[:, 2]], axis=1)
    boxes = Shoeboxes.empty(panel, bbox)
    boxes.data[:] = rng.normal(size=boxes.data.shape)
    boxes.mask[:] = rng.integers(0, 64, boxes.mask.shape)
    boxes.background[:] = rng.normal(size=boxes.data.shape)
    table = ReflectionTable(
        {
            "entering": rng.random(n) < 0.5,
            "id": rng.integers(-1, 3, n).astype(np.int32),
            "flags": rng.integers(0, 2**40, n).astype(np.uint64),
            "d": rng.random(n),
            "xy": rng.random((n, 2)),
            "s1": rng.normal(size=(n, 3)),
            "matrix": rng.normal(size=(n, 3, 3)),
            "bbox": bbox.astype(np.int32),
            "miller_index": rng.integers(-20, 20, (n, 3)).astype(np.int32),
            "label": np.array([f"spot {i} é" for i in range(n)], dtype=object),
            "shoebox": boxes,
        },
        experiment_identifiers={0: "uuid-0", 1: "uuid-1", 2: "uuid-2"},
    )
    return table


EXPECTED_TYPES = {
    "entering": "bool", "id": "int", "flags": "std::size_t", "d": "double", "xy": "vec2<double>",
    "s1": "vec3<double>", "matrix": "mat3<double>", "bbox": "int6", "miller_index": "cctbx::miller::index<>",
    "label": "std::string", "shoebox": "Shoebox<>",
}


@pytest.mark.parametrize("version", [1, 2])
def test_a_table_with_every_column_type_round_trips(tmp_path, version):
    table = every_type_table(np.random.default_rng(7))
    write_reflections(table, tmp_path / "all.refl", version=version)
    raw = (tmp_path / "all.refl").read_bytes()
    document = msgpack.unpackb(raw, strict_map_key=False)
    assert document[1] == version
    assert {k: v[0] for k, v in document[2]["data"].items()} == EXPECTED_TYPES
    assert list(document[2]["data"]) == sorted(EXPECTED_TYPES)  # DIALS' std::map order
    back = read_reflections(tmp_path / "all.refl")
    assert back.experiment_identifiers == table.experiment_identifiers
    for name in EXPECTED_TYPES:
        if name == "shoebox":
            a, b = table[name], back[name]
            for field in ("panel", "bbox", "offsets", "data", "mask", "background", "has_data"):
                np.testing.assert_array_equal(getattr(b, field), getattr(a, field))
            assert b.mask.dtype == (np.int32 if version == 1 else np.uint8)
            markers = {r["marker"] for r in parse_shoebox_records(document[2]["data"]["shoebox"][1][1], len(a))}
            assert markers == ({0, version} if not a.has_data.all() else {version})
        else:
            np.testing.assert_array_equal(back[name], table[name])
    # and the table read back writes the same bytes again
    assert reflections_to_bytes(back, version) == raw


def test_selected_rows_keep_their_bytes(shared_data):
    table = read_reflections(shared_data / "quartz_processed/integrated.refl")
    rows = np.flatnonzero(table.get_flags(Flags.integrated_sum))[::3]
    picked = reflections_from_bytes(reflections_to_bytes(table.select(rows)))
    for name in table.keys():
        np.testing.assert_array_equal(picked[name], table[name][rows])
        assert picked.column_types[name] == table.column_types[name]


def test_types_of_new_columns_are_inferred_from_name_and_dtype():
    n = 4
    assert column_type("id", np.zeros(n, np.int64)) == "int"
    assert column_type("panel", np.zeros(n, np.int64)) == "std::size_t"
    assert column_type("flags", np.zeros(n, np.int64)) == "std::size_t"
    assert column_type("entering", np.zeros(n, bool)) == "bool"
    assert column_type("miller_index", np.zeros((n, 3), np.int64)) == "cctbx::miller::index<>"
    assert column_type("bbox", np.zeros((n, 6), np.int64)) == "int6"
    assert column_type("xyzobs.px.value", np.zeros((n, 3))) == "vec3<double>"
    assert column_type("xyzcal.mm", np.zeros((n, 3))) == "vec3<double>"
    assert column_type("rlp", np.zeros((n, 3))) == "vec3<double>"
    assert column_type("num_pixels.valid", np.zeros(n, np.int64)) == "int"
    assert column_type("partiality", np.zeros(n)) == "double"
    assert column_type("anything", np.zeros(n, np.uint32)) == "std::size_t"
    # a stored type that no longer fits the array is replaced
    assert column_type("x", np.zeros((n, 3)), stored="int") == "vec3<double>"
    with pytest.raises(ValueError, match="no DIALS column type"):
        column_type("odd", np.zeros((n, 4)))


def test_int64_columns_are_written_as_dials_types(tmp_path):
    table = ReflectionTable({"id": np.array([0, 1, -1]), "miller_index": np.array([[1, 2, 3]] * 3), "panel": np.zeros(3, int)})
    write_reflections(table, tmp_path / "t.refl")
    back = read_reflections(tmp_path / "t.refl")
    assert back["id"].dtype == np.int32 and back["panel"].dtype == np.uint64
    np.testing.assert_array_equal(back["miller_index"], table["miller_index"])
    with pytest.raises(ValueError, match="do not fit"):
        reflections_to_bytes(ReflectionTable({"id": np.array([2**40])}))


def test_empty_table_round_trips(tmp_path):
    table = ReflectionTable({"d": np.zeros(0), "miller_index": np.zeros((0, 3), np.int32)})
    write_reflections(table, tmp_path / "e.refl")
    back = read_reflections(tmp_path / "e.refl")
    assert len(back) == 0 and back["miller_index"].shape == (0, 3)


@pytest.mark.parametrize(
    "content, expected",
    [
        (pickle.dumps({"miller_index": [1, 2, 3]}, protocol=2), "Python pickle"),
        (msgpack.packb(["dials::af::experiment_list", 1, {}]), "expected a msgpack array"),
        (msgpack.packb(["dials::af::reflection_table", 7, {}]), "version 7"),
        (b"\xc1\xc1 not msgpack", "msgpack cannot decode"),
        (msgpack.packb(["dials::af::reflection_table", 1, {"nrows": 2, "data": {"d": ["double", [2, b"\0" * 8]]}}]),
         "holds 8 bytes"),
        (msgpack.packb(["dials::af::reflection_table", 1, {"nrows": 1, "data": {"z": ["FrameSlicedShoebox<>", [1, b"\3"]]}}]),
         "cannot read"),
    ],
)
def test_bad_files_are_rejected_with_their_name(tmp_path, content, expected):
    path = tmp_path / "bad.refl"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=expected) as info:
        read_reflections(path)
    assert str(path) in str(info.value)


def test_truncated_shoebox_column_is_rejected(shared_data):
    document = msgpack.unpackb((shared_data / "quartz_processed/strong.refl").read_bytes(), strict_map_key=False)
    type_name, (n, payload) = document[2]["data"]["shoebox"]
    document[2]["data"]["shoebox"] = [type_name, [n, payload[:-10]]]
    with pytest.raises(InputFileError, match="shoebox column 'shoebox' is inconsistent"):
        reflections_from_bytes(msgpack.packb(document, use_bin_type=True), source="cut.refl")


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="none.refl"):
        read_reflections(tmp_path / "none.refl")
