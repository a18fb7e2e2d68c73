"""The one exception type for user mistakes.

The command line catches :class:`BoltzflowError` and prints its message as one line with a non-zero exit; anything
else is a bug in boltzflow and keeps its traceback.
"""


class BoltzflowError(ValueError):
    """A user mistake: bad config, unknown preset, wrong shapes, a log density that returns NaN, ..."""


def check_batch(x, dim: int, what: str = "x") -> None:
    """Raise a one-line :class:`BoltzflowError` unless ``x`` has shape ``(n, dim)``."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != dim:
        raise BoltzflowError(f"{what} must have shape (n, {dim}), got {shape}")
