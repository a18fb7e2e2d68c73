"""Build a target from a spec: a preset name, a dict with keyword arguments, or a user's ``module:function``.

Accepted specs (:func:`make_target`):

- a preset name: ``"double_well"``, ``"many_well"`` (kwarg ``dim``, default 32; ``"many_well_50"`` is short for
  ``{"name": "many_well", "dim": 50}``), ``"gmm40"``, ``"gmm4"``, ``"funnel"`` (kwarg ``dim``), ``"smiley"``,
  ``"dog"``, ``"text"`` (kwarg ``text``), ``"dw4"``, ``"lj13"``, ``"lj55"`` (particles, kwarg ``pair_sum``),
  ``"aldp_implicit"``, ``"aldp_vacuum"``, ``"ace_ala3_nme_implicit"`` and
  ``"molecule"`` (kwargs ``temperature``, ``engine``, ...; see :class:`boltzflow.targets.molecule.MoleculeTarget`)
  -- see :func:`list_targets`;
- a dict ``{"name": PRESET, **kwargs}``; in any dict, ``rotation: SEED`` rotates the target by a fixed random
  rotation (:class:`~boltzflow.targets.rotated.Rotated`: same log Z, modes off the axes);
- ``"module:function"`` or ``{"function": "module:function", **kwargs}``: ``function(**kwargs)`` returns a
  :class:`Target` or a pair ``(log_prob, dim)`` with ``log_prob: (n, dim) -> (n,)``, wrapped in a validated
  :class:`FunctionTarget`. ``module`` is a dotted module name importable from ``sys.path`` (which this library
  leaves alone; the ``boltzflow`` command adds its working directory) or a path to a ``.py`` file
  (``path/to/my_target.py:make``);
- a :class:`Target` instance, returned as is.

Every user mistake raises :class:`BoltzflowError` with one line naming the problem. Where the problem is an
exception raised by the user's own code (importing their module, their function, their log density), that exception
is the error's ``__cause__``, with its traceback; our own checks (arguments, return values) raise ``from None``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from boltzflow.errors import BoltzflowError
from boltzflow.targets.base import Target
from boltzflow.targets.function import FunctionTarget
from boltzflow.targets.far_modes import far_modes
from boltzflow.targets.funnel import Funnel
from boltzflow.targets.gmm import GMM40, GaussianMixture
from boltzflow.targets.images import ImageTarget
from boltzflow.targets.molecule import MoleculeTarget
from boltzflow.targets.particles import dw4, lj13, lj55
from boltzflow.targets.rotated import Rotated
from boltzflow.targets.wells import DoubleWell, ManyWell


@dataclass(frozen=True)
class TargetInfo:
    """One preset: how to build it and what it knows."""

    name: str
    factory: Callable[..., Target]
    description: str
    log_z_known: bool
    exact_samples: bool


_PRESETS: dict[str, TargetInfo] = {}


def register_target(name: str, factory: Callable[..., Target], description: str, log_z_known: bool,
                    exact_samples: bool) -> None:
    """Add (or replace) a preset so that ``make_target(name)`` and ``boltzflow targets`` know it."""
    _PRESETS[name] = TargetInfo(name, factory, description, bool(log_z_known), bool(exact_samples))


def _builtin_molecule(molecule: str) -> Callable[..., Target]:
    def make(temperature: float = 300.0, engine: str = "jax", platform: str = "CPU", n_workers: int | None = None,
             energy_cut: float = 1e8, energy_max: float = 1e20, reference: str | None = None,
             chirality: bool = True) -> Target:
        return MoleculeTarget(molecule, temperature, engine, platform, n_workers, energy_cut, energy_max, reference,
                              chirality)

    return make


def _builtin_presets() -> None:
    register_target("double_well", DoubleWell, "2-D double well of the SNF paper and FAB (2 modes)", True, True)
    register_target("many_well", ManyWell, "FAB Many Well: dim/2 double wells (dim=32: 2^16 modes)", True, True)
    register_target("gmm40", GMM40, "FAB 2-D mixture of 40 Gaussians, std softplus(1)", True, True)
    register_target("gmm4", GaussianMixture.grid4, "small 2-D mixture of 4 well-separated Gaussians", True, True)
    register_target("far_modes", far_modes, "a bulk and 1-2 far modes of 1-5 % (seed=N; dim 2-10 from the seed, "
                    "or dim=D): missed-mode tests", True, True)
    register_target("funnel", Funnel, "Neal's funnel (dim=10): x0 ~ N(0, 9), x_i ~ N(0, exp(x0))", True, True)
    register_target("smiley", ImageTarget.smiley, "2-D image density: a smiley face (SNF paper)", True, True)
    register_target("dog", ImageTarget.dog, "2-D image density: a dog silhouette (SNF paper)", True, True)
    register_target("text", ImageTarget.text, "2-D image density: a line of text (kwarg text='boltzflow')",
                    True, True)
    register_target("dw4", dw4, "DW-4: 4 particles in 2-D, double-well pair potential (Köhler et al. 2020); "
                    "centre-of-mass-free coordinates (6 dims)", False, False)
    register_target("lj13", lj13, "LJ-13 Lennard-Jones cluster in 3-D with a harmonic well (pair_sum='pairs' | "
                    "'ordered'); centre-of-mass-free coordinates (36 dims)", False, False)
    register_target("lj55", lj55, "LJ-55 Lennard-Jones cluster, as lj13 (162 dims)", False, False)
    register_target("aldp_implicit", _builtin_molecule("aldp_implicit"),
                    "alanine dipeptide, Amber ff96 + OBC1 implicit solvent, Cartesian (66 dims); temperature=300",
                    False, False)
    register_target("aldp_vacuum", _builtin_molecule("aldp_vacuum"),
                    "alanine dipeptide in vacuum, Amber ff96, Cartesian (66 dims); temperature=300 (SNF: 1000)",
                    False, False)
    register_target("ace_ala3_nme_implicit", _builtin_molecule("ace_ala3_nme_implicit"),
                    "Ace-(Ala)3-Nme, Amber ff96 + OBC1 implicit solvent as aldp_implicit, Cartesian (126 dims); "
                    "temperature=300", False, False)
    register_target("molecule", MoleculeTarget,
                    "any OpenMM System: molecule={prmtop, inpcrd} | {pdb, forcefield} | {openmmtools}, temperature",
                    False, False)


_builtin_presets()


def list_targets() -> list[TargetInfo]:
    """All presets, sorted by name."""
    return [_PRESETS[k] for k in sorted(_PRESETS)]


def targets_table() -> str:
    """A plain-text table of the presets for ``boltzflow targets``."""
    infos = list_targets()
    width = max(len(i.name) for i in infos)
    lines = [f"{'name':<{width}}  log Z  exact samples  description"]
    for i in infos:
        lines.append(f"{i.name:<{width}}  {'yes' if i.log_z_known else 'no':<5}  "
                     f"{'yes' if i.exact_samples else 'no':<13}  {i.description}")
    return "\n".join(lines)


def _known() -> str:
    return ", ".join(sorted(_PRESETS))


def _call(fn: Callable, kwargs: dict, what: str):
    """Call ``fn(**kwargs)``, turning a signature mismatch into a one-line BoltzflowError."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            params = ", ".join(p for p in sig.parameters if p not in ("self", "cls")) or "none"
            raise BoltzflowError(f"{what}: bad arguments {sorted(kwargs)} ({e}); it accepts: {params}") from None
    return fn(**kwargs)


