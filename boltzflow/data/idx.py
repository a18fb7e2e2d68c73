"""A reader of IDX files, the format of MNIST and Fashion-MNIST (gzipped or not).

An IDX file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, then NDIM big-endian uint32 sizes, then the
values, big-endian, row-major. TYPE is 0x08 (uint8), 0x09 (int8), 0x0B (int16), 0x0C (int32), 0x0D (float32) or
0x0E (float64). A file that starts with the gzip magic ``1f 8b`` is read through gzip whatever its name.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from boltzflow.errors import BoltzflowError

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """The array stored in the IDX file ``path``; a one-line error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise BoltzflowError(f"IDX file {str(path)!r} not found")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise BoltzflowError(f"IDX file {str(path)!r}: broken gzip stream ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _TYPES or raw[3] == 0:
        raise BoltzflowError(f"IDX file {str(path)!r}: not an IDX file (magic {raw[:4].hex() or 'missing'})")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise BoltzflowError(f"IDX file {str(path)!r}: header cut short ({len(raw)} bytes for {ndim} sizes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise BoltzflowError(f"IDX file {str(path)!r}: {len(raw)} bytes, expected {expected} for shape {shape} of "
                             f"{dtype.name}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array) -> Path:
    """Write ``array`` as an IDX file (gzipped if ``path`` ends in .gz): the reader's inverse, for tests and for
    users who make their own data sets."""
    a = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    if a.dtype not in codes or a.ndim < 1:
        raise BoltzflowError(f"IDX stores 1-D or higher arrays of {sorted(str(d) for d in codes)}, got {a.dtype} "
                             f"with shape {a.shape}")
    raw = (bytes([0, 0, codes[a.dtype], a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
           + a.astype(a.dtype.newbyteorder(">")).tobytes())
    p = Path(path)
    p.write_bytes(gzip.compress(raw) if p.suffix == ".gz" else raw)
    return p
