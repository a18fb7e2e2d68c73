import sys
from pathlib import Path

# user-target modules used by the CLI tests live next to the tests
sys.path.insert(0, str(Path(__file__).parent / "data"))


def make_method(name, target, optimizer, batch_size=64, **options):
    """A training method by name with ``options`` checked as a config's method section would be."""
    from boltzflow.settings import parse
    from boltzflow.train.api import Problem
    from boltzflow.train.registry import METHODS

    entry = METHODS[name]
    return entry.build(parse(entry.settings, options, f"method {name}"), Problem(target, batch_size, optimizer))