def _make_preset(name: str, kwargs: dict) -> Target:
    key = name.strip().lower().replace("-", "_")
    m = re.fullmatch(r"many_well_(\d+)", key)
    if m and "dim" not in kwargs:
        key, kwargs = "many_well", {**kwargs, "dim": int(m.group(1))}
    info = _PRESETS.get(key)
    if info is None:
        raise BoltzflowError(f"unknown target {name!r}; known presets: {_known()} (or use 'module:function')")
    try:
        return _call(info.factory, kwargs, f"target {key!r}")
    except BoltzflowError:
        raise
    except (TypeError, ValueError) as e:
        raise BoltzflowError(f"target {key!r} with arguments {kwargs}: {e}") from e  # maybe a registered user factory


def _import_module(mod_name: str, spec: str):
    if mod_name.endswith(".py") or os.sep in mod_name:
        path = os.path.abspath(mod_name)
        if not os.path.isfile(path):
            raise BoltzflowError(f"target {spec!r}: no such file {mod_name!r}")
        name = "boltzflow_user_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        mspec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mspec)
        try:
            mspec.loader.exec_module(module)
        except Exception as e:
            raise BoltzflowError(f"target {spec!r}: importing {mod_name!r} raised {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):  # the module itself is not there
            raise BoltzflowError(f"target {spec!r}: cannot import module {mod_name!r} ({e}){_path_hint(mod_name)}"
                                 ) from None
        raise BoltzflowError(f"target {spec!r}: importing {mod_name!r} raised ModuleNotFoundError: {e}") from e
    except Exception as e:
        raise BoltzflowError(f"target {spec!r}: importing {mod_name!r} raised {type(e).__name__}: {e}") from e


def _path_hint(mod_name: str) -> str:
    """Why a module in the working directory was not found: the library does not add that directory to sys.path."""
    base = os.path.join(*mod_name.split("."))
    if os.path.isfile(base + ".py"):
        return f"; {base}.py is in the working directory, which is not on sys.path: add it or use '{base}.py:FUNCTION'"
    return "; it is in the working directory, which is not on sys.path" if os.path.isdir(base) else ""


def _make_from_function(spec: str, kwargs: dict) -> Target:
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise BoltzflowError(f"target {spec!r}: expected 'module:function'")
    obj = _import_module(mod_name, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BoltzflowError(f"target {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, Target):
        if kwargs:
            raise BoltzflowError(f"target {spec!r} is a target object, it takes no arguments (got {sorted(kwargs)})")
        return obj
    if not callable(obj):
        raise BoltzflowError(f"target {spec!r}: {attr!r} is not callable")
    try:
        out = _call(obj, kwargs, f"target function {spec!r}")
    except BoltzflowError:
        raise
    except Exception as e:
        raise BoltzflowError(f"target function {spec!r} raised {type(e).__name__}: {e}") from e
    if isinstance(out, Target):
        return out
    if isinstance(out, (tuple, list)) and len(out) == 2 and callable(out[0]):
        log_prob, dim = out
        return FunctionTarget(log_prob, dim, name=attr.split(".")[-1], label=spec)
    raise BoltzflowError(
        f"target function {spec!r} must return a Target or a pair (log_prob, dim), got {type(out).__name__}"
    )


def make_target(spec: Any) -> Target:
    """A target from its spec (module docstring).

    Args:
        spec: a preset name (``boltzflow targets``: ``"gmm40"``, ``"many_well_32"``, ``"aldp_implicit"``, ...), a
            mapping ``{"name": PRESET, **kwargs}`` (``rotation: SEED`` in any mapping rotates the target), a
            ``"module:function"`` string or ``{"function": "module:function", **kwargs}``, or a Target (returned as
            is).

    Returns:
        The Target: a batched log density ``log_prob((n, dim)) -> (n,)`` with ``dim``, and ``log_z`` and exact
        samples where known.

    Example:
        >>> target = make_target({"name": "many_well", "dim": 8})
        >>> target.dim, target.log_z is not None
        (8, True)
    """
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, str):
        s = spec.strip()
        if ":" in s:
            return _make_from_function(s, {})
        return _make_preset(s, {})
    if isinstance(spec, dict):
        kwargs = dict(spec)
        if "rotation" in kwargs:  # any target on R^d, seen through a fixed random rotation (targets.rotated)
            rotation = kwargs.pop("rotation")
            return make_target(kwargs) if rotation is None else Rotated(make_target(kwargs), rotation)
        if "function" in kwargs:
            fn = kwargs.pop("function")  # every other key is a keyword argument of the function
            if not isinstance(fn, str):
                raise BoltzflowError(f"target 'function' must be a 'module:function' string, got {fn!r}")
            return _make_from_function(fn.strip(), kwargs)
        if "name" in kwargs:
            name = kwargs.pop("name")
            if not isinstance(name, str):
                raise BoltzflowError(f"target 'name' must be a string, got {name!r}")
            if ":" in name:
                return _make_from_function(name.strip(), kwargs)
            return _make_preset(name, kwargs)
        raise BoltzflowError(f"target spec {spec!r} needs a 'name' (preset) or a 'function' ('module:function')")
    raise BoltzflowError(
        f"target spec must be a preset name, a dict or 'module:function', got {type(spec).__name__}; "
        f"known presets: {_known()}"
    )
