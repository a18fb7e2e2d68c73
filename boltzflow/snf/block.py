"""The stochastic block of Stochastic Normalizing Flows (Wu, Koehler & Noe, NeurIPS 2020).

An SNF is an ordinary :class:`boltzflow.flows.base.Flow` whose layers mix deterministic bijections with
:class:`StochasticBlock` s. Every layer returns its log path ratio dS (SNF eq. 8), so the path weight of a
forward path z = y_0 -> y_1 -> ... -> y_T = x is (SNF eq. 11)

    log w(z -> x) = log p(x) - log q0(z) + sum_t dS_t,        dS_t = log [P_b(y_t+1 -> y_t) / P_f(y_t -> y_t+1)],

with dS_t = log|det J_t| for a flow layer. E_{q0 P_f}[w] = Z (the normaliser of the unnormalised p).

Stochastic blocks
-----------------
A block runs a transition kernel of :mod:`boltzflow.mcmc` (it never re-implements one) on the interpolated
potential of SNF sec. 4,

    u_lambda(x) = (1 - lambda) u_Z(x) + lambda u_X(x),   i.e.  log pi_lambda = (1 - lambda) log q0 + lambda log p,

(the kernel's annealed density with w_q = 1 - lambda on the prior q0 = the flow's base, w_p = lambda on the
target), ``n_steps`` times, and returns the sum of the kernels' dS: u_lambda(y') - u_lambda(y) per accepted
Metropolis / HMC move (SNF eq. 22), eq. 20 for overdamped Langevin (ULA, backward noise of eq. 19), and for
underdamped Langevin the BAOAB ratio with the fresh / discarded Gaussian velocities included (supplement sec. 5;
see :mod:`boltzflow.mcmc.langevin`). lambda is fixed by position (the fraction of the flow's layers before the
block; t / T in a blocks-only SNF) or learnable (lambda = sigmoid(a)); the step size is fixed or learnable
(eps = exp(b)), the paper's adaptive variant.
Gradients flow through reparameterised proposals (x' = x + eps xi, Langevin drifts); the accept / reject
decision is not differentiated (straight-through the selected sample, as in the paper).

The inverse (backward) direction
--------------------------------
For maximum likelihood on data (SNF eq. 14) a path is generated backwards, x = y_T -> ... -> y_0 = z, drawing
y_t ~ P_b(y_t+1 -> .) at every block. Every kernel here is its own backward kernel (K_b = K_f = K: MH kernels
are reversible; for ULA the backward move is the same Langevin step, eq. 19; for underdamped Langevin the
backward move draws fresh velocities and runs the same scheme, velocity flips cancelling in distribution), so
the block's inverse simply *runs the same kernel from y_t+1*. That kernel step reports

    dS_kernel = log [K(y_t -> y_t+1) / K(y_t+1 -> y_t)] = -dS_t   (the forward-form ratio of the same segment),

which is exactly the bijection convention dS_inv = -dS. Hence, with D = sum of the inverse dS's returned by
``Flow.inverse`` (log|det dz/dx| for flow layers),

    log w(z -> x) = log p(x) - log q0(z) - D                     (forward-form weight of a backward path),
    log w_b(x -> z) = -log w(z -> x) + log Z,                     (SNF eq. 14's backward weight)

and the ML loss (SNF eq. 14) J_ML = E_{p(x) P_b(x -> z)}[-log w_b] = E[-log q0(z) - D] + const. For a
deterministic flow log q0(z) + D = log q(x), i.e. ordinary maximum likelihood; in general log q0(z) + D is an
unbiased-in-expectation lower bound on log q(x) (Jensen: log q(x) = log E_b[q0(z) e^{D}] >= E_b[log q0(z) + D]),
returned by :func:`boltzflow.flows.paths.backward_log_q` for evaluation (E_p[log q] bound). Exactness check: with p normalised,
E_{p P_b}[1 / w(z -> x)] = 1 (tested).

The SNF's prior q0 is the flow's base distribution (a frozen copy is used inside blocks: no gradient reaches a
learnable base through the block potentials). Layouts of blocks and flow layers: :mod:`boltzflow.snf.builder`;
training objectives (path KL, eq. 13; ML on backward paths, eq. 14): :mod:`boltzflow.train.objectives`; FAB for
SNFs with Langevin blocks, in path space: :mod:`boltzflow.snf.paths`.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Base, Layer
from boltzflow.mcmc.anneal import anneal
from boltzflow.mcmc.point import make_point
from boltzflow.mcmc.registry import KERNELS, make_kernel

_LAMBDA_CLIP = 1e-3


def _positive_steps(step_size) -> bool:
    """A positive finite number, or a non-empty vector of them."""
    if isinstance(step_size, (bool, str)):
        return False
    try:
        eps = np.asarray(step_size, np.float64)
    except (TypeError, ValueError):
        return False
    return eps.ndim <= 1 and eps.size > 0 and bool(np.all(np.isfinite(eps) & (eps > 0)))


def check_block(kernel: str, step_size, n_steps, settings: dict, where: str = "") -> None:
    """The one check of a block's kernel, step size, number of moves and kernel settings (one-line errors)."""
    if kernel not in KERNELS:
        raise BoltzflowError(f"unknown MCMC kernel {kernel!r}; known: {', '.join(KERNELS)}")
    if not _positive_steps(step_size):
        raise BoltzflowError(f"{where}step_size must be a positive number (or one per dimension), got {step_size!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise BoltzflowError(f"{where}n_steps must be a positive integer, got {n_steps!r}")
    if "n_steps" in settings:
        raise BoltzflowError("set the underdamped kernel's steps with the block's n_steps")
    make_kernel(kernel, **settings)  # validates the settings


class StochasticBlock(Layer):
    """``n_steps`` moves of an :mod:`boltzflow.mcmc` kernel on pi_lambda = q0^(1 - lambda) p^lambda.

    Args:
        kernel: kernel name (``metropolis``, ``hmc``, ``mala``, ``ula``, ``underdamped``).
        prior: the base distribution q0 (u_Z = -log q0).
        target: the target (u_X = -log p); a static field (hashed by identity).
        lam: interpolation parameter lambda in [0, 1].
        step_size: kernel step size eps > 0: a scalar, or one per dimension ``(d,)`` (a diagonal proposal scale, e.g.
            larger on the torsions of internal coordinates, :mod:`boltzflow.snf.builder`).
        n_steps: kernel calls per block (underdamped: BAOAB steps within one call, one velocity refresh).
        learn_lambda: parameterise lambda = sigmoid(a) and train a (lambda clipped to [1e-3, 1 - 1e-3]).
        learn_step_size: train b = log eps (each dimension's, for a per-dimension step).
        settings: further kernel settings (``n_leapfrog``, ``friction``).

    ``forward`` and ``inverse`` both run the kernel (it is its own backward kernel); ``forward`` returns the
    summed kernel dS (SNF eqs. 20, 22) and ``inverse`` the summed kernel dS of the backward moves, which is the
    inverse-direction ratio dS_inv (module docstring).
    """

    prior: Base
    raw_lambda: jax.Array
    log_step: jax.Array
    kernel: str = eqx.field(static=True)
    target: Any = eqx.field(static=True)
    n_steps: int = eqx.field(static=True)
    learn_lambda: bool = eqx.field(static=True)
    learn_step_size: bool = eqx.field(static=True)
    settings: tuple = eqx.field(static=True)

    def __init__(self, kernel: str, prior: Base, target, lam: float, step_size: float, n_steps: int = 10,
                 learn_lambda: bool = False, learn_step_size: bool = False, settings: dict | None = None,
                 dtype=jnp.float32):
        if not 0.0 <= lam <= 1.0:
            raise BoltzflowError(f"lambda must be in [0, 1], got {lam}")
        settings = dict(settings or {})
        check_block(kernel, step_size, n_steps, settings)
        self.kernel, self.prior, self.target = kernel, prior, target
        self.n_steps, self.learn_lambda, self.learn_step_size = int(n_steps), bool(learn_lambda), bool(learn_step_size)
        self.settings = tuple(sorted(settings.items()))
        if learn_lambda:
            lam = min(max(lam, _LAMBDA_CLIP), 1 - _LAMBDA_CLIP)
            self.raw_lambda = jnp.asarray(math.log(lam / (1 - lam)), dtype)
        else:
            self.raw_lambda = jnp.asarray(lam, dtype)
        if np.ndim(step_size) == 1 and np.size(step_size) != prior.dim:
            raise BoltzflowError(f"a per-dimension step size needs {prior.dim} values (the prior's dimension), got "
                                 f"{np.size(step_size)}")
        self.log_step = jnp.log(jnp.asarray(step_size, dtype))

    def retarget(self, target) -> "StochasticBlock":
        """The same block (kernel, prior, lambda and step-size parameters) moving under another target: how a
        conditional model reuses one SNF for many targets, e.g. a VAE's posteriors p(z | x) (boltzflow.vae)."""
        new = StochasticBlock(self.kernel, self.prior, target, 0.5, 1.0, self.n_steps, self.learn_lambda,
                              self.learn_step_size, dict(self.settings), dtype=self.log_step.dtype)
        return eqx.tree_at(lambda b: (b.raw_lambda, b.log_step), new, (self.raw_lambda, self.log_step))

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def target_evals(self) -> int:
        return self.n_steps * make_kernel(self.kernel, **dict(self.settings)).evals_per_step

    @property
    def lam(self) -> jax.Array:
        """lambda: sigmoid(a) if learnable, else the fixed value (no gradient)."""
        return jax.nn.sigmoid(self.raw_lambda) if self.learn_lambda else jax.lax.stop_gradient(self.raw_lambda)

    @property
    def step_size(self) -> jax.Array:
        b = self.log_step if self.learn_step_size else jax.lax.stop_gradient(self.log_step)
        return jnp.exp(b)

    def run(self, x, key, inverse: bool = False):
        """The block's moves from x (the same in both directions): (y, dS, AnnealInfo), by the one annealing loop
        (boltzflow.mcmc.anneal) at the single level pi_lambda."""
        if key is None:
            raise BoltzflowError("a stochastic block needs a PRNG key")
        settings = dict(self.settings)
        calls = self.n_steps
        if self.kernel == "underdamped":
            settings["n_steps"], calls = self.n_steps, 1
        kernel = make_kernel(self.kernel, **settings)
        prior = jax.lax.stop_gradient(self.prior)
        lam = self.lam
        w = jnp.stack([1.0 - lam, lam])[None]
        point = make_point(x, prior.log_prob, self.target.log_prob, with_grad=kernel.needs_grad)
        point, d_s, info = anneal(kernel, key[None], point, w[0], w, self.step_size[None], calls, prior.log_prob,
                                  self.target.log_prob)
        return point.x, d_s, info

    def forward(self, x, key=None):
        return self.run(x, key)[:2]

    def inverse(self, y, key=None):
        return self.run(y, key, inverse=True)[:2]
