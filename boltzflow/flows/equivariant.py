"""An E(n)-equivariant augmented coupling flow for identical particles (E-ACF; Midgley et al. 2023, "SE(3)
Equivariant Augmented Coupling Flows", sections 3-4), on the centre-of-mass-free coordinates y of
:mod:`boltzflow.targets.particles` (positions X = H y, H the Helmert matrix). Derivations: docs/concepts/
equivariant-flows.md.

Augmentation. The flow models q(y, A) of the positions and N augmented points A, for the joint target

    p(y, A) = p(y) pi(A | y),        pi(A | y) = N(A; H y, eta^2 I_{Nd})        (E-ACF eq. 5),

which has p's normaliser Z. The last layer, :class:`DropAugmented`, maps (y, A) -> y with dS = log pi(A | y)
(inverse: A ~ pi, dS = -log pi), as an SNF block adds its backward kernel (SNF eq. 8), so path weights are
p(y) pi(A | y) / q(y, A) and FAB's AIS runs below it; log q(y) from a backward path is a lower bound in expectation.
The joint vector is z = [y, b, c], b = H^T A, c = sqrt(N) mean(A): orthogonal coordinates of A. Base:
y ~ N(0, s^2 I), A | y ~ N(H y, eta^2 I).

Coupling layers alternate between A given X and X given A. An EGNN (Satorras et al. 2021) of the conditioning points
P gives each particle an origin o_i = p_i + v_i^0, a shift s_i, a frame Q_i (Gram-Schmidt of v_i^1 .. v_i^d; every
v = sum_j (p_i - p_j) w_ij, w invariant), log-scales a_i and a spline g_i. With u = x_i - o_i and
sigma = log(|u| / l):

    u -> u exp(g_i(sigma) - sigma)                           log|det| = log g_i'(sigma) + d (g_i(sigma) - sigma)
    phi -> h_i(phi)  (angular: true)                        log|det| = log h_i'(phi)
    u -> Q_i diag(exp(a~_i)) Q_i^T u + s_i,   x_i' = o_i + u,  log|det| = sum_k a~_ik = sum_k a_ik
    a~_ik = mean_k a_ik + t_i (a_ik - mean_k a_ik),           t_i = prod_k R_kk^2 / (R_kk^2 + (0.1 l)^2)

(R_kk from the frame's QR), phi = atan2(v_2, v_1) the angle of v = Q_i^T u in its first two axes (the azimuth in
3-D) and h_i a circular spline whose parameters are scaled by t_i: where a frame is ill-determined the scaling
fades to isotropic and the angle's map to the identity, so rounding is not amplified. After X moves, X' and A are
shifted by -mean(X'), which keeps y centre-of-mass free and leaves the log-determinant unchanged (the unshifted map
commutes with joint translations) and b unchanged, so forward and inverse build the same frames from the same
floats.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Base, Layer
from boltzflow.flows.coupling import get_activation
from boltzflow.flows.spline import rq_spline_forward, rq_spline_inverse, rq_spline_params
from boltzflow.sharding import shard_batch
from boltzflow.targets.particles import helmert_coordinates, helmert_positions

#: radial basis functions of a distance (in units of the target's length scale) that the EGNN's messages see
N_RBF = 16
#: the radial spline acts on log(|x - o| / l) in [-RADIAL_BOUND, RADIAL_BOUND] (distances from 0.05 l to 20 l),
#: and is the identity outside
RADIAL_BOUND = 3.0
#: a frame's scales act along its axes in full once the parts |R_kk| of its vectors that fix them exceed this
#: fraction of the length scale; below, they fade to their mean (module docstring)
FRAME_TRUST = 0.1


def unpack(z: jax.Array, n: int, d: int):
    """The joint vector ``z = [y, b, c]`` -> (X, A - mean A, mean A) as ``(B, n, d), (B, n, d), (B, 1, d)``."""
    m = (n - 1) * d
    centre = z[:, 2 * m:].reshape(-1, 1, d) / math.sqrt(n)
    return helmert_positions(z[:, :m], n, d), helmert_positions(z[:, m: 2 * m], n, d), centre


def pack(y: jax.Array, b: jax.Array, a: jax.Array) -> jax.Array:
    """``[y, b, c]`` with c = sqrt(n) mean A of the points ``a`` ``(B, n, d)``; ``b`` (H^T A) is computed from ``a``
    when None."""
    b = helmert_coordinates(a) if b is None else b
    return jnp.concatenate([y, b, math.sqrt(a.shape[1]) * jnp.mean(a, axis=1)], axis=1)


def _gaussian_log_prob(a: jax.Array, mean: jax.Array, scale: float) -> jax.Array:
    """log N(a; mean, scale^2 I) of ``(b, n, d)`` points, summed per sample."""
    k = a.shape[1] * a.shape[2]
    r = (a - mean) / scale
    return -0.5 * jnp.sum(r * r, axis=(1, 2)) - k * (math.log(scale) + 0.5 * math.log(2 * math.pi))


def orthonormal_frame(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Gram-Schmidt frame of the rows of ``v`` ``(d, d)`` and how well it is determined: ``Q`` with orthonormal
    columns, ``Q[:, k]`` in the span of ``v[:k + 1]`` with a positive component along ``v[k]``, and ``|R_kk|``, the
    part of ``v[k]`` orthogonal to the earlier rows (rotation invariant). Equivariant: the frame of ``v R^T`` is
    ``R Q`` for any orthogonal R. Householder QR keeps Q orthonormal to rounding however ill-conditioned ``v`` is."""
    q, r = jnp.linalg.qr(v.T)
    diag = jnp.diagonal(r)
    return q * jnp.where(diag < 0, -1.0, 1.0).astype(v.dtype), jnp.abs(diag)


