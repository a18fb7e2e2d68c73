"""Checkpoints that survive a kill at any moment, and reading them back to resume: the one mechanism of every
resumable run (boltzflow.train.loop's training, boltzflow.molecules.md's replica exchange), each caller keeping
its own file formats.

- :func:`write_atomic`: a file is replaced all or nothing: written to ``NAME.tmp`` beside it, flushed to disk and
  renamed over it (``os.replace``, atomic on POSIX), so a reader sees the previous file or the new one, never a
  part; if writing fails (a full disk) the temporary file is removed, the previous file is left as it was, and the
  error is raised.
- :func:`read_checkpoint`: a checkpoint is a pair, a state file (arrays, in the caller's format) and a JSON info
  file; a run resumes from it only when both are there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Callable, TypeVar

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
    return load(state_path), json.loads(info_path.read_text())
