"""A small NRRD reader and writer (numpy + standard library) for volumes on a known grid.

Arrays are indexed (k, j, i) like Slicer's ``arrayFromVolume``, optionally with a last axis of
components; the geometry is a 4x4 IJK-to-RAS matrix (column i, row j, slice k) like Slicer's
``GetIJKToRASMatrix``. Files may say their space is RAS or LPS: both are read and written exactly.
"""

from __future__ import annotations

import bz2
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Union

import numpy as np

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""LPS and RAS differ by the sign of x and y; the matrix is its own inverse."""

_SPACES = {
    "right-anterior-superior": "RAS",
    "ras": "RAS",
    "left-posterior-superior": "LPS",
    "lps": "LPS",
}
_SPACE_NAMES = {"RAS": "right-anterior-superior", "LPS": "left-posterior-superior"}

# NRRD type names (all the spellings the format allows) → numpy dtype without byte order.
_TYPES = {}
for _names, _dtype in (
    (("signed char", "int8", "int8_t"), "i1"),
    (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    (("int", "signed int", "int32", "int32_t"), "i4"),
    (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"), "i8"),
    (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    (("float",), "f4"),
    (("double",), "f8"),
):
    for _name in _names:
        _TYPES[_name] = _dtype
_WRITE_TYPES = {
    "i1": "signed char", "u1": "unsigned char", "i2": "short", "u2": "unsigned short", "i4": "int",
    "u4": "unsigned int", "i8": "long long", "u8": "unsigned long long", "f4": "float", "f8": "double",
}
_VECTOR = re.compile(r"\(([^)]*)\)")


class NrrdError(ValueError):
    """The bytes are not an NRRD this reader supports; the message says what was found."""


@dataclass
class NrrdImage:
    """A volume read from NRRD: ``array`` (k, j, i[, c]) and its IJK-to-RAS matrix."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    fields: Dict[str, str] = field(default_factory=dict)
    key_values: Dict[str, str] = field(default_factory=dict)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        return RAS_FROM_LPS @ self.ijk_to_ras


def _number(value: float) -> str:
    """repr() of a float is the shortest text that reads back to the same double: no rounding."""
    text = repr(float(value))
    return "0" if text in ("0.0", "-0.0") else text


def _vector(values) -> str:
    return "(" + ",".join(_number(v) for v in values) + ")"


def nrrd_header(
    shape,
    dtype,
    ijk_to_ras: np.ndarray,
    *,
    space: str = "RAS",
    key_values: Optional[Dict[str, str]] = None,
) -> bytes:
    """The header of a raw-encoded NRRD of an array of ``shape`` (k, j, i[, c]) and ``dtype``; the
    little-endian voxels follow it in (k, j, i[, c]) order."""
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(np.uint8 if np.dtype(dtype) == np.bool_ else dtype)
    if len(shape) not in (3, 4):
        raise ValueError(f"array must be (k, j, i) or (k, j, i, components), got shape {shape}")
    kind = dtype.str[1:]
    if kind not in _WRITE_TYPES:
        raise ValueError(f"NRRD cannot hold dtype {dtype}")
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"ijk_to_ras must be 4x4, got {matrix.shape}")
    space = space.upper()
    if space not in _SPACE_NAMES:
        raise ValueError(f"space must be RAS or LPS, got {space!r}")
    if space == "LPS":
        matrix = RAS_FROM_LPS @ matrix

    directions = [_vector(matrix[:3, axis]) for axis in range(3)]
    sizes = [shape[2], shape[1], shape[0]]
    kinds = ["domain"] * 3
    if len(shape) == 4:  # components vary fastest in (k, j, i, c) order, so they are NRRD's first axis
        sizes.insert(0, shape[3])
        directions.insert(0, "none")
        kinds.insert(0, "vector")
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at: http://teem.sourceforge.net/nrrd/format.html",
        f"type: {_WRITE_TYPES[kind]}",
        f"dimension: {len(shape)}",
        f"space: {_SPACE_NAMES[space]}",
        "sizes: " + " ".join(str(int(s)) for s in sizes),
        "space directions: " + " ".join(directions),
        "kinds: " + " ".join(kinds),
        "endian: little",
        "encoding: raw",
        f"space origin: {_vector(matrix[:3, 3])}",
    ]
    for key, value in (key_values or {}).items():
        if ":=" in key or "\n" in key or "\n" in str(value):
            raise ValueError(f"key/value {key!r} cannot be written in an NRRD header")
        lines.append(f"{key}:={value}")
    return ("\n".join(lines) + "\n\n").encode("ascii")