class EGNN(eqx.Module):
    """Invariant features and equivariant vectors of one configuration of identical points (Satorras et al. 2021).

    ``__call__(p)`` with ``p`` ``(n, d)`` returns per point: invariant parameters ``theta (n, out)`` (the head
    starts at zero), an origin ``p_i + v_i^0`` and a shift ``s_i`` (zero at the start) ``(n, d)``, and the frame of
    v_i^1 .. v_i^d with its ``|R_kk|`` (:func:`orthonormal_frame`).
    """

    embedding: jax.Array
    edges: tuple[eqx.nn.MLP, ...]
    nodes: tuple[eqx.nn.MLP, ...]
    vectors: eqx.nn.Linear
    shift: eqx.nn.Linear
    head: eqx.nn.MLP
    length: float = eqx.field(static=True)

    def __init__(self, key, spatial_dim: int, out_size: int, length: float, hidden: int = 32, blocks: int = 3,
                 activation: str = "silu", dtype=jnp.float32):
        act = get_activation(activation)
        keys = jax.random.split(key, 2 * blocks + 3)
        self.embedding = jax.random.normal(keys[0], (hidden,), dtype)
        mlp = dict(width_size=hidden, depth=1, activation=act, dtype=dtype)
        self.edges = tuple(eqx.nn.MLP(2 * hidden + N_RBF, hidden, key=keys[1 + b], final_activation=act, **mlp)
                           for b in range(blocks))
        self.nodes = tuple(eqx.nn.MLP(2 * hidden, hidden, key=keys[1 + blocks + b], **mlp) for b in range(blocks))
        self.vectors = eqx.nn.Linear(hidden, spatial_dim + 1, key=keys[-2], dtype=dtype)
        self.shift = _zero(eqx.nn.Linear(hidden, 1, key=keys[-2], dtype=dtype))
        head = eqx.nn.MLP(hidden, out_size, key=keys[-1], **mlp)
        self.head = eqx.tree_at(lambda m: m.layers[-1], head, _zero(head.layers[-1]))
        self.length = float(length)

    def __call__(self, p: jax.Array):
        n, d = p.shape
        r = p[:, None, :] - p[None, :, :]
        dist = jnp.sqrt(jnp.sum(r * r, axis=-1) + 1e-12) / self.length
        centres = jnp.linspace(0.0, 3.0, N_RBF, dtype=p.dtype)
        rbf = jnp.exp(-((dist[..., None] - centres) ** 2) * (N_RBF / 3.0) ** 2)
        off = (1.0 - jnp.eye(n, dtype=p.dtype))[..., None]
        h = jnp.broadcast_to(self.embedding, (n, self.embedding.shape[0]))
        m = None
        for edge, node in zip(self.edges, self.nodes):
            pairs = jnp.concatenate([jnp.broadcast_to(h[:, None], (n, n, h.shape[1])),
                                     jnp.broadcast_to(h[None, :], (n, n, h.shape[1])), rbf], axis=-1)
            m = jax.vmap(jax.vmap(edge))(pairs) * off
            h = h + jax.vmap(node)(jnp.concatenate([h, m.sum(axis=1) / (n - 1)], axis=-1))
        w = jnp.concatenate([jax.vmap(jax.vmap(self.vectors))(m), jax.vmap(jax.vmap(self.shift))(m)], -1) * off
        v = jnp.einsum("ijc,ijk->ick", w, r) / (n - 1)  # (n, d + 2, d): equivariant, translation invariant
        frame, r_diag = jax.vmap(orthonormal_frame)(v[:, 1: d + 1])
        return jax.vmap(self.head)(h), p + v[:, 0], v[:, d + 1], frame, r_diag


