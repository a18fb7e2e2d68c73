"""Targets: batched unnormalised log densities with, where known, exact log Z and exact samples.

- :class:`DoubleWell`, :class:`ManyWell` (``wells``): the SNF / FAB double wells.
- :class:`GaussianMixture`, :class:`GMM40` (``gmm``): isotropic Gaussian mixtures, FAB's 40-mode benchmark.
- :class:`Funnel` (``funnel``): Neal's funnel.
- :class:`ImageTarget` (``images``): 2-D densities drawn from pictures (smiley, dog, text).
- :class:`FunctionTarget` (``function``): a user's ``log_prob`` function.
- :class:`Rotated` (``rotated``): any of them seen through a fixed random rotation (``rotation: SEED`` in a spec).
- :func:`make_target`, :func:`list_targets` (``registry``): build targets from presets and user specs.
- ``report``: what a target's report and pictures get of a model's evaluation (``Target.report``, ``draw``).
"""

from boltzflow.targets.base import Target, check_batch
from boltzflow.targets.funnel import Funnel
from boltzflow.targets.function import FunctionTarget
from boltzflow.targets.gmm import GMM40, GaussianMixture, small_gmm
from boltzflow.targets.images import ImageTarget
from boltzflow.targets.registry import TargetInfo, list_targets, make_target, register_target, targets_table
from boltzflow.targets.rotated import Rotated, random_rotation
from boltzflow.targets.wells import DoubleWell, ManyWell, free_energy_x1, log_marginal_x1, sample_x1

__all__ = [
    "Target",
    "check_batch",
    "DoubleWell",
    "ManyWell",
    "log_marginal_x1",
    "free_energy_x1",
    "sample_x1",
    "GaussianMixture",
    "GMM40",
    "small_gmm",
    "Funnel",
    "ImageTarget",
    "FunctionTarget",
    "Rotated",
    "random_rotation",
    "TargetInfo",
    "make_target",
    "list_targets",
    "register_target",
    "targets_table",
]