def _little_endian_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def nrrd_bytes(
    array: np.ndarray,
    ijk_to_ras: np.ndarray,
    *,
    space: str = "RAS",
    key_values: Optional[Dict[str, str]] = None,
) -> bytes:
    """Raw-encoded NRRD of ``array`` (k, j, i) or (k, j, i, c) with its IJK-to-RAS geometry.

    ``space`` chooses how the geometry is written ("RAS", Slicer's world, or "LPS", DICOM's); both
    describe the same place. Booleans are written as unsigned char.
    """
    array = np.asarray(array)
    return nrrd_header(array.shape, array.dtype, ijk_to_ras, space=space, key_values=key_values) + _little_endian_bytes(array)


class NrrdSlabWriter:
    """Writes a raw NRRD a few slices at a time, so a GUI can spread a large slab over many short steps.

    The file is written under a temporary name and renamed into place by `close`; nothing half-written
    carries the final name."""

    def __init__(self, path: Union[str, Path], shape, dtype, ijk_to_ras: np.ndarray, **options):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.written = 0
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._partial, "wb")
        self._file.write(nrrd_header(self.shape, self.dtype, ijk_to_ras, **options))

    def write(self, slices: np.ndarray) -> None:
        """The next slices, (n, j, i[, c]) in the writer's dtype."""
        slices = np.asarray(slices)
        if slices.shape[1:] != self.shape[1:] or self.written + slices.shape[0] > self.shape[0]:
            raise ValueError(f"slices of shape {slices.shape} do not continue a slab of shape {self.shape} "
                             f"after {self.written} slices")
        self._file.write(_little_endian_bytes(slices.astype(self.dtype, copy=False)))
        self.written += slices.shape[0]

    def close(self) -> Path:
        self._file.close()
        if self.written != self.shape[0]:
            self._partial.unlink()
            raise ValueError(f"{self.path}: {self.written} of {self.shape[0]} slices written")
        self._partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        if self._partial.exists():
            self._partial.unlink()


def write_nrrd(path: Union[str, Path], array: np.ndarray, ijk_to_ras: np.ndarray, **options) -> Path:
    path = Path(path)
    path.write_bytes(nrrd_bytes(array, ijk_to_ras, **options))
    return path