def _zero(linear: eqx.nn.Linear) -> eqx.nn.Linear:
    return eqx.tree_at(lambda m: (m.weight, m.bias), linear, (jnp.zeros_like(linear.weight),
                                                              jnp.zeros_like(linear.bias)))


class AugmentedBase(Base):
    """q0(y, A) = N(y; 0, s^2 I) N(A; H y, eta^2 I) on the joint vector [y, b, c] (module docstring).

    Args:
        n_particles, spatial_dim: N and d.
        scale: s.
        augment_scale: eta.
        dtype: float32 or float64.
    """

    n_particles: int = eqx.field(static=True)
    spatial_dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    augment_scale: float = eqx.field(static=True)
    dtype: np.dtype = eqx.field(static=True)

    def __init__(self, n_particles: int, spatial_dim: int, scale: float, augment_scale: float, dtype=jnp.float32):
        if not (scale > 0 and augment_scale > 0):
            raise BoltzflowError(f"the base's scales must be positive, got {scale}, {augment_scale}")
        self.n_particles, self.spatial_dim = int(n_particles), int(spatial_dim)
        self.scale, self.augment_scale = float(scale), float(augment_scale)
        self.dim = (2 * self.n_particles - 1) * self.spatial_dim
        self.dtype = np.dtype(dtype)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        ky, ka = jax.random.split(key)
        y = self.scale * jax.random.normal(ky, (n, (self.n_particles - 1) * self.spatial_dim), self.dtype)
        x = helmert_positions(y, self.n_particles, self.spatial_dim)
        return shard_batch(pack(y, None, x + self.augment_scale * jax.random.normal(ka, x.shape, self.dtype)))

    def log_prob(self, z: jax.Array) -> jax.Array:
        x, a_centred, centre = unpack(z, self.n_particles, self.spatial_dim)
        y = z[:, : (self.n_particles - 1) * self.spatial_dim] / self.scale
        log_y = -0.5 * jnp.sum(y * y, axis=1) - y.shape[1] * (math.log(self.scale) + 0.5 * math.log(2 * math.pi))
        return log_y + _gaussian_log_prob(a_centred + centre, x, self.augment_scale)


