"""Building an SNF: flow layers with stochastic blocks between them, from typed settings.

::

    flow:
      type: snf
      flow: {type: realnvp | nsf, n_layers: 4, ...}   # optional (null / absent: blocks only); make_flow settings
      blocks:
        kernel: metropolis | hmc | mala | ula | underdamped
        n_steps: 10          # kernel steps per block (underdamped: BAOAB steps in one velocity refresh)
        step_size: 0.1       # initial step size (scalar)
        torsion_step_size: null  # below an internal-coordinate layer: the step on the torsions of rotatable bonds
                                 # (radians; null: step_size), the other coordinates keep step_size
        every: 1             # a block after every `every` flow layers (an LU map goes with the layer before it)
        n_blocks: null       # blocks-only SNF (no flow): number of blocks (default 1)
        at_start: false      # also put a block before the first flow layer
        at_end: true         # false: no block after the last flow layer (the SNF ends on a flow layer)
        learn_lambda: false  # lambda = sigmoid(a) learnable, initialised as below (clipped to [1e-3, 1-1e-3])
        learn_step_size: false
        # any other key is a kernel setting: n_leapfrog (hmc), friction (underdamped)

A block after flow layer i of n samples pi_lambda with lambda = i / n, the fraction of the flow done: one after the
last layer samples the target (lambda = 1), one at the start the prior (lambda = 0). Blocks-only SNFs: block t of
T has lambda_t = t / T (SNF sec. 4).

A flow whose last layer is a fixed map into the target's coordinates (``coordinates: internal``: internal
coordinates -> Cartesian; ``loc`` / ``scale``: a standardization) keeps that layer last and outside the count:
the blocks run below it, in internal coordinates, on the target pulled back through it
(:class:`boltzflow.flows.paths.PulledBack`), as the SNF paper's alanine dipeptide SNF moves its Metropolis steps in
the flow's internal coordinates. There the coordinates differ in scale: bonds and angles are
normalised by their typical fluctuation, while a rotatable torsion spans [-pi, pi) with wells a third of a turn apart
(methyl rotations), which a step sized for the bonds hardly moves. ``torsion_step_size`` gives those torsions (the
internal-coordinate layer's circular dims) their own step: every block's step is then one per dimension (and
learned per dimension with ``learn_step_size``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Base, Flow, Layer
from boltzflow.flows.builders import FLOW_SETTINGS, make_flow
from boltzflow.flows.compose import Chain, Scan
from boltzflow.flows.distributions import StandardBase
from boltzflow.flows.paths import PulledBack
from boltzflow.flows.permutation import LULinear
from boltzflow.settings import Tagged
from boltzflow.snf.block import StochasticBlock, check_block


@dataclass(frozen=True)
class BlockSettings:
    """Where the stochastic blocks go and what they run (module docstring)."""

    kernel: str = "metropolis"
    n_steps: int = 10
    step_size: float = 0.1
    torsion_step_size: float | None = None
    every: int = 1
    n_blocks: int | None = None
    at_start: bool = False
    at_end: bool = True
    learn_lambda: bool = False
    learn_step_size: bool = False
    kernel_options: dict = field(default_factory=dict, metadata={"extra": True})

    def __post_init__(self):
        check_block(self.kernel, self.step_size, self.n_steps, self.kernel_options, "blocks.")
        if self.torsion_step_size is not None:
            check_block(self.kernel, self.torsion_step_size, self.n_steps, self.kernel_options, "blocks.torsion_")
        for name in ("every",) + (("n_blocks",) if self.n_blocks is not None else ()):
            if getattr(self, name) < 1:
                raise BoltzflowError(f"blocks.{name} must be a positive integer, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SNFSettings:
    """``flow: {type: snf, flow: ..., blocks: ...}``: the deterministic flow (None: blocks only) and the blocks."""

    flow: Tagged | None = field(default=None, metadata={"choices": FLOW_SETTINGS, "tag": "type"})
    blocks: BlockSettings = field(default_factory=BlockSettings)

    def __post_init__(self):
        if self.flow is not None and self.blocks.n_blocks is not None:
            raise BoltzflowError("blocks.n_blocks is for blocks-only SNFs; with a flow use blocks.every")


def flatten_layers(layers) -> list[Layer]:
    """The deterministic layers of a flow as a flat list (Scan stacks and Chains unrolled, order kept)."""
    out = []
    for layer in layers:
        if isinstance(layer, Scan):
            out.extend(flatten_layers([layer.layer(i) for i in range(layer.n)]))
        elif isinstance(layer, Chain):
            out.extend(flatten_layers(layer.layers))
        else:
            out.append(layer)
    return out


def make_snf(s: SNFSettings, key: jax.Array, target, dtype=jnp.float32) -> Flow:
    """An SNF from its settings (module docstring): flow layers with a block after every ``every`` of them."""
    b = s.blocks
    if s.flow is not None:
        flow = make_flow(s.flow, key, target.dim, dtype, molecule=getattr(target, "molecule", None))
        base, det = flow.base, flatten_layers(flow.layers)
        if not det:
            raise BoltzflowError(f"an SNF's flow needs layers; flow type {s.flow.name!r} has none (blocks only: "
                                 "flow: null)")
        tail = ()
        if det and det[-1].coordinate_map:  # a fixed map into x's coordinates: blocks run below it (docstring)
            tail, det = (det[-1],), det[:-1]
            target = PulledBack(target, tail[0])
        step = _step_size(b, tail)
        units = []  # each coupling with the LU map that follows it, so a block never splits the two
        for layer in det:
            if isinstance(layer, LULinear) and units:
                units[-1].append(layer)
            else:
                units.append([layer])
        n_f = len(units)
        slots = [0.0] if b.at_start else []  # flow layers, and each block's lambda as a float
        for i, unit in enumerate(units):
            slots.extend(unit)
            if (i + 1) % b.every == 0 and (b.at_end or i + 1 < n_f):
                slots.append((i + 1) / n_f)
    else:
        return blocks_only_snf(StandardBase(target.dim, dtype=dtype), target, b.n_blocks or 1, b.kernel,
                               _step_size(b, ()), b.n_steps, learn_lambda=b.learn_lambda,
                               learn_step_size=b.learn_step_size, settings=b.kernel_options, dtype=dtype)
    return Flow(base, tuple(_block(b, base, target, slot, step, dtype) if isinstance(slot, float) else slot
                            for slot in slots) + tail)


def _step_size(b: BlockSettings, tail: tuple):
    """The blocks' step: ``step_size``, or per dimension with ``torsion_step_size`` on the circular dims of the
    internal-coordinate layer the blocks run below (``tail``)."""
    if b.torsion_step_size is None:
        return b.step_size
    if not (tail and hasattr(tail[0], "circular_mask")):
        raise BoltzflowError("blocks.torsion_step_size is for an SNF on internal coordinates (flow: "
                             "{coordinates: internal}); elsewhere use step_size")
    return np.where(tail[0].circular_mask, b.torsion_step_size, b.step_size)


def _block(b: BlockSettings, base: Base, target, lam: float, step, dtype) -> StochasticBlock:
    return StochasticBlock(b.kernel, base, target, lam, step, b.n_steps, b.learn_lambda, b.learn_step_size,
                           b.kernel_options, dtype=dtype)


def blocks_only_snf(prior: Base, target, n_blocks: int, kernel: str = "metropolis", step_size: float = 0.1,
                    n_steps: int = 10, lambdas=None, **kw) -> Flow:
    """An SNF of stochastic blocks only from ``prior`` (lambda_t = t / T unless ``lambdas`` is given)."""
    lambdas = [(t + 1) / n_blocks for t in range(n_blocks)] if lambdas is None else list(lambdas)
    return Flow(prior, tuple(StochasticBlock(kernel, prior, target, float(lam), step_size, n_steps, **kw)
                             for lam in lambdas))
