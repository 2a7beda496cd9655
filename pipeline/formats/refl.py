"""DIALS reflection files (``.refl``): msgpack reflection tables, read and written with numpy.

Layout (DIALS ``reflection_table_msgpack_adapter.h``): a msgpack array
``["dials::af::reflection_table", version, {"identifiers": {id: uuid}, "nrows": N,
"data": {name: [type, [N, <bin>]]}}]``. Each column is the raw little-endian dump of its N
elements; ``Shoebox<>`` columns are one binary blob of per-row records: uint32 panel, six int32
bbox values, a uint8 marker (0 no data; 1 float32 data, int32 mask, float32 background; 2 the
same with a uint8 mask) and the three voxel arrays. Version 1 files (DIALS ≤ 3.8, including 3.5)
use marker 1, version 2 files marker 2.

Columns are read with ``np.frombuffer`` (no per-row Python); shoebox records are scanned by a
numba kernel. Each column keeps its DIALS type name in ``table.column_types`` so that a table
read and written back gives the same bytes; types of new columns are inferred from the column
name (DIALS' standard columns) and the array's dtype and shape.

``std::string`` columns are written as a msgpack array of strings. DIALS declares the type but
has no msgpack adapter for it (its reader expects binary data), so files meant for DIALS should
not carry string columns.
"""
from __future__ import annotations

from pathlib import Path

import msgpack
import numba
import numpy as np

from algorithms.reflection_table import ReflectionTable
from algorithms.shoebox import Shoeboxes, bbox_shapes
from pipeline.errors import InputFileError
from pipeline.formats.expt import write_bytes_atomically

FILE_TYPE = "dials::af::reflection_table"
DEFAULT_VERSION = 1  # what DIALS 3.5 reads; current DIALS reads 1 and 2

# DIALS type name -> (little-endian numpy dtype, shape of one element)
COLUMN_TYPES: dict[str, tuple[str, tuple[int, ...]]] = {
    "bool": ("|b1", ()),
    "int": ("<i4", ()),
    "std::size_t": ("<u8", ()),
    "double": ("<f8", ()),
    "vec2<double>": ("<f8", (2,)),
    "vec3<double>": ("<f8", (3,)),
    "mat3<double>": ("<f8", (3, 3)),
    "int6": ("<i4", (6,)),
    "cctbx::miller::index<>": ("<i4", (3,)),
}
STRING_TYPE = "std::string"
SHOEBOX_TYPE = "Shoebox<>"

# Types of DIALS' standard columns whose dtype alone would be ambiguous (e.g. int64 arrays).
KNOWN_COLUMN_TYPES = {
    "miller_index": "cctbx::miller::index<>",
    "bbox": "int6",
    "flags": "std::size_t",
    "id": "int",
    "panel": "std::size_t",
    "entering": "bool",
    "s1": "vec3<double>",
    "rlp": "vec3<double>",
    "imageset_id": "int",
    "partial_id": "std::size_t",
    "original_index": "std::size_t",
    "n_signal": "int",
    "batch": "int",
    "shoebox": SHOEBOX_TYPE,
}
_KNOWN_PREFIXES = {"xyz": "vec3<double>", "num_pixels.": "int"}

_SHOEBOX_HEADER_BYTES = 4 + 6 * 4 + 1


# ------------------------------------------------------------------------------------- reading


