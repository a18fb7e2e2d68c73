"""Stochastic Normalizing Flows (Wu, Koehler & Noe, NeurIPS 2020): flow layers and MCMC blocks in one list.

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
returned by :func:`backward_log_q` for evaluation (E_p[log q] bound). Exactness check: with p normalised,
E_{p P_b}[1 / w(z -> x)] = 1 (tested).

Spec (``make_snf``)
-------------------
::

    flow:
      type: snf
      flow: {type: realnvp | nsf, n_layers: 4, ...}   # optional (null / absent: blocks only); make_flow options
      blocks:
        kernel: metropolis | hmc | mala | ula | underdamped
        n_steps: 10          # kernel steps per block (underdamped: BAOAB steps in one velocity refresh)
        step_size: 0.1       # initial step size (scalar)
        every: 1             # a block after every `every` flow layers (couplings and LU maps count as layers)
        n_blocks: 4          # blocks-only SNF (no flow): number of blocks
        at_start: false      # also put a block before the first flow layer
        at_end: true         # false: no block after the last flow layer (the SNF ends on a flow layer)
        # a block after flow layer i of n samples lambda = i / n (blocks only: block t of T samples t / T)
        learn_lambda: false  # lambda = sigmoid(a) learnable, initialised as above (clipped to [1e-3, 1-1e-3])
        learn_step_size: false
        # any other key is a kernel setting: n_leapfrog (hmc), friction (underdamped)

The SNF's prior q0 is the flow's base distribution (a frozen copy is used inside blocks: no gradient reaches a
learnable base through the block potentials).

Training objectives: :func:`kl_loss` (SNF eq. 13), :func:`ml_loss` (eq. 14), :func:`kl_ml_loss`; methods
``snf_kl``, ``snf_ml``, ``snf_kl_ml`` in :mod:`boltzflow.train.methods` are built by :func:`build_snf_method`.
An SNF whose blocks are unadjusted Langevin also trains by FAB (method ``fab``), in path space: see
:mod:`boltzflow.snf_paths`.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from boltzflow.errors import BoltzflowError
from boltzflow.estimators import effective_sample_size
from boltzflow.flows.base import Base, Flow, Layer
from boltzflow.flows.compose import Chain, Scan
from boltzflow.mcmc.point import make_point
from boltzflow.mcmc.registry import KERNELS, make_kernel
from boltzflow.train.methods import masked_mean

_LAMBDA_CLIP = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Stochastic block
# ---------------------------------------------------------------------------------------------------------------------
class StochasticBlock(Layer):
    """``n_steps`` moves of an :mod:`boltzflow.mcmc` kernel on pi_lambda = q0^(1 - lambda) p^lambda.

    Args:
        kernel: kernel name (``metropolis``, ``hmc``, ``mala``, ``ula``, ``underdamped``).
        prior: the base distribution q0 (u_Z = -log q0).
        target: the target (u_X = -log p); a static field (hashed by identity).
        lam: interpolation parameter lambda in [0, 1].
        step_size: kernel step size eps > 0 (scalar).
        n_steps: kernel calls per block (underdamped: BAOAB steps within one call, one velocity refresh).
        learn_lambda: parameterise lambda = sigmoid(a) and train a (lambda clipped to [1e-3, 1 - 1e-3]).
        learn_step_size: train b = log eps.
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
        if kernel not in KERNELS:
            raise BoltzflowError(f"unknown MCMC kernel {kernel!r}; known: {', '.join(KERNELS)}")
        if not 0.0 <= lam <= 1.0:
            raise BoltzflowError(f"lambda must be in [0, 1], got {lam}")
        if not (isinstance(step_size, (int, float)) and step_size > 0):
            raise BoltzflowError(f"step_size must be a positive number, got {step_size!r}")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise BoltzflowError(f"n_steps must be a positive integer, got {n_steps!r}")
        settings = dict(settings or {})
        if "n_steps" in settings:
            raise BoltzflowError("set the underdamped kernel's steps with the block's n_steps")
        make_kernel(kernel, **settings)  # validates the settings
        self.kernel, self.prior, self.target = kernel, prior, target
        self.n_steps, self.learn_lambda, self.learn_step_size = int(n_steps), bool(learn_lambda), bool(learn_step_size)
        self.settings = tuple(sorted(settings.items()))
        if learn_lambda:
            lam = min(max(lam, _LAMBDA_CLIP), 1 - _LAMBDA_CLIP)
            self.raw_lambda = jnp.asarray(math.log(lam / (1 - lam)), dtype)
        else:
            self.raw_lambda = jnp.asarray(lam, dtype)
        self.log_step = jnp.asarray(math.log(step_size), dtype)

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def lam(self) -> jax.Array:
        """lambda: sigmoid(a) if learnable, else the fixed value (no gradient)."""
        return jax.nn.sigmoid(self.raw_lambda) if self.learn_lambda else jax.lax.stop_gradient(self.raw_lambda)

    @property
    def step_size(self) -> jax.Array:
        b = self.log_step if self.learn_step_size else jax.lax.stop_gradient(self.log_step)
        return jnp.exp(b)

    def _run(self, x, key):
        if key is None:
            raise BoltzflowError("a stochastic block needs a PRNG key")
        settings = dict(self.settings)
        calls = self.n_steps
        if self.kernel == "underdamped":
            settings["n_steps"], calls = self.n_steps, 1
        k = make_kernel(self.kernel, **settings)
        prior = jax.lax.stop_gradient(self.prior)
        lam = self.lam
        w = (1.0 - lam, lam)
        eps = self.step_size
        point = make_point(x, prior.log_prob, self.target.log_prob, with_grad=k.needs_grad)

        def one(carry, kk):
            pt, total = carry
            pt, info = k.step(kk, pt, w, eps, prior.log_prob, self.target.log_prob)
            return (pt, total + info.dS), info.accept

        (point, total), accept = jax.lax.scan(one, (point, jnp.zeros(x.shape[0], x.dtype)),
                                              jax.random.split(key, calls))
        return point.x, total

    def forward(self, x, key=None):
        return self._run(x, key)

    def inverse(self, y, key=None):
        return self._run(y, key)