class EquivariantCoupling(Layer):
    """One E-ACF coupling layer: the points ``update`` ("x" or "a") move in frames built from the other set
    (module docstring); the identity at initialisation.

    Args:
        key: PRNG key of the EGNN.
        n_particles, spatial_dim: N and d.
        update: ``"x"`` (the positions, conditioned on A; the centre of mass is shifted back to 0) or ``"a"``.
        length: the target's length scale (its pair potential's preferred distance): the EGNN's distances are in
            this unit and frames are trusted once their vectors' independent parts exceed :data:`FRAME_TRUST` of it.
        max_log_scale: bound c on each log-scale, a = c tanh(u / c).
        bins: bins of the radial spline (and of the angular one).
        angular: also a circular spline of each point's angle about its frame's last axes (module docstring).
        hidden, blocks, activation: EGNN width, message-passing blocks, activation.
        dtype: parameter dtype.
    """

    net: EGNN
    n_particles: int = eqx.field(static=True)
    spatial_dim: int = eqx.field(static=True)
    update: str = eqx.field(static=True)
    max_log_scale: float = eqx.field(static=True)
    bins: int = eqx.field(static=True)
    angular: bool = eqx.field(static=True)

    def __init__(self, key, n_particles: int, spatial_dim: int, update: str, length: float,
                 max_log_scale: float = 3.0, bins: int = 8, hidden: int = 32, blocks: int = 3,
                 activation: str = "silu", dtype=jnp.float32, angular: bool = False):
        if update not in ("x", "a"):
            raise BoltzflowError(f"update must be 'x' or 'a', got {update!r}")
        self.n_particles, self.spatial_dim, self.update = int(n_particles), int(spatial_dim), update
        self.max_log_scale, self.bins, self.angular = float(max_log_scale), int(bins), bool(angular)
        n_out = spatial_dim + 3 * self.bins * (2 if self.angular else 1)
        self.net = EGNN(key, spatial_dim, n_out, length, hidden, blocks, activation, dtype)

    def _angle(self, v, raw, inverse: bool):
        """Frame coordinates v (B, n, d) -> the angle phi = atan2(v_2, v_1) of the first two moved by the circular
        spline of ``raw`` (B, n, 3K) on [-pi, pi), the other coordinates and rho = |(v_1, v_2)| kept, and the
        log-determinant per configuration (B,), the sum of log g'(phi) over its points (rho d rho d phi is the area
        element; in 3-D phi is the azimuth about the third axis). Points with rho = 0 stay where they are; without
        ``angular`` nothing moves."""
        if not self.angular:
            return v, 0.0
        rho2 = v[..., 0] ** 2 + v[..., 1] ** 2
        on_axis = rho2 == 0
        phi = jnp.arctan2(jnp.where(on_axis, 0.0, v[..., 1]), jnp.where(on_axis, 1.0, v[..., 0]))
        w, h, dv = rq_spline_params(raw, True)
        phi_new, log_d = (rq_spline_inverse if inverse else rq_spline_forward)(phi, w, h, dv, math.pi, True)
        rho = jnp.sqrt(jnp.where(on_axis, 1.0, rho2))
        first = jnp.where(on_axis[..., None], v[..., :2],
                          rho[..., None] * jnp.stack([jnp.cos(phi_new), jnp.sin(phi_new)], axis=-1))
        return jnp.concatenate([first, v[..., 2:]], axis=-1), jnp.sum(jnp.where(on_axis, 0.0, log_d), axis=1)

    def _radial(self, u, raw, inverse: bool):
        """u (B, n, d) -> u r'/r, r = |u|, with s' = g(s) for s = log(r / l) and g the spline of ``raw`` (the
        identity outside [-RADIAL_BOUND, RADIAL_BOUND]), and the log-determinant per point, log g'(s) + d (s' - s)
        forward; the inverse computes s = g^-1(s') and its log-determinant is the same expression in its own
        variables. Radii below l exp(-RADIAL_BOUND - 1) are left alone exactly (the spline's identity tail)."""
        floor = (self.net.length * math.exp(-RADIAL_BOUND - 1.0)) ** 2
        s = 0.5 * jnp.log(jnp.maximum(jnp.sum(u * u, axis=-1), floor)) - math.log(self.net.length)
        w, h, dv = rq_spline_params(raw, False)
        s_new, log_d = (rq_spline_inverse if inverse else rq_spline_forward)(s, w, h, dv, RADIAL_BOUND, False)
        return u * jnp.exp(s_new - s)[..., None], log_d + self.spatial_dim * (s_new - s)

    def _apply(self, z: jax.Array, inverse: bool):
        n, d = self.n_particles, self.spatial_dim
        m = (n - 1) * d
        x, a_centred, centre = unpack(z, n, d)
        # the conditioning points enter as the very floats that the layer passes on (y, or A's b), so forward and
        # inverse build the same frames: A's are built from its centred points and moved by its centre
        theta, origin, shift, frame, r_diag = jax.vmap(self.net)(a_centred if self.update == "x" else x)
        if self.update == "x":
            origin, moved = origin + centre, x
        else:
            moved = a_centred + centre
        c, d_ = self.max_log_scale, self.spatial_dim
        log_scale = c * jnp.tanh(theta[..., :d_] / c)  # (B, n, d)
        mean = jnp.mean(log_scale, axis=-1, keepdims=True)
        trust = jnp.prod(r_diag**2 / (r_diag**2 + (FRAME_TRUST * self.net.length) ** 2), axis=-1, keepdims=True)
        log_scale = mean + trust * (log_scale - mean)  # isotropic where the frame is ill-determined
        k3 = 3 * self.bins
        radial_raw = theta[..., d_: d_ + k3]
        to_frame = lambda u: jnp.einsum("bikl,bik->bil", frame, u)  # noqa: E731  Q^T u
        from_frame = lambda v: jnp.einsum("bikl,bil->bik", frame, v)  # noqa: E731  Q v
        # the angle's spline fades to the identity (raw 0) where the frame is ill-determined, as the scaling does
        angle_raw = trust * theta[..., d_ + k3:] if self.angular else None
        if inverse:
            v, log_angle = self._angle(to_frame(moved - shift - origin) * jnp.exp(-log_scale), angle_raw, True)
            u, log_radial = self._radial(from_frame(v), radial_raw, True)
            log_det = jnp.sum(log_radial, axis=1) + log_angle - jnp.sum(log_scale, axis=(1, 2))
        else:
            u, log_radial = self._radial(moved - origin, radial_raw, False)
            v, log_angle = self._angle(to_frame(u), angle_raw, False)
            u = from_frame(v * jnp.exp(log_scale)) + shift
            log_det = jnp.sum(log_radial, axis=1) + log_angle + jnp.sum(log_scale, axis=(1, 2))
        moved = origin + u
        if self.update == "a":
            return pack(z[:, :m], None, moved), log_det
        com = jnp.mean(moved, axis=1, keepdims=True)  # centre of mass back to 0 and A moved with it (forward: by
        centre = centre - com  # -mean X'; inverse: the forward's shift undone); A's b unchanged
        out = [helmert_coordinates(moved - com), z[:, m: 2 * m], math.sqrt(n) * centre[:, 0]]
        return jnp.concatenate(out, axis=1), log_det

    def forward(self, z, key=None):
        return self._apply(z, inverse=False)

    def inverse(self, z, key=None):
        return self._apply(z, inverse=True)


