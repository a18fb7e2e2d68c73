"""Ready-made flows: RealNVP (Dinh et al. 2017) and neural spline flows (Durkan et al. 2019) with circular dims,
and the diagonal Gaussian without layers (``gaussian``) as a baseline.

Layout. Coupling layers come in complementary pairs (A, B): A transforms a random half of the real dimensions and
a random half of the circular ones, B transforms the rest, so every dimension is transformed once per pair and each
is conditioned on dimensions of both kinds. A fresh random split per pair plays the role of the permutations
between layers in RealNVP / NSF, but without moving data, so a new flow is exactly the identity map
(y == x, log|det J| == 0). An odd ``n_layers`` adds one final A-type layer.

Unrolled or scanned. All pairs share one structure (the split is data, see :class:`Coupling`), so with
``scan=True`` they are stacked and run by ``jax.lax.scan`` (:class:`boltzflow.flows.compose.Scan`): trace and
compile time stay flat in depth. The default is unrolled: on CPU (jax 0.10, 10-12 layers, batch 1024) the unrolled
flow's log q + gradient ran ~15-20% faster and compiled about as fast as the scanned one; scanning pays off for
deep flows, whose unrolled trace and compile time grows with depth.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.flows.base import Flow
from boltzflow.flows.compose import Chain, stack_layers
from boltzflow.flows.coupling import Affine, Coupling, RQSpline
from boltzflow.flows.distributions import StandardBase, circular_mask
from boltzflow.flows.equivariant import AugmentedBase, DropAugmented, EquivariantCoupling
from boltzflow.flows.internal import InternalCoordinates
from boltzflow.flows.permutation import LULinear
from boltzflow.flows.standardize import Standardize
from boltzflow.settings import Tagged, from_signature, parse_tagged

_DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


def _dtype(dtype):
    """'float32' / 'float64' or a dtype -> a numpy floating dtype; float64 requires jax_enable_x64."""
    if isinstance(dtype, str) and dtype not in _DTYPES:
        raise BoltzflowError(f"unknown dtype {dtype!r}; expected float32 or float64")
    dtype = np.dtype(_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype)
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise BoltzflowError("dtype float64 needs 64-bit JAX: jax.config.update('jax_enable_x64', True) first")
    if dtype not in (np.float32, np.float64):
        raise BoltzflowError(f"flows support float32 or float64, got {dtype}")
    return dtype


def _random_split(key, circ: np.ndarray) -> np.ndarray:
    """Mask of the A layer: ceil(n_real / 2) random real dims and floor(n_circ / 2) random circular dims.

    This choice makes both A and its complement B non-empty whenever dim >= 2.
    """
    mask = np.zeros(circ.shape[0], bool)
    for group, take in ((np.flatnonzero(~circ), lambda n: n - n // 2), (np.flatnonzero(circ), lambda n: n // 2)):
        key, sub = jax.random.split(key)
        chosen = np.asarray(jax.random.permutation(sub, len(group)))[: take(len(group))]
        mask[group[chosen]] = True
    return mask


def _coupling_flow(key, dim, n_layers, circ, transformer, lu, base, scan, **mlp) -> Flow:
    """Coupling pairs (module docstring), each followed by an LU map of the real dimensions when ``lu`` and there
    is a real dimension to mix."""
    if dim < 2:
        raise BoltzflowError(f"coupling flows need dim >= 2, got dim={dim}")
    if n_layers < 1:
        raise BoltzflowError(f"n_layers must be >= 1, got {n_layers}")
    keys = jax.random.split(key, n_layers // 2 + 1)
    pairs = []
    for k in keys[: n_layers // 2]:
        ks, ka, kb = jax.random.split(k, 3)
        mask = _random_split(ks, circ)
        pairs.append([Coupling(ka, mask, transformer, circ, **mlp), Coupling(kb, ~mask, transformer, circ, **mlp)])
        if lu and not circ.all():
            pairs[-1].append(LULinear(dim, circ, dtype=mlp["dtype"]))
    if scan and pairs:
        layers = [stack_layers(Chain(pair) for pair in pairs)]
    else:
        layers = [layer for pair in pairs for layer in pair]
    if n_layers % 2:
        ks, ka = jax.random.split(keys[-1])
        layers.append(Coupling(ka, _random_split(ks, circ), transformer, circ, **mlp))
    return Flow(base, tuple(layers))


def make_realnvp(
    key,
    dim: int,
    n_layers: int = 10,
    hidden: int = 64,
    depth: int = 2,
    activation: str = "silu",
    max_log_scale: float = 3.0,
    lu: bool = True,
    learn_base: bool = False,
    scan: bool = False,
    loc: float | list[float] | None = None,
    scale: float | list[float] | None = None,
    rotation: list[list[float]] | None = None,
    dtype=jnp.float32,
) -> Flow:
    """RealNVP: ``n_layers`` affine coupling layers on R^dim, identity at initialisation.

    Args:
        key: PRNG key (conditioner initialisation and the random splits).
        dim: dimension (>= 2).
        n_layers: number of coupling layers (pairs of complementary masks, plus one if odd).
        hidden: width of each conditioner MLP.
        depth: hidden layers of each conditioner MLP.
        activation: the conditioners' activation (a ``jax.nn`` name: silu, relu, gelu, tanh, ...).
        max_log_scale: bound c on the per-dimension log-scale, a = c tanh(u / c) (see :class:`Affine`).
        lu: a learnable LU-parameterised linear map of the real dimensions after every pair (identity at init;
            :class:`~boltzflow.flows.permutation.LULinear`), so the flow does not depend on the target's axes.
        learn_base: learnable mean and log-scale of the Gaussian base.
        scan: run the layer pairs with ``jax.lax.scan`` (compile time flat in depth) instead of unrolled (see the
            module docstring for the trade-off).
        loc: the fixed last layer x = loc + rotation (scale * y) (:class:`~boltzflow.flows.standardize.Standardize`)
            that lets the flow model standardized coordinates y: a number or one per dimension; None for all three
            of loc, scale, rotation: the flow models x itself.
        scale: that layer's scale, a number or one per dimension.
        rotation: that layer's rotation, a d x d matrix whose columns are the target's axes (boltzflow.frame).
        dtype: float32 (default) or float64 (needs ``jax_enable_x64``).

    Returns:
        The :class:`~boltzflow.flows.base.Flow`.

    Example:
        >>> flow = make_realnvp(jax.random.key(0), 4, n_layers=4, hidden=16)
        >>> x, log_q = flow.sample_and_log_prob(jax.random.key(1), 8)
    """
    dtype = _dtype(dtype)
    circ = np.zeros(dim, bool)
    base = StandardBase(dim, learnable=learn_base, dtype=dtype)
    mlp = dict(hidden=hidden, depth=depth, activation=activation, dtype=dtype)
    flow = _coupling_flow(key, dim, n_layers, circ, Affine(float(max_log_scale)), lu, base, scan, **mlp)
    return _standardized(flow, loc, scale, rotation, circ)


def make_nsf(
    key,
    dim: int,
    n_layers: int = 12,
    circular: list[int] | None = None,
    bins: int = 8,
    bound: float = 5.0,
    hidden: int = 64,
    depth: int = 2,
    activation: str = "silu",
    min_bin: float = 1e-3,
    min_derivative: float = 1e-3,
    lu: bool = True,
    learn_base: bool = False,
    scan: bool = False,
    loc: float | list[float] | None = None,
    scale: float | list[float] | None = None,
    rotation: list[list[float]] | None = None,
    dtype=jnp.float32,
) -> Flow:
    """Neural spline flow: ``n_layers`` rational-quadratic spline couplings, identity at initialisation.

    Real dimensions: splines on [-bound, bound] with identity tails and a N(0, 1) base. Circular dimensions:
    periodic splines on [-pi, pi) and a uniform base; their values stay in [-pi, pi).

    Args:
        key: PRNG key (conditioner initialisation and the random splits).
        dim: dimension (>= 2).
        n_layers: number of coupling layers (pairs of complementary masks, plus one if odd).
        circular: the circular dimensions (angles), a bool mask or a list of indices; None: none.
        bins: spline bins K per dimension.
        bound: the real dimensions' splines act on [-bound, bound] and are the identity outside.
        hidden: width of each conditioner MLP.
        depth: hidden layers of each conditioner MLP.
        activation: the conditioners' activation (a ``jax.nn`` name).
        min_bin: the smallest bin width and height, as a fraction of the interval.
        min_derivative: the smallest derivative of a spline at a knot.
        lu: a learnable LU-parameterised linear map after every pair, of the real dimensions only (circular ones
            are only ever split differently by the next pair); identity at init.
        learn_base: learnable mean and log-scale of the Gaussian base (real dimensions).
        scan: run the layer pairs with ``jax.lax.scan`` (compile time flat in depth) instead of unrolled.
        loc: a fixed last layer x = loc + rotation (scale * y), as :func:`make_realnvp`'s (circular dimensions keep
            loc 0, scale 1 and allow no rotation).
        scale: that layer's scale.
        rotation: that layer's rotation.
        dtype: float32 (default) or float64 (needs ``jax_enable_x64``).

    Returns:
        The :class:`~boltzflow.flows.base.Flow`.

    Example:
        >>> flow = make_nsf(jax.random.key(0), 3, n_layers=4, circular=[2])
        >>> x, log_q = flow.sample_and_log_prob(jax.random.key(1), 8)
    """
    dtype = _dtype(dtype)
    if bins < 1 or not bound > 0:
        raise BoltzflowError(f"make_nsf needs bins >= 1 and bound > 0, got bins={bins}, bound={bound}")
    circ = circular_mask(dim, circular)
    spline = RQSpline(int(bins), float(bound), float(min_bin), float(min_derivative))
    base = StandardBase(dim, circ, learnable=learn_base, dtype=dtype)
    mlp = dict(hidden=hidden, depth=depth, activation=activation, dtype=dtype)
    flow = _coupling_flow(key, dim, n_layers, circ, spline, lu, base, scan, **mlp)
    return _standardized(flow, loc, scale, rotation, circ)


def _standardized(flow: Flow, loc, scale, rotation, circ: np.ndarray) -> Flow:
    """``flow`` followed by x = loc + rotation (scale * y) when any of the three is given; circular dimensions keep
    loc 0 and scale 1 (an angle's range is fixed) and allow no rotation (it would mix an angle with a line)."""
    if loc is None and scale is None and rotation is None:
        return flow
    dim = circ.shape[0]
    if circ.any() and rotation is not None:
        raise BoltzflowError("rotation is for flows without circular dimensions")
    layer = Standardize(dim, 0.0 if loc is None else loc, 1.0 if scale is None else scale, rotation)
    if circ.any() and (np.asarray(layer.loc)[circ].any() or (np.asarray(layer.scale)[circ] != 1).any()):
        raise BoltzflowError("loc and scale must leave the circular dimensions as they are (loc 0, scale 1)")
    return Flow(flow.base, flow.layers + (layer,))


def make_gaussian(key, dim: int, dtype=jnp.float32) -> Flow:
    """A diagonal Gaussian with learnable mean and log-scale: the base distribution alone, no layers (the
    mean-field baseline; as a VAE's posterior, boltzflow.vae, the encoder's Gaussian alone, the naive one)."""
    return Flow(StandardBase(dim, learnable=True, dtype=_dtype(dtype)), ())


def make_eacf(
    key,
    dim: int,
    particles: tuple[int, int, float],
    n_layers: int = 12,
    hidden: int = 32,
    blocks: int = 3,
    activation: str = "silu",
    max_log_scale: float = 3.0,
    bins: int = 8,
    augment_scale: float = 0.1,
    base_scale: float = 0.5,
    angular: bool = False,
    dtype=jnp.float32,
) -> Flow:
    """An E(n)-equivariant augmented coupling flow (E-ACF) for a particle target
    (:mod:`boltzflow.flows.equivariant`): ``n_layers`` coupling layers alternating between the augmented points
    and the positions, identity at initialisation, then :class:`~boltzflow.flows.equivariant.DropAugmented`.

    Args:
        key: PRNG key.
        dim: (N - 1) d, the target's centre-of-mass-free dimension.
        particles: (N, d, length) of the target (``ParticleTarget.particles``); scales below are in its length.
        n_layers: coupling layers (>= 2; even numbers update A and X equally often).
        hidden: width of each layer's EGNN.
        blocks: its message-passing blocks.
        activation: its activation.
        max_log_scale: bound c on the log-scales, a = c tanh(u / c).
        bins: bins of each layer's radial spline (of log distance to the origin).
        augment_scale: eta / length, the augmented target's (and the base's) spread of A around the positions.
        base_scale: s / length, the spread of the base's centre-of-mass-free coordinates.
        angular: each layer also moves each point's angle about its frame's last axes by a circular spline (the
            polar angle in 2-D, the azimuth in 3-D), besides its radius.
        dtype: float32 (default) or float64.

    Example:
        >>> import jax, boltzflow as bf
        >>> t = bf.make_target("dw4")
        >>> flow = make_eacf(jax.random.key(0), t.dim, t.particles, n_layers=2)
        >>> flow.sample(jax.random.key(1), 3).shape
        (3, 6)
    """
    dtype = _dtype(dtype)
    n, d, length = int(particles[0]), int(particles[1]), float(particles[2])
    if dim != (n - 1) * d:
        raise BoltzflowError(f"eacf: {n} particles in {d} dimensions have {(n - 1) * d} coordinates, not {dim}")
    if n_layers < 2:
        raise BoltzflowError(f"eacf needs n_layers >= 2, got {n_layers}")
    net = dict(max_log_scale=max_log_scale, bins=bins, hidden=hidden, blocks=blocks, activation=activation, dtype=dtype,
               angular=angular)
    layers = tuple(EquivariantCoupling(k, n, d, "a" if i % 2 == 0 else "x", length, **net)
                   for i, k in enumerate(jax.random.split(key, n_layers)))
    base = AugmentedBase(n, d, base_scale * length, augment_scale * length, dtype)
    return Flow(base, layers + (DropAugmented(n, d, augment_scale * length),))


FLOW_TYPES = {"realnvp": make_realnvp, "nsf": make_nsf, "gaussian": make_gaussian, "eacf": make_eacf}
COORDINATES = ("cartesian", "internal")


@dataclasses.dataclass(frozen=True)
class CoordinateSettings:
    """Which coordinates the flow models: ``cartesian`` (x itself) or, for a molecular target, ``internal``
    (bonds, angles, dihedrals of a Z-matrix from the bond graph, normalised around the energy minimum): the flow
    then models the 3N - 6 internal coordinates, with the dihedrals of rotatable bonds circular, and
    :class:`~boltzflow.flows.internal.InternalCoordinates` is its last layer (nsf: torsions circular; realnvp:
    torsions on the real line, see :func:`_internal_flow`)."""

    coordinates: str = "cartesian"  # cartesian, or internal for a molecule (bonds, angles, dihedrals)

    def __post_init__(self):
        if self.coordinates not in COORDINATES:
            raise BoltzflowError(f"coordinates must be one of {', '.join(COORDINATES)}, got {self.coordinates!r}")


#: Settings of each flow type (a frozen dataclass per type, made from the builder's keyword arguments, so the
#: defaults live in one place: the signatures above). The dtype is not a flow setting: it is the run's
#: ``train.dtype``.
FLOW_SETTINGS = {name: from_signature(fn, f"{name.upper()}Settings", ("key", "dim", "dtype", "particles"),
                                      bases=(CoordinateSettings,))
                 for name, fn in FLOW_TYPES.items()}


def make_flow(spec, key, dim: int, dtype=jnp.float32, molecule=None, particles=None) -> Flow:
    """Build a flow from its settings: a :class:`~boltzflow.settings.Tagged` (``name`` in :data:`FLOW_TYPES`) or a
    mapping ``{"type": "realnvp" | "nsf" | ..., "coordinates": ..., **keyword arguments of its builder}``.
    ``coordinates: internal`` needs the target's ``molecule`` (a MolecularSystem), ``type: eacf`` its
    ``particles`` (N, d, length)."""
    if not isinstance(spec, Tagged):
        spec = parse_tagged(spec, FLOW_SETTINGS, "type", "flow")
    options = dataclasses.asdict(spec.settings)
    if options.pop("coordinates") == "internal":
        return _internal_flow(spec.name, options, key, dim, dtype, molecule)
    if spec.name == "eacf":
        if particles is None:
            raise BoltzflowError("flow type eacf is for particle targets (dw4, lj13, lj55)")
        options["particles"] = particles
    try:
        return FLOW_TYPES[spec.name](key, dim, dtype=dtype, **options)
    except BoltzflowError:
        raise
    except (TypeError, ValueError) as err:  # e.g. an activation name that does not exist
        raise BoltzflowError(f"bad options for flow type {spec.name!r}: {err}") from None


def _internal_flow(name: str, options: dict, key, dim: int, dtype, molecule) -> Flow:
    """A flow on a molecule's normalised internal coordinates followed by the internal-coordinate layer.

    nsf models the torsions of rotatable bonds as circles (exact densities). realnvp has no circular dimensions:
    it models them on the real line, as the SNF paper's RealNVP on internal coordinates does; a sample's torsion
    outside [-pi, pi) is the same angle wrapped, but log q(x) (the inverse, which wraps into [-pi, pi)) counts
    only the preimage inside, so it is exact only while q puts negligible mass outside that interval."""
    if molecule is None:
        raise BoltzflowError("flow coordinates: internal needs a molecular target (aldp_implicit, aldp_vacuum, "
                             "molecule)")
    ic = InternalCoordinates(molecule)
    if ic.data_dim != dim:
        raise BoltzflowError(f"the molecule has {ic.data_dim} Cartesian coordinates, the target {dim}")
    if options.get("circular"):
        raise BoltzflowError("flow coordinates: internal chooses the circular dimensions itself (the torsions of "
                             "rotatable bonds); leave circular unset")
    if any(options.get(k) is not None for k in ("loc", "scale", "rotation")):
        raise BoltzflowError("flow coordinates: internal normalises the coordinates itself (around the energy "
                             "minimum); leave loc, scale and rotation unset")
    if name == "nsf":
        options["circular"] = ic.circular_indices
    inner = FLOW_TYPES[name](key, ic.latent_dim, dtype=_dtype(dtype), **options)
    return Flow(inner.base, inner.layers + (ic,))