def read_reflections(path) -> ReflectionTable:
    """Read a DIALS ``.refl`` file (msgpack, version 1 or 2) into a :class:`ReflectionTable`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read the reflection file ({e.strerror or e}); check the path") from None
    return reflections_from_bytes(raw, source=str(path))


def _not_a_table(source: str, raw: bytes, detail: str) -> InputFileError:
    if raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        detail = (
            "it is a Python pickle (the reflection format of DIALS before 2.0); convert it with a recent DIALS: "
            "dials.python -c \"from dials.array_family import flex; "
            "flex.reflection_table.from_file('old.refl').as_file('new.refl')\""
        )
    return InputFileError(
        f"{source}: not a DIALS reflection file (expected a msgpack array starting with '{FILE_TYPE}'): {detail}"
    )


def reflections_from_bytes(raw: bytes, source: str = "<bytes>") -> ReflectionTable:
    """Decode the bytes of a ``.refl`` file; ``source`` names it in error messages."""
    try:
        document = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated exception types on garbage
        raise _not_a_table(source, raw, f"msgpack cannot decode it ({type(e).__name__})") from None
    if not (isinstance(document, list) and len(document) == 3 and document[0] == FILE_TYPE):
        raise _not_a_table(source, raw, "the first msgpack item is not that array")
    version, header = document[1], document[2]
    if version not in (1, 2):
        raise InputFileError(f"{source}: reflection-table format version {version!r}; ewald reads versions 1 and 2")
    if not isinstance(header, dict) or "nrows" not in header or not isinstance(header.get("data"), dict):
        raise InputFileError(f"{source}: the reflection table has no 'nrows' or no 'data' map; the file is damaged")
    nrows = header["nrows"]
    identifiers = {int(k): str(v) for k, v in (header.get("identifiers") or {}).items()}
    columns, types = {}, {}
    for name, entry in header["data"].items():
        try:
            type_name, (n, payload) = entry
        except (TypeError, ValueError):
            raise InputFileError(f"{source}: column '{name}' is not [type, [n, data]]; the file is damaged") from None
        if n != nrows:
            raise InputFileError(f"{source}: column '{name}' has {n} rows but the table has {nrows}; the file is damaged")
        columns[name] = _decode_column(source, name, type_name, nrows, payload)
        types[name] = type_name
    if not columns and nrows:
        raise InputFileError(f"{source}: the table says {nrows} rows but has no columns")
    table = ReflectionTable(columns, identifiers)
    table.column_types = types
    return table


def _decode_column(source: str, name: str, type_name: str, nrows: int, payload):
    if type_name in COLUMN_TYPES:
        dtype, shape = COLUMN_TYPES[type_name]
        expected = nrows * np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
        if not isinstance(payload, bytes) or len(payload) != expected:
            size = len(payload) if isinstance(payload, (bytes, list)) else "no"
            raise InputFileError(
                f"{source}: column '{name}' ({type_name}) holds {size} bytes, {nrows} rows need {expected}; the file is damaged"
            )
        # A copy: frombuffer views of the msgpack bytes would be read-only.
        return np.frombuffer(payload, dtype=dtype).reshape((nrows,) + shape).astype(np.dtype(dtype).newbyteorder("="))
    if type_name == STRING_TYPE:
        if not (isinstance(payload, list) and len(payload) == nrows):
            raise InputFileError(f"{source}: string column '{name}' is not a list of {nrows} strings")
        return np.array(payload, dtype=object)
    if type_name == SHOEBOX_TYPE:
        if not isinstance(payload, bytes):
            raise InputFileError(f"{source}: shoebox column '{name}' is not binary data; the file is damaged")
        return _decode_shoeboxes(source, name, payload, nrows)
    raise InputFileError(
        f"{source}: column '{name}' has type '{type_name}', which ewald cannot read "
        f"(it reads {', '.join(list(COLUMN_TYPES) + [STRING_TYPE, SHOEBOX_TYPE])}); delete the column with DIALS first"
    )


@numba.njit(cache=True, nogil=True)
def _u32(blob, pos):
    return np.int64(blob[pos]) | (np.int64(blob[pos + 1]) << 8) | (np.int64(blob[pos + 2]) << 16) | (np.int64(blob[pos + 3]) << 24)


@numba.njit(cache=True, nogil=True)
def _scan_shoebox_records(blob, nrows):
    """Headers of the shoebox records: panel, bbox, marker, start of the voxel arrays.

    Returns also the end position and the first bad row (-1 if none)."""
    panel = np.empty(nrows, np.uint32)
    bbox = np.empty((nrows, 6), np.int32)
    marker = np.empty(nrows, np.uint8)
    start = np.empty(nrows, np.int64)
    nvox = np.zeros(nrows, np.int64)
    pos = 0
    n = blob.shape[0]
    for i in range(nrows):
        if pos + 29 > n:
            return panel, bbox, marker, start, nvox, pos, i
        panel[i] = _u32(blob, pos)
        for k in range(6):
            v = _u32(blob, pos + 4 + 4 * k)
            bbox[i, k] = v - (np.int64(1) << 32) if v >= (np.int64(1) << 31) else v
        marker[i] = blob[pos + 28]
        pos += 29
        start[i] = pos
        if marker[i] == 0:
            continue
        if marker[i] > 2:
            return panel, bbox, marker, start, nvox, pos, i
        nz = np.int64(bbox[i, 5]) - bbox[i, 4]
        ny = np.int64(bbox[i, 3]) - bbox[i, 2]
        nx = np.int64(bbox[i, 1]) - bbox[i, 0]
        if nz < 0 or ny < 0 or nx < 0:
            return panel, bbox, marker, start, nvox, pos, i
        nvox[i] = nz * ny * nx
        pos += nvox[i] * (8 + (4 if marker[i] == 1 else 1))
    return panel, bbox, marker, start, nvox, pos, -1


@numba.njit(cache=True, nogil=True)
def _gather_shoebox_voxels(blob, marker, start, nvox, offsets, data_bytes, mask, background_bytes):
    for i in range(marker.shape[0]):
        m = nvox[i]
        if marker[i] == 0 or m == 0:
            continue
        src = start[i]
        dst = offsets[i]
        data_bytes[4 * dst : 4 * (dst + m)] = blob[src : src + 4 * m]
        src += 4 * m
        if marker[i] == 1:
            for k in range(m):
                v = _u32(blob, src + 4 * k)
                mask[dst + k] = v - (np.int64(1) << 32) if v >= (np.int64(1) << 31) else v
            src += 4 * m
        else:
            for k in range(m):
                mask[dst + k] = blob[src + k]
            src += m
        background_bytes[4 * dst : 4 * (dst + m)] = blob[src : src + 4 * m]


def _decode_shoeboxes(source: str, name: str, payload: bytes, nrows: int) -> Shoeboxes:
    blob = np.frombuffer(payload, dtype=np.uint8)
    panel, bbox, marker, start, nvox, end, bad = _scan_shoebox_records(blob, nrows)
    if bad >= 0 or end != len(blob):
        where = f"row {bad}" if bad >= 0 else f"the end ({end} of {len(blob)} bytes used)"
        raise InputFileError(f"{source}: shoebox column '{name}' is inconsistent at {where}; the file is damaged")
    has_data = marker != 0
    offsets = np.zeros(nrows + 1, dtype=np.int64)
    np.cumsum(np.where(has_data, nvox, 0), out=offsets[1:])
    total = int(offsets[-1])
    data_bytes = np.empty(4 * total, np.uint8)
    background_bytes = np.empty(4 * total, np.uint8)
    mask = np.empty(total, np.int32)
    _gather_shoebox_voxels(blob, marker, start, nvox, offsets, data_bytes, mask, background_bytes)
    # Masks keep the width they were stored with, so that writing back gives the same bytes.
    mask_dtype = np.int32 if np.any(marker == 1) or not np.any(marker == 2) else np.uint8
    return Shoeboxes(
        panel,
        bbox,
        offsets,
        data_bytes.view("<f4").astype(np.float32),
        mask.astype(mask_dtype),
        background_bytes.view("<f4").astype(np.float32),
        has_data,
    )


# ------------------------------------------------------------------------------------- writing


def write_reflections(table: ReflectionTable, path, version: int | None = None) -> None:
    """Write ``table`` as a DIALS ``.refl`` file, atomically (temporary file, then rename).

    ``version`` 1 (the default; DIALS 3.5 reads only this) stores shoebox masks as int32,
    version 2 as uint8.
    """
    write_bytes_atomically(path, reflections_to_bytes(table, version))


def reflections_to_bytes(table: ReflectionTable, version: int | None = None) -> bytes:
    version = DEFAULT_VERSION if version is None else version
    if version not in (1, 2):
        raise ValueError(f"reflection-table format version must be 1 or 2, got {version}")
    nrows = len(table)
    data = {}
    for name in sorted(table.keys()):  # DIALS keeps columns in a std::map: sorted by name
        values = table[name]
        type_name = column_type(name, values, table.column_types.get(name))
        data[name] = [type_name, [nrows, _encode_column(name, type_name, values, version)]]
    identifiers = {int(k): str(v) for k, v in sorted(table.experiment_identifiers.items())}
    document = [FILE_TYPE, version, {"identifiers": identifiers, "nrows": nrows, "data": data}]
    return msgpack.packb(document, use_bin_type=True)


def _fits(type_name: str, values) -> bool:
    """Whether ``values`` can be stored as ``type_name`` without changing what they mean."""
    if type_name == SHOEBOX_TYPE:
        return isinstance(values, Shoeboxes)
    if not isinstance(values, np.ndarray):
        return False
    if type_name == STRING_TYPE:
        return values.ndim == 1 and values.dtype.kind in "OUS"
    dtype, shape = COLUMN_TYPES[type_name]
    kind = np.dtype(dtype).kind
    if values.dtype.kind == "b":
        ok_kind = kind == "b"
    elif values.dtype.kind in "iu":
        ok_kind = kind in "iu"
    else:
        ok_kind = values.dtype.kind == kind
    element = values.shape[1:]
    return ok_kind and (element == shape or (shape == (3, 3) and element == (9,)))


def column_type(name: str, values, stored: str | None = None) -> str:
    """The DIALS type name for a column: as read if still valid, else by name, else by dtype/shape."""
    if stored is not None and (stored in COLUMN_TYPES or stored in (STRING_TYPE, SHOEBOX_TYPE)) and _fits(stored, values):
        return stored
    known = KNOWN_COLUMN_TYPES.get(name) or next((t for p, t in _KNOWN_PREFIXES.items() if name.startswith(p)), None)
    if known is not None and _fits(known, values):
        return known
    if isinstance(values, Shoeboxes):
        return SHOEBOX_TYPE
    values = np.asarray(values)
    kind, element = values.dtype.kind, values.shape[1:]
    if kind == "b" and element == ():
        return "bool"
    if kind in "OUS" and element == ():
        return STRING_TYPE
    if kind in "iu":
        by_shape = {(): "std::size_t" if kind == "u" else "int", (3,): "cctbx::miller::index<>", (6,): "int6"}
        if element in by_shape:
            return by_shape[element]
    if kind == "f":
        by_shape = {(): "double", (2,): "vec2<double>", (3,): "vec3<double>", (3, 3): "mat3<double>", (9,): "mat3<double>"}
        if element in by_shape:
            return by_shape[element]
    raise ValueError(f"column '{name}': no DIALS column type holds {values.dtype} values of shape {values.shape}")


def _encode_column(name: str, type_name: str, values, version: int):
    if type_name == SHOEBOX_TYPE:
        return _encode_shoeboxes(values, version)
    if type_name == STRING_TYPE:
        return [str(v) for v in values]
    dtype, shape = COLUMN_TYPES[type_name]
    values = np.asarray(values)
    target = np.dtype(dtype)
    if values.dtype.kind in "iu" and target.kind in "iu" and values.size:
        info = np.iinfo(target)
        lo, hi = values.min(), values.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"column '{name}': values {lo}..{hi} do not fit DIALS type {type_name}")
    return np.ascontiguousarray(values.reshape((len(values),) + shape), dtype=target).tobytes()


@numba.njit(cache=True, nogil=True)
def _pack_shoebox_records(panel, bbox, nvox, record_start, offsets, data_bytes, mask, background_bytes, marker, out):
    for i in range(panel.shape[0]):
        pos = record_start[i]
        p = np.int64(panel[i])
        for b in range(4):
            out[pos + b] = (p >> (8 * b)) & 0xFF
        for k in range(6):
            v = np.int64(bbox[i, k]) & 0xFFFFFFFF
            for b in range(4):
                out[pos + 4 + 4 * k + b] = (v >> (8 * b)) & 0xFF
        m = nvox[i]
        if m == 0:
            out[pos + 28] = 0
            continue
        out[pos + 28] = marker
        pos += 29
        src = offsets[i]
        out[pos : pos + 4 * m] = data_bytes[4 * src : 4 * (src + m)]
        pos += 4 * m
        if marker == 1:
            for k in range(m):
                v = np.int64(mask[src + k]) & 0xFFFFFFFF
                for b in range(4):
                    out[pos + 4 * k + b] = (v >> (8 * b)) & 0xFF
            pos += 4 * m
        else:
            for k in range(m):
                out[pos + k] = mask[src + k]
            pos += m
        out[pos : pos + 4 * m] = background_bytes[4 * src : 4 * (src + m)]


def _encode_shoeboxes(shoeboxes: Shoeboxes, version: int) -> bytes:
    marker = 1 if version == 1 else 2
    mask = shoeboxes.mask
    if marker == 2 and mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError("shoebox mask values outside 0..255 cannot be written in reflection-file version 2; use version 1")
    if np.any(bbox_shapes(shoeboxes.bbox) < 0):
        raise ValueError("a shoebox bbox has x1 < x0, y1 < y0 or z1 < z0; DIALS cannot read it")
    nvox = np.diff(shoeboxes.offsets)
    record_size = _SHOEBOX_HEADER_BYTES + nvox * (8 + (4 if marker == 1 else 1))
    record_start = np.zeros(len(shoeboxes) + 1, dtype=np.int64)
    np.cumsum(record_size, out=record_start[1:])
    out = np.empty(int(record_start[-1]), dtype=np.uint8)
    _pack_shoebox_records(
        shoeboxes.panel,
        shoeboxes.bbox,
        nvox,
        record_start,
        shoeboxes.offsets,
        np.ascontiguousarray(shoeboxes.data, dtype="<f4").view(np.uint8),
        mask.astype(np.int32) if marker == 1 else mask.astype(np.uint8),
        np.ascontiguousarray(shoeboxes.background, dtype="<f4").view(np.uint8),
        marker,
        out,
    )
    return out.tobytes()
