"""Flows: bijections returning (y, log|det J|), base distributions, and the Flow container.

Build a flow with :func:`make_realnvp`, :func:`make_nsf` or :func:`make_flow` (from a config dict); all start at the
identity map. Layers obey the contract of :mod:`boltzflow.flows.base`; :class:`InternalCoordinates` (a molecule's
internal coordinates -> Cartesian positions) is a layer that changes the dimension.
"""

from boltzflow.flows.base import Base, Flow, Layer
from boltzflow.flows.builders import make_flow, make_nsf, make_realnvp
from boltzflow.flows.compose import Chain, Scan, stack_layers
from boltzflow.flows.coupling import Affine, Coupling, RQSpline
from boltzflow.flows.distributions import StandardBase, circular_mask
from boltzflow.flows.internal import InternalCoordinates
from boltzflow.flows.permutation import LULinear, Permutation
from boltzflow.flows.spline import rq_spline_forward, rq_spline_inverse, rq_spline_params, wrap_angle

__all__ = [
    "Affine",
    "Base",
    "Chain",
    "Coupling",
    "Flow",
    "InternalCoordinates",
    "LULinear",
    "Layer",
    "Permutation",
    "RQSpline",
    "Scan",
    "StandardBase",
    "circular_mask",
    "make_flow",
    "make_nsf",
    "make_realnvp",
    "rq_spline_forward",
    "rq_spline_inverse",
    "rq_spline_params",
    "stack_layers",
    "wrap_angle",
]
