"""Checkpoints that survive a kill at any moment, and reading them back to resume: the one mechanism of every
resumable run (boltzflow.train.loop's training, boltzflow.molecules.md's replica exchange), each caller keeping
its own file formats.

- :func:`write_atomic`: a file is replaced all or nothing: written to ``NAME.tmp`` beside it, flushed to disk and
  renamed over it (``os.replace``, atomic on POSIX), so a reader sees the previous file or the new one, never a
  part; if writing fails (a full disk) the temporary file is removed, the previous file is left as it was, and the
  error is raised.
- :func:`read_checkpoint`: a checkpoint is a pair, a state file (arrays, in the caller's format) and a JSON info
  file; a run resumes from it only when both are there. :func:`read_info` reads a JSON info file, a file cut short
  or corrupt being a one-line error naming it; :func:`stored_arrays` lists the arrays of a file of ``.npy`` records
  (an equinox checkpoint) without reading them, and says whether it is cut short.
- :func:`check_writable`: fail before any work, with the error the write would meet, where a file cannot be written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Callable, TypeVar

import numpy as np

from boltzflow.errors import BoltzflowError

T = TypeVar("T")


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` by what ``write(file)`` writes to a binary file, all or nothing (module docstring)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: the previous file stays, with no temporary beside it
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    """:func:`write_atomic` of ``obj`` as indented JSON."""
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def read_checkpoint(state_path: str | Path, info_path: str | Path,
                    load: Callable[[Path], T]) -> tuple[T, dict] | None:
    """``(load(state_path), info)``, the checkpointed state and the JSON in ``info_path``; None unless both files
    are there (a run that has not written its first checkpoint starts afresh)."""
    state_path, info_path = Path(state_path), Path(info_path)
    if not (state_path.exists() and info_path.exists()):
        return None
    return load(state_path), read_info(info_path)


def read_info(path: str | Path) -> dict:
    """The JSON object in ``path``; a one-line :class:`BoltzflowError` naming the file if it is cut short or
    corrupt (the JSON error chained)."""
    path = Path(path)
    try:
        info = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise BoltzflowError(f"{path} is unreadable, truncated or corrupt ({e})") from e
    if not isinstance(info, dict):
        raise BoltzflowError(f"{path} is corrupt: it holds a JSON {type(info).__name__}, not an object")
    return info


def stored_arrays(path: str | Path) -> tuple[list[tuple[tuple, np.dtype]], str | None]:
    """The shape and dtype of each ``.npy`` record of ``path`` (equinox's ``tree_serialise_leaves`` writes one per
    array, in order), read from their headers only; and what is wrong with the file after them: None,
    ``"truncated"`` (it ends inside a record) or ``"corrupt"`` (bytes that are no record)."""
    fmt, arrays = np.lib.format, []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while f.tell() < size:
            try:
                version = fmt.read_magic(f)
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read_header(f)
            except ValueError as e:  # numpy's messages for a file that ends inside a header start with EOF
                return arrays, "truncated" if str(e).startswith("EOF") else "corrupt"
            end = f.tell() + math.prod(shape) * dtype.itemsize
            if end > size:
                return arrays, "truncated"
            arrays.append((tuple(shape), dtype))
            f.seek(end)
    return arrays, None


def check_writable(path: str | Path) -> None:
    """Raise the OSError that writing ``path`` by :func:`write_atomic` would meet (a read-only or missing place):
    its directory is created if missing, and its temporary file created and removed there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb"):
        pass
    tmp.unlink()
