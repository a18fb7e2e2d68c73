"""Flows: exact identity at init, inverses, log-determinants against autodiff Jacobians, normalisation, circles."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from boltzflow.errors import BoltzflowError
from boltzflow.flows import (
    Affine,
    Coupling,
    Flow,
    LULinear,
    Permutation,
    RQSpline,
    StandardBase,
    make_flow,
    make_nsf,
    make_realnvp,
)
from boltzflow.flows.paths import model_space
from boltzflow.flows.spline import wrap_angle
from boltzflow.flows.standardize import Standardize

PI = np.float32(math.pi)
SMALL = dict(hidden=16, depth=1)


def randomise(model, key, scale):
    """Move every zero-initialised float leaf (conditioner output layers, LU factors) off the identity."""
    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(arrays)
    keys = jax.random.split(key, len(leaves))
    leaves = [a + scale * jax.random.normal(k, a.shape, a.dtype) * (not np.any(a)) for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


def circ_of(flow):
    return np.asarray(flow.base.circular)


def dist(a, b, circ):
    """Elementwise distance, modulo 2 pi on circular dimensions."""
    return jnp.where(circ, jnp.abs(wrap_angle(a - b)), jnp.abs(a - b))


@eqx.filter_jit
def roundtrip(flow, z):
    x, ld = flow.forward(z)
    z2, ld_inv = flow.inverse(x)
    return x, ld, z2, ld_inv


@eqx.filter_jit
def jacobian_logdets(layer, x):
    """(forward log|det|, slogdet of the autodiff forward Jacobian, the same two for the inverse) per sample."""

    def fwd(v):
        return layer.forward(v[None])[0][0]

    def inv(v):
        return layer.inverse(v[None])[0][0]

    y, ld = layer.forward(x)
    _, ld_inv = layer.inverse(y)
    jf = jax.vmap(jax.jacfwd(fwd))(x)
    ji = jax.vmap(jax.jacfwd(inv))(y)
    return ld, jnp.linalg.slogdet(jf)[1], ld_inv, jnp.linalg.slogdet(ji)[1]


N = 256  # one batch size everywhere, so compiled functions are reused across tests
FLOWS = {
    "realnvp-lu": lambda key, dim, n_layers=3, **kw: make_realnvp(key, dim, n_layers, lu=True, **SMALL, **kw),
    "nsf": lambda key, dim, n_layers=4, **kw: make_nsf(
        key, dim, n_layers, circular=[1, 3], bins=5, bound=3.0, **SMALL, **kw
    ),
    "nsf-scan": lambda key, dim, n_layers=5, **kw: make_nsf(
        key, dim, n_layers, circular=[0], bins=4, bound=3.0, scan=True, **SMALL, **kw
    ),
}


@pytest.mark.parametrize("name", ["realnvp-lu", "nsf"])
def test_identity_at_init_then_roundtrip_float32(name):
    flow = FLOWS[name](jax.random.key(0), 5)
    circ = circ_of(flow)
    z = flow.base.sample(jax.random.key(1), N)
    z = z.at[:8].multiply(4.0)  # some points in the spline tails
    z = jnp.where(circ, wrap_angle(z), z)
    x, ld, z2, ld_inv = roundtrip(flow, z)
    for a in (x, z2):
        np.testing.assert_array_equal(a, z)
    for a in (ld, ld_inv):
        np.testing.assert_array_equal(a, 0)

    flow = randomise(flow, jax.random.key(2), 0.1)
    x, ld, z2, ld_inv = roundtrip(flow, z)
    assert x.dtype == jnp.float32
    assert float(jnp.abs(ld).max()) > 0.1  # really not the identity
    assert float(dist(x, z, circ).max()) > 0.05
    assert jnp.all(dist(z2, z, circ) <= 1e-5 * jnp.maximum(1, jnp.abs(z)))  # 1e-5, relative beyond |z| = 1
    np.testing.assert_allclose(ld_inv, -ld, rtol=1e-5, atol=1e-5)


def test_roundtrip_float64_without_leaking_x64():
    with jax.enable_x64(True):
        for name in ("nsf",):  # splines with circular dims and an LU map: the float64 paths of every layer kind
            flow = randomise(FLOWS[name](jax.random.key(0), 5, n_layers=2, dtype="float64"), jax.random.key(1), 0.3)
            z = flow.base.sample(jax.random.key(2), N)
            x, ld, z2, ld_inv = roundtrip(flow, z)
            assert x.dtype == ld.dtype == jnp.float64
            assert float(jnp.abs(ld).max()) > 0.3
            assert float(dist(z2, z, circ_of(flow)).max()) < 1e-10
            np.testing.assert_allclose(ld_inv, -ld, atol=1e-10)
    assert jnp.ones(1).dtype == jnp.float32


def _layers(key):
    """One of each layer kind, randomised, on 5 dims with dims 1 and 2 circular where allowed."""
    ks = jax.random.split(key, 4)
    circ = np.array([False, True, True, False, False])
    mask = np.array([True, False, True, False, True])  # transforms real and circular dims, conditions on both
    layers = {
        "affine": (Coupling(ks[0], mask, Affine(), **SMALL), None),
        "spline": (Coupling(ks[1], mask, RQSpline(bins=5, bound=2.0), circ, **SMALL), circ),
        "permutation": (Permutation.random(ks[2], 5), None),
        "lu": (LULinear(5), None),
        "lu-circular": (LULinear(5, circ), circ),
        "standardize": (Standardize(5, loc=[1.0, -2.0, 0.0, 3.0, 0.5], scale=[0.5, 2.0, 3.0, 1.0, 1.5]), None),
    }
    return {name: (randomise(layer, ks[3], 0.3), c) for name, (layer, c) in layers.items()}


@pytest.mark.parametrize("name", ["affine", "spline", "permutation", "lu", "lu-circular", "standardize"])
def test_layer_logdet_matches_autodiff_jacobian(name):
    layer, circ = _layers(jax.random.key(0))[name]
    circ = np.zeros(5, bool) if circ is None else circ
    x = 2.0 * jax.random.normal(jax.random.key(1), (64, 5))  # |x| > bound = 2 (spline tails) for a third of them
    x = jnp.where(circ, wrap_angle(x), x)
    ld, ld_ad, ld_inv, ld_inv_ad = jacobian_logdets(layer, x)
    np.testing.assert_allclose(ld, ld_ad, atol=5e-4)
    np.testing.assert_allclose(ld_inv, ld_inv_ad, atol=5e-4)
    np.testing.assert_allclose(ld_inv, -ld, atol=5e-4)
    x2, _ = layer.inverse(layer.forward(x)[0])
    assert float(dist(x2, x, circ).max()) < 1e-4  # strongly randomised: float32 error is amplified by dx/dy
    if name != "permutation":
        assert float(jnp.abs(ld).max()) > 0.1


@pytest.mark.parametrize("name", ["realnvp-lu", "nsf"])
def test_flow_logdet_matches_autodiff_jacobian(name):
    flow = randomise(FLOWS[name](jax.random.key(3), 5), jax.random.key(4), 0.1)
    z = flow.base.sample(jax.random.key(5), 48)
    z = jnp.where(circ_of(flow), z, z * jnp.linspace(0.5, 4.0, 48)[:, None])  # reach the tails (bound 3)
    ld, ld_ad, ld_inv, ld_inv_ad = jacobian_logdets(flow, z)
    assert float(jnp.abs(ld).max()) > 0.1
    np.testing.assert_allclose(ld, ld_ad, atol=5e-4)
    np.testing.assert_allclose(ld_inv, ld_inv_ad, atol=5e-4)


@pytest.mark.slow  # 15 s in CI: compiles a deep flow twice; the layer-level and round-trip tests stay in CI
def test_scanned_flow_equals_its_unrolled_layers():
    flow = FLOWS["nsf-scan"](jax.random.key(0), 5)
    scan = flow.layers[0]
    assert scan.n == 2 and len(flow.layers) == 2  # two stacked pairs and the odd fifth layer
    z = flow.base.sample(jax.random.key(1), N)
    x, ld, z2, ld_inv = roundtrip(flow, z)
    np.testing.assert_array_equal(x, z)
    np.testing.assert_array_equal(ld, 0)
    flow = randomise(flow, jax.random.key(2), 0.1)
    pairs = [flow.layers[0].layer(i).layers for i in range(scan.n)]
    unrolled = Flow(flow.base, tuple(layer for pair in pairs for layer in pair) + flow.layers[1:])
    x, ld, z2, ld_inv = roundtrip(flow, z)
    x_ref, ld_ref, _, ld_inv_ref = roundtrip(unrolled, z)
    np.testing.assert_allclose(x, x_ref, atol=1e-6)
    np.testing.assert_allclose(ld, ld_ref, atol=1e-5)
    np.testing.assert_allclose(ld_inv, ld_inv_ref, atol=1e-5)
    assert float(jnp.abs(ld).max()) > 0.1
    assert jnp.all(dist(z2, z, circ_of(flow)) <= 1e-5 * jnp.maximum(1, jnp.abs(z)))


def test_circular_dims_stay_on_the_circle():
    flow = randomise(FLOWS["nsf"](jax.random.key(0), 5), jax.random.key(1), 0.3)
    circ = circ_of(flow)
    x = eqx.filter_jit(flow.sample)(jax.random.key(2), N)
    assert jnp.all(jnp.where(circ, (x >= -PI) & (x < PI), True))
    # the density is periodic in the circular dims: log q(x + 2 pi k e_circ) = log q(x)
    shift = jnp.where(circ, 2 * math.pi * jnp.array([0, 1, -2, 0, 3]), 0.0)
    lq = eqx.filter_jit(flow.log_prob)
    np.testing.assert_allclose(lq(x + shift), lq(x), atol=1e-3)  # float32 rounding of x + 6 pi, amplified
    z, _ = eqx.filter_jit(flow.inverse)(x + shift)
    assert jnp.all(jnp.where(circ, (z >= -PI) & (z < PI), True))


@pytest.mark.parametrize("name", ["realnvp-lu", "nsf"])
def test_sample_and_log_prob_agree_with_log_prob(name):
    flow = randomise(FLOWS[name](jax.random.key(0), 5), jax.random.key(1), 0.1)
    x, lq = eqx.filter_jit(flow.sample_and_log_prob)(jax.random.key(2), N)
    np.testing.assert_allclose(eqx.filter_jit(flow.log_prob)(x), lq, atol=1e-4)
    assert float(jnp.std(lq - flow.base.log_prob(x))) > 0.05


def _grid_integral(flow, lo, hi, n):
    g = jnp.linspace(lo, hi, n, endpoint=False) + (hi - lo) / (2 * n)  # midpoints
    xx = jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return float(jnp.sum(jnp.exp(eqx.filter_jit(flow.log_prob)(xx))) * ((hi - lo) / n) ** 2)


def test_density_integrates_to_one_on_the_plane():
    flow = randomise(make_realnvp(jax.random.key(0), 2, n_layers=4, **SMALL), jax.random.key(1), 0.3)
    # deterministic midpoint quadrature (h = 0.067, mass beyond |x| = 10 negligible): its O(h^2) error, not noise
    assert abs(_grid_integral(flow, -10.0, 10.0, 300) - 1) < 1e-2


@pytest.mark.parametrize("circular", [[0, 1], [1]], ids=["torus", "cylinder"])
def test_density_integrates_to_one_with_circular_dims(circular):
    # without LU mixing: a randomised LU scale of the real dim sharpens the density past what the grid resolves
    # (its log-det is checked against the Jacobian above, and test_density_integrates_to_one_on_the_plane has it)
    flow = make_nsf(jax.random.key(0), 2, n_layers=4, circular=circular, bins=6, bound=3.0, lu=False, **SMALL)
    flow = randomise(flow, jax.random.key(1), 0.3)
    if circular == [0, 1]:  # midpoint quadrature on the torus: no truncation, only the O(h^2) rule error
        assert abs(_grid_integral(flow, -math.pi, math.pi, 160) - 1) < 1e-3
    else:  # a real dim (spline with tails beyond 3) over [-10, 10] and a circular one over [-pi, pi)
        g_real = jnp.linspace(-10, 10, 400, endpoint=False) + 10 / 400
        g_circ = jnp.linspace(-math.pi, math.pi, 160, endpoint=False)
        xx = jnp.stack(jnp.meshgrid(g_real, g_circ, indexing="ij"), -1).reshape(-1, 2)
        total = jnp.sum(jnp.exp(eqx.filter_jit(flow.log_prob)(xx))) * (20 / 400) * (2 * math.pi / 160)
        assert abs(float(total) - 1) < 1e-2


def test_every_dimension_is_transformed_in_each_pair():
    flow = FLOWS["nsf"](jax.random.key(0), 5)
    circ = circ_of(flow)
    assert [type(layer).__name__ for layer in flow.layers] == ["Coupling", "Coupling", "LULinear"] * 2
    couplings = [layer for layer in flow.layers if isinstance(layer, Coupling)]
    for a, b in zip(couplings[::2], couplings[1::2]):
        ta, tb = np.asarray(a.trans_idx), np.asarray(b.trans_idx)
        assert sorted(np.r_[ta, tb].tolist()) == list(range(5))
        # each half conditions on some real and some circular dims, and its circular flags are right
        for layer in (a, b):
            cond = np.asarray(layer.cond_idx)
            assert circ[cond].sum() == layer.n_cond_circ > 0 and (~circ[cond]).sum() > 0
            assert circ[np.asarray(layer.trans_idx)].sum() == layer.n_trans_circ


def test_base_distribution():
    base = StandardBase(4, circular=[1, 3])
    z = eqx.filter_jit(base.sample)(jax.random.key(0), 4000)
    assert jnp.all((z[:, [1, 3]] >= -PI) & (z[:, [1, 3]] < PI))
    # the law: uniform on [-pi, pi) on the circular dims, N(0, 1) on the real ones (KS, p > 1e-3 each, fixed seed)
    zn = np.asarray(z, np.float64)
    for i in (1, 3):
        assert stats.kstest(zn[:, i], stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3
    for i in (0, 2):
        assert stats.kstest(zn[:, i], "norm").pvalue > 1e-3
    # and the scale a wrong circle length would change: sd pi / sqrt(3) within 4 delta-method standard errors
    # (two-sided p ~ 6e-5), se(s) = sd((z - mean)^2) / (2 s sqrt(n)) from the sample
    c = zn[:, 1]
    s = c.std(ddof=1)
    se = np.std((c - c.mean()) ** 2, ddof=1) / (2 * s * math.sqrt(len(c)))
    assert abs(s - math.pi / math.sqrt(3)) < 4 * se, (s, se)
    expected = stats.norm.logpdf(np.asarray(z[:, [0, 2]])).sum(-1) - 2 * math.log(2 * math.pi)
    np.testing.assert_allclose(eqx.filter_jit(base.log_prob)(z), expected, rtol=1e-5)
    learn = randomise(StandardBase(3, circular=[2], learnable=True), jax.random.key(1), 0.5)
    zl = eqx.filter_jit(learn.sample)(jax.random.key(2), 10)
    scale = np.exp(np.asarray(learn.log_scale))
    ref = stats.norm.logpdf(np.asarray(zl[:, :2]), np.asarray(learn.loc[:2]), scale[:2]).sum(-1) - math.log(2 * math.pi)
    np.testing.assert_allclose(eqx.filter_jit(learn.log_prob)(zl), ref, rtol=1e-5)


def test_make_flow_and_its_errors():
    spec = {"type": "nsf", "n_layers": 2, "circular": [0], **SMALL}
    flow = make_flow(spec, jax.random.key(0), 5)
    assert isinstance(flow, Flow) and flow.dim == 5 and flow.base.circular == (True, False, False, False, False)
    assert len(make_flow({"type": "realnvp", "n_layers": 3, **SMALL}, jax.random.key(0), 5).layers) == 4  # + LU
    assert len(make_flow({"type": "realnvp", "n_layers": 3, "lu": False, **SMALL}, jax.random.key(0), 5).layers) == 3
    with pytest.raises(BoltzflowError, match="unknown type 'glow'"):
        make_flow({"type": "glow"}, jax.random.key(0), 3)
    with pytest.raises(BoltzflowError, match=r"unknown option\(s\) for flow \(realnvp\): bins"):
        make_flow({"type": "realnvp", "bins": 8}, jax.random.key(0), 3)
    with pytest.raises(BoltzflowError, match="activation"):
        make_flow({"type": "nsf", "activation": "swishy"}, jax.random.key(0), 3)
    if not jax.config.jax_enable_x64:
        with pytest.raises(BoltzflowError, match="float64 needs 64-bit JAX"):
            make_flow({"type": "realnvp"}, jax.random.key(0), 5, dtype="float64")
    with pytest.raises(BoltzflowError, match="n_layers must be an integer"):
        make_flow({"type": "nsf", "n_layers": "ten"}, jax.random.key(0), 5)
    with pytest.raises(BoltzflowError, match="dim >= 2"):
        make_nsf(jax.random.key(0), 1)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 32, 33])
def test_unit_triangular_inverse_equals_the_float64_inverse(d):
    """(I + N)^-1 by squarings (LULinear's inverse) against numpy's float64 inverse, lower and upper, every size
    from one squaring to the next: exact in exact arithmetic, float32 round-off here (entries of N ~ 0.3)."""
    from boltzflow.flows.permutation import unit_triangular_inverse

    a = 0.3 * np.random.default_rng(d).normal(size=(d, d))
    for n in (np.tril(a, -1), np.triu(a, 1)):
        want = np.linalg.inv(np.eye(d) + n)
        got = np.asarray(unit_triangular_inverse(jnp.asarray(n, jnp.float32)), np.float64)
        np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_circular_dims_are_never_mixed():
    """LULinear mixes the real dimensions and passes circular ones through unchanged (still on the circle)."""
    with pytest.raises(BoltzflowError, match="needs at least one real dimension"):
        LULinear(2, circular=[0, 1])
    layer, circ = _layers(jax.random.key(0))["lu-circular"]
    x = jnp.where(circ, wrap_angle(3.0 * jax.random.normal(jax.random.key(1), (64, 5))), 1.0)
    y, _ = layer.forward(x)
    np.testing.assert_array_equal(y[:, circ], x[:, circ])
    assert float(jnp.abs(y[:, ~circ] - x[:, ~circ]).max()) > 0.1  # the real ones are mixed
    flow = make_nsf(jax.random.key(0), 4, n_layers=2, circular=[0, 1, 2, 3], **SMALL)
    assert not any(isinstance(layer, LULinear) for layer in flow.layers)  # nothing to mix on a torus
    with pytest.raises(BoltzflowError, match="Affine cannot transform circular"):
        Coupling(jax.random.key(0), np.array([True, False]), Affine(), circular=[0])
    with pytest.raises(BoltzflowError, match="circular index out of range"):
        make_nsf(jax.random.key(0), 3, circular=[3])
    perm = Permutation.random(jax.random.key(0), 6, circular=[1, 4])
    p = np.asarray(perm.perm)
    assert set(p[[1, 4]].tolist()) == {1, 4} and sorted(p.tolist()) == list(range(6))


def test_a_standardized_flow_models_y_and_its_samplers_run_below_the_fixed_layer():
    """loc / scale add x = loc + scale * y as the last layer: log q(x) = log q_y((x - loc) / scale) - sum log scale,
    and AIS (model_space) runs on y with the target pulled back, so its weights equal p(x) / q(x)."""
    from boltzflow.targets import make_target

    loc, scale = np.array([3.0, -1.0, 0.0, 1.0]), np.array([2.0, 0.5, 4.0, 1.0])
    flow = randomise(make_nsf(jax.random.key(0), 4, n_layers=2, loc=loc.tolist(), scale=scale.tolist(), **SMALL),
                     jax.random.key(1), 0.1)
    inner = eqx.tree_at(lambda f: f.layers, flow, flow.layers[:-1])
    x = jnp.asarray(loc + scale * np.asarray(jax.random.normal(jax.random.key(2), (64, 4))), jnp.float32)
    y = (x - loc) / scale
    np.testing.assert_allclose(flow.log_prob(x), inner.log_prob(y) - np.log(scale).sum(), rtol=1e-5, atol=1e-5)
    target = make_target({"name": "many_well", "dim": 4})
    space = model_space(flow, target)
    np.testing.assert_allclose(space.to_x(y), x, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(space.log_p(y) - space.log_q(flow, y), target.log_prob(x) - flow.log_prob(x),
                               rtol=1e-5, atol=1e-4)
    with pytest.raises(BoltzflowError, match="list of 3 numbers"):
        make_nsf(jax.random.key(0), 3, loc=[1.0, 2.0])
    with pytest.raises(BoltzflowError, match="scale must be positive"):
        make_realnvp(jax.random.key(0), 3, scale=[1.0, 0.0, 1.0])
    with pytest.raises(BoltzflowError, match="circular dimensions"):
        make_nsf(jax.random.key(0), 3, circular=[0], loc=1.0)