# ---------------------------------------------------------------------------------------------------------------------
# Building an SNF
# ---------------------------------------------------------------------------------------------------------------------
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


def make_snf(spec: dict, key: jax.Array, target) -> Flow:
    """An SNF from a spec (module docstring): flow layers with a block after every ``every`` of them.

    A block after flow layer i of n gets lambda = i / n, the fraction of the flow done: one after the last layer
    samples the target (lambda = 1), one at the start the prior (lambda = 0). Blocks-only SNFs: lambda_t = t / T.
    """
    from boltzflow.flows.builders import make_flow
    from boltzflow.flows.distributions import StandardBase

    if not isinstance(spec, dict):
        raise BoltzflowError(f"snf spec must be a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    spec.pop("type", None)
    flow_spec = spec.pop("flow", None)
    blocks = dict(spec.pop("blocks", None) or {})
    dtype = jnp.dtype(spec.pop("dtype", "float32"))
    if spec:
        raise BoltzflowError(f"unknown option(s) for flow type 'snf': {', '.join(sorted(spec))}; "
                             f"valid: flow, blocks, dtype")
    kernel = blocks.pop("kernel", "metropolis")
    n_steps = blocks.pop("n_steps", 10)
    step_size = blocks.pop("step_size", 0.1)
    every = blocks.pop("every", 1)
    n_blocks = blocks.pop("n_blocks", None)
    at_start = bool(blocks.pop("at_start", False))
    at_end = bool(blocks.pop("at_end", True))
    learn_lambda = bool(blocks.pop("learn_lambda", False))
    learn_step = bool(blocks.pop("learn_step_size", False))
    settings = blocks  # the rest: kernel settings (validated by make_kernel)

    if flow_spec:
        flow = make_flow(flow_spec, key, target.dim)
        base, det = flow.base, flatten_layers(flow.layers)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise BoltzflowError(f"blocks.every must be a positive integer, got {every!r}")
        n_f = len(det)
        slots = [0.0] if at_start else []  # flow layers, and each block's lambda as a float
        for i, layer in enumerate(det):
            slots.append(layer)
            if (i + 1) % every == 0 and (at_end or i + 1 < n_f):
                slots.append((i + 1) / n_f)
        if n_blocks is not None:
            raise BoltzflowError("blocks.n_blocks is for blocks-only SNFs; with a flow use blocks.every")
    else:
        base = StandardBase(target.dim, dtype=dtype)
        n_blocks = 1 if n_blocks is None else n_blocks
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
            raise BoltzflowError(f"blocks.n_blocks must be a positive integer, got {n_blocks!r}")
        slots = [t / n_blocks for t in range(1, n_blocks + 1)]
    layers = [StochasticBlock(kernel, base, target, s, float(step_size), n_steps, learn_lambda, learn_step, settings,
                              dtype=dtype) if isinstance(s, float) else s for s in slots]
    return Flow(base, tuple(layers))


def blocks_only_snf(prior: Base, target, n_blocks: int, kernel: str = "metropolis", step_size: float = 0.1,
                    n_steps: int = 10, lambdas=None, **kw) -> Flow:
    """An SNF of stochastic blocks only (lambda_t = t / T unless ``lambdas`` is given)."""
    lambdas = [(t + 1) / n_blocks for t in range(n_blocks)] if lambdas is None else list(lambdas)
    return Flow(prior, tuple(StochasticBlock(kernel, prior, target, float(lam), step_size, n_steps, **kw)
                             for lam in lambdas))


# ---------------------------------------------------------------------------------------------------------------------
# Path weights and losses
# ---------------------------------------------------------------------------------------------------------------------
def path_weights(model: Flow, target, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """n forward paths: (x (n, d), log w (n,)) with log w = log p(x) - log q0(z) + sum dS (SNF eq. 11).

    Works for any Flow (deterministic: log w = log p(x) - log q(x)). Self-normalised weights of these samples
    give asymptotically unbiased estimates; logmeanexp(log w) estimates log Z.
    """
    x, log_q0, ds = model.sample_with_path(key, n)
    return x, target.log_prob(x) - log_q0 + ds


def backward_path(model: Flow, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Backward paths from data x (n, d): (z, log q0(z) + D), D = sum of inverse dS (module docstring).

    The second output is log q(x) for a deterministic flow, and a lower bound in expectation for an SNF.
    """
    z, d = model.inverse(x, key if model.stochastic else None)
    return z, model.base.log_prob(z) + d


def backward_log_q(model: Flow, x: jax.Array, key: jax.Array) -> jax.Array:
    """E_b-lower bound of log q(x) per sample (exact for deterministic flows); shape (n,)."""
    return backward_path(model, x, key)[1]


def backward_log_weights(model: Flow, target, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z, log w(z -> x)) of backward paths from x: forward-form weight log p(x) - log q0(z) - D."""
    z, lq = backward_path(model, x, key)
    return z, target.log_prob(x) - lq


def kl_loss(model: Flow, target, key: jax.Array, n: int):
    """Reverse path KL (SNF eq. 13): J_KL = E_{q0 P_f}[-log w] = E[u_X(x) - u_Z(z) - sum dS] (+ log Z).

    Returns (loss, metrics); non-finite log weights are masked and counted.
    """
    _, log_w = path_weights(model, target, key, n)
    ok = jnp.isfinite(log_w)
    return -masked_mean(log_w, ok), {"ess": effective_sample_size(jax.lax.stop_gradient(log_w)),
                                      "n_nonfinite": jnp.sum(~ok)}


def ml_loss(model: Flow, sample, key: jax.Array, n: int):
    """Maximum likelihood with backward paths (SNF eq. 14) on x = sample(key, n), samples of p (the target's exact
    sampler or a data set: :func:`boltzflow.train.data.ml_sampler`):

    J_ML = E_{p(x) P_b(x -> z)}[-log w_b(x -> z)] = E[-log q0(z) - D] + const (module docstring).
    """
    k_x, k_b = jax.random.split(key)
    x = jax.lax.stop_gradient(sample(k_x, n))
    _, lq = backward_path(model, x, k_b)
    ok = jnp.isfinite(lq)
    return -masked_mean(lq, ok), {"nll": -masked_mean(jax.lax.stop_gradient(lq), ok),
                                   "n_nonfinite_ml": jnp.sum(~ok)}


def kl_ml_loss(model: Flow, target, sample, key: jax.Array, n: int, kl_weight: float = 1.0,
               ml_weight: float = 1.0):
    """w_KL J_KL + w_ML J_ML (SNF sec. 4, "KL + ML" training); ``sample`` as in :func:`ml_loss`."""
    k1, k2 = jax.random.split(key)
    l_kl, m_kl = kl_loss(model, target, k1, n)
    l_ml, m_ml = ml_loss(model, sample, k2, n)
    return kl_weight * l_kl + ml_weight * l_ml, {**m_kl, **m_ml, "loss_kl": l_kl, "loss_ml": l_ml}


def alpha2_path_loss(model: Flow, target, key: jax.Array, n: int):
    """Path-space alpha = 2 divergence by IS with the SNF's own paths (FAB's "flow alpha=2" baseline on paths):

    D_2(P || Q) = log E_Q[(P / Q)^2],  P = p(x) P_b(x -> z) / Z,  Q = q0(z) P_f(z -> x),  P / Q = w / Z,

    estimated as logsumexp_i(2 log w_i) - log n (up to the constant -2 log Z), reparameterised. It upper-bounds
    the marginal D_2(p || q) (data processing). The FAB bootstrap of the same divergence (AIS towards P^2/Q over
    paths, with the replay buffer) is :mod:`boltzflow.snf_paths`, for SNFs with Langevin blocks.
    """
    _, log_w = path_weights(model, target, key, n)
    ok = jnp.isfinite(log_w)
    loss = jax.scipy.special.logsumexp(jnp.where(ok, 2.0 * log_w, -jnp.inf)) - jnp.log(n)
    return loss, {"ess": effective_sample_size(jax.lax.stop_gradient(log_w)), "n_nonfinite": jnp.sum(~ok)}


def snf_loss(kind: str, target, kl_weight: float = 1.0, ml_weight: float = 1.0, data=None):
    """``loss(model, key, n) -> (loss, aux)`` for ``kind`` in {"kl", "ml", "kl_ml", "alpha2"}; the ML term draws
    from ``data`` (a file or an array) if given, else from the target's exact sampler."""
    from boltzflow.train.data import ml_sampler

    if kind not in ("kl", "ml", "kl_ml", "alpha2"):
        raise BoltzflowError(f"unknown SNF objective {kind!r}; known: kl, ml, kl_ml, alpha2")
    if kind == "kl":
        return lambda model, key, n: kl_loss(model, target, key, n)
    if kind == "alpha2":
        return lambda model, key, n: alpha2_path_loss(model, target, key, n)
    sample = ml_sampler(target, data, f"method snf_{kind}")
    if kind == "ml":
        return lambda model, key, n: ml_loss(model, sample, key, n)
    return lambda model, key, n: kl_ml_loss(model, target, sample, key, n, kl_weight, ml_weight)


def build_snf_method(kind: str):
    """A METHODS entry: ``kind`` in {"kl", "ml", "kl_ml", "alpha2"}; method options ``kl_weight``, ``ml_weight``
    (used by kl_ml only) and ``data`` (samples for the ML term, :mod:`boltzflow.train.data`)."""

    def build(cfg, target, optimizer):
        from boltzflow.train.methods import _sample_loss_method, method_options

        o = method_options(cfg, f"snf_{kind}", {"kl_weight": 1.0, "ml_weight": 1.0, "data": None})
        loss = snf_loss(kind, target, float(o["kl_weight"]), float(o["ml_weight"]), o["data"])
        return _sample_loss_method(loss, cfg.train.batch_size, optimizer)

    return build


def fit(model: Flow, target, key: jax.Array, steps: int, batch_size: int = 256, lr: float = 1e-3,
        kl_weight: float = 1.0, ml_weight: float = 0.0, clip_norm: float = 10.0, data=None):
    """Train with Adam on w_KL J_KL + w_ML J_ML without a run directory (for scripts and benchmarks): the same
    method step as ``boltzflow train`` with a constant learning rate; ``data`` as in :func:`snf_loss`. Returns
    (model, losses (steps,) numpy)."""
    import numpy as np
    import optax

    from boltzflow.train.methods import _sample_loss_method

    kind = "kl" if ml_weight == 0.0 else "ml" if kl_weight == 0.0 else "kl_ml"
    opt = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(lr))
    loss = snf_loss(kind, target, kl_weight, ml_weight, data)
    step = eqx.filter_jit(_sample_loss_method(loss, batch_size, opt).step)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    losses = []
    for k in jax.random.split(key, steps):
        model, state, _, metrics = step(model, state, (), k)
        losses.append(metrics["loss"])
    return model, np.asarray(jnp.stack(losses)) if losses else np.zeros(0)
