"""The one exception type for user mistakes.

The command line catches :class:`BoltzflowError` and prints its message as one line with a non-zero exit; anything
else is a bug in boltzflow and keeps its traceback.
"""


class BoltzflowError(ValueError):
    """A user mistake: bad config, unknown preset, wrong shapes, a log density that returns NaN, ..."""
