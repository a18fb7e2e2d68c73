import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# the suite runs in two worker processes (pyproject's addopts): on a GPU neither may take 75 % of its memory up front
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# The default run (-m 'not slow', what CI runs) is compile-bound: most tests trace and compile small programs once and
# run them for milliseconds. So (1) there XLA's CPU code is compiled without LLVM's optimisations and with XLA's
# older fusion code generator (the same computations, compiled faster and run slower: with both, 30 % less time on
# seven of the test files, 15-45 % on the documentation's examples, which are sized to compile more than they run;
# not in the slow run, whose statistical tests are run-time-bound), and (2) compiled programs are shared through a
# compilation cache in a fresh directory of this run, which the workers and the subprocesses the tests start
# inherit. A user's own XLA_FLAGS or cache directory is kept as it is. (Both are flags of the pinned jaxlib: XLA
# stops at a flag it does not know, so a jax upgrade checks them.)
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="boltzflow-tests-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_configure(config):
    """Before any JAX backend starts (module comment above): the compile settings of the default run."""
    if "XLA_FLAGS" not in os.environ and config.option.markexpr == "not slow":
        os.environ["XLA_FLAGS"] = SUITE_XLA_FLAGS


# user-target modules used by the CLI tests live next to the tests
sys.path.insert(0, str(Path(__file__).parent / "data"))


def make_method(name, target, optimizer, batch_size=64, **options):
    """A training method by name with ``options`` checked as a config's method section would be."""
    from boltzflow.settings import parse
    from boltzflow.train.api import Problem
    from boltzflow.train.registry import METHODS

    entry = METHODS[name]
    return entry.build(parse(entry.settings, options, f"method {name}"), Problem(target, batch_size, optimizer))


@pytest.fixture()
def saved(monkeypatch):
    """Every figure saved while the test runs (the plot functions close their figures and return only a path)."""
    import matplotlib.figure

    figures = []
    original = matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return figures


def openmm_reference(molecule, x, groups=None):
    """Energies (kJ/mol, (n,)) and forces (kJ/mol/nm, (n, N, 3)) of conformations (n, N, 3) from one Context on
    OpenMM's Reference platform (float64). ``molecule``: a boltzflow MolecularSystem or an openmm.System; ``groups``:
    the force groups to evaluate (all by default)."""
    import openmm

    system = molecule.openmm_system() if hasattr(molecule, "openmm_system") else molecule
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for xi in x:
        context.setPositions(xi)
        state = context.getState(getEnergy=True, getForces=True, **({} if groups is None else {"groups": groups}))
        energies.append(state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole
                                                                  / openmm.unit.nanometer))
    return np.asarray(energies), np.asarray(forces)