class DropAugmented(Layer):
    """The augmented flow's last layer: ``(y, A) -> y`` with dS = log pi(A | y), pi = N(H y, eta^2 I); inverse
    ``y -> (y, A)``, A ~ pi (module docstring). It has no parameters; samplers of the model (FAB's AIS) run below
    it, on the joint target p(y) pi(A | y) (``coordinate_map``)."""

    n_particles: int = eqx.field(static=True)
    spatial_dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, n_particles: int, spatial_dim: int, scale: float):
        if not scale > 0:
            raise BoltzflowError(f"the augmented target's scale must be positive, got {scale}")
        self.n_particles, self.spatial_dim, self.scale = int(n_particles), int(spatial_dim), float(scale)

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def coordinate_map(self) -> bool:
        return True

    def out_dim(self, in_dim: int) -> int:
        return in_dim - self.n_particles * self.spatial_dim

    def forward(self, z, key=None):
        x, a_centred, centre = unpack(z, self.n_particles, self.spatial_dim)
        return z[:, : (self.n_particles - 1) * self.spatial_dim], _gaussian_log_prob(a_centred + centre, x,
                                                                                      self.scale)

    def inverse(self, y, key=None):
        if key is None:
            raise BoltzflowError("DropAugmented.inverse draws the augmented points: it needs a key")
        x = helmert_positions(y, self.n_particles, self.spatial_dim)
        a = x + self.scale * jax.random.normal(key, x.shape, y.dtype)
        return pack(y, None, a), -_gaussian_log_prob(a, x, self.scale)