def read_nrrd(source: Union[str, Path, bytes, BinaryIO]) -> NrrdImage:
    """Read an attached-header NRRD (raw, gzip or bzip2) of 3 space axes, plus an optional component axis."""
    if isinstance(source, (str, Path)):
        data = Path(source).read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        data = source.read()
    if not data.startswith(b"NRRD000"):
        raise NrrdError(f"not an NRRD file (starts with {data[:8]!r})")

    # 1. Header lines up to the first empty line
    fields: Dict[str, str] = {}
    key_values: Dict[str, str] = {}
    stream = io.BytesIO(data)
    stream.readline()  # magic
    while True:
        raw = stream.readline()
        if not raw:
            raise NrrdError("the header never ends (no empty line before the data)")
        line = raw.decode("latin-1").rstrip("\r\n")
        if line == "":
            break
        if line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            key_values[key] = value
        elif ": " in line:
            key, value = line.split(": ", 1)
            fields[key.strip().lower()] = value.strip()
        else:
            raise NrrdError(f"unreadable header line {line!r}")
    payload = data[stream.tell():]

    # 2. What the data is
    if "data file" in fields or "datafile" in fields:
        raise NrrdError("detached-header NRRD (data file) is not supported; save as a single .nrrd file")
    type_name = fields.get("type", "").lower()
    if type_name not in _TYPES:
        raise NrrdError(f"unsupported NRRD type {fields.get('type')!r}")
    dimension = int(fields.get("dimension", "0"))
    sizes = [int(s) for s in fields.get("sizes", "").split()]
    if len(sizes) != dimension or dimension not in (2, 3, 4):
        raise NrrdError(f"expected 2 to 4 axes with sizes, got dimension {dimension} and sizes {sizes}")
    endian = fields.get("endian", "little").lower()
    dtype = np.dtype(("<" if endian == "little" else ">") + _TYPES[type_name])
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        payload = gzip.decompress(payload)
    elif encoding in ("bzip2", "bz2"):
        payload = bz2.decompress(payload)
    elif encoding != "raw":
        raise NrrdError(f"unsupported NRRD encoding {encoding!r} (raw, gzip and bzip2 are read)")
    skip = int(fields.get("byte skip", "0"))
    count = int(np.prod(sizes))
    if skip == -1:
        payload = payload[len(payload) - count * dtype.itemsize:]
    else:
        payload = payload[skip:]
    if len(payload) < count * dtype.itemsize:
        raise NrrdError(f"data is {len(payload)} bytes, the header announces {count * dtype.itemsize}")
    flat = np.frombuffer(payload, dtype=dtype, count=count).astype(dtype.newbyteorder("="))

    # 3. Axes: one optional leading component axis, then space axes i, j (and k)
    directions = _directions(fields.get("space directions"), dimension)
    component_axes = [axis for axis, d in enumerate(directions) if d is None]
    if component_axes not in ([], [0]):
        raise NrrdError("only a leading component axis is supported besides the space axes")
    components = sizes[0] if component_axes else None
    space_sizes = sizes[1:] if component_axes else sizes
    space_directions = [d for d in directions if d is not None]
    if len(space_sizes) == 2:  # a single slice: add a unit k axis normal to the plane
        space_sizes = space_sizes + [1]
        if space_directions:
            normal = np.cross(space_directions[0], space_directions[1])
            space_directions.append(normal / np.linalg.norm(normal))
    if len(space_sizes) != 3:
        raise NrrdError(f"expected 2 or 3 space axes, got {len(space_sizes)}")
    shape = (space_sizes[2], space_sizes[1], space_sizes[0]) + ((components,) if components else ())
    array = flat.reshape(shape)

    # 4. Geometry, brought into RAS
    matrix = np.eye(4)
    if space_directions:
        for axis, direction in enumerate(space_directions):
            matrix[:3, axis] = direction
    elif "spacings" in fields:
        spacings = [float(s) for s in fields["spacings"].split() if s.lower() != "nan"]
        matrix[:3, :3] = np.diag((spacings + [1.0, 1.0, 1.0])[:3])
    if "space origin" in fields:
        matrix[:3, 3] = _parse_vector(fields["space origin"])
    space = _SPACES.get(fields.get("space", "").lower())
    if space is None and ("space" in fields or "space directions" in fields):
        raise NrrdError(f"unsupported NRRD space {fields.get('space')!r}; RAS and LPS are supported")
    if space == "LPS":
        matrix = RAS_FROM_LPS @ matrix
    return NrrdImage(array=array, ijk_to_ras=matrix, fields=fields, key_values=key_values)


def _directions(text: Optional[str], dimension: int) -> List[Optional[np.ndarray]]:
    if text is None:
        return []
    tokens = re.findall(r"\([^)]*\)|none", text)
    if len(tokens) != dimension:
        raise NrrdError(f"'space directions' has {len(tokens)} entries for {dimension} axes")
    return [None if token == "none" else _parse_vector(token) for token in tokens]


def _parse_vector(text: str) -> np.ndarray:
    match = _VECTOR.search(text)
    if not match:
        raise NrrdError(f"expected a vector like (1,0,0), got {text!r}")
    values = [float(v) for v in match.group(1).split(",")]
    if len(values) != 3:
        raise NrrdError(f"expected a 3-D vector, got {text!r}")
    return np.array(values)
