"""OpenMM's tabulated functions read into NumPy / JAX, checked against OpenMM's Reference platform.

The oracle is a one-particle ``CustomCompoundBondForce`` whose energy is the tabulated function of the particle's
coordinates (continuous and discrete functions: values and, from the forces, gradients) or of per-bond parameters
(discrete functions looked up at parameter-like indices).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm", reason="OpenMM is not installed (pip install 'boltzflow[molecules]')")

from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.molecules.tabulated import read_tabulated  # noqa: E402

AXES = ("x1", "y1", "z1")
KJ = openmm.unit.kilojoule_per_mole


def _context(force):
    system = openmm.System()
    system.addParticle(1.0)
    system.addForce(force)
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))


def _reference_at_positions(function, points):
    """OpenMM's f and grad f at each row of ``points`` (n, d), and ``read_tabulated`` of the force's own copy."""
    points = np.asarray(points, float)
    d = points.shape[1]
    force = openmm.CustomCompoundBondForce(1, f"f({', '.join(AXES[:d])})")
    force.addTabulatedFunction("f", function)  # the force owns the function from here on
    force.addBond([0], [])
    context = _context(force)
    values, grads = [], []
    for p in points:
        position = np.zeros(3)
        position[:d] = p
        context.setPositions([openmm.Vec3(*position)])
        state = context.getState(getEnergy=True, getForces=True)
        values.append(state.getPotentialEnergy().value_in_unit(KJ))
        grads.append(-state.getForces(asNumpy=True).value_in_unit(KJ / openmm.unit.nanometer)[0, :d])
    return read_tabulated(force.getTabulatedFunction(0)), np.array(values), np.array(grads)


def _reference_at_parameters(function, indices):
    """OpenMM's f at each row of ``indices`` (n, d), given as per-bond parameters; and the function read back."""
    indices = np.asarray(indices, float)
    names = ("i", "j", "k")[: indices.shape[1]]
    force = openmm.CustomCompoundBondForce(1, f"f({', '.join(names)})")
    for name in names:
        force.addPerBondParameter(name)
    force.addTabulatedFunction("f", function)
    force.addBond([0], list(indices[0]))
    context = _context(force)
    context.setPositions([openmm.Vec3(0, 0, 0)])
    values = []
    for row in indices:
        force.setBondParameters(0, [0], list(row))
        force.updateParametersInContext(context)
        values.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
    return read_tabulated(force.getTabulatedFunction(0)), np.array(values)


def _knots(lo, hi, n):
    return lo + np.arange(n) * (hi - lo) / (n - 1)  # as OpenMM lays them out


def _points(rng, ranges, sizes, count, periodic):
    """Random points inside and outside the ranges, a quarter of the coordinates exactly on knots, plus the bounds."""
    columns = []
    for (lo, hi), n in zip(ranges, sizes):
        span = hi - lo
        reach = 2.5 * span if periodic else 0.3 * span
        c = rng.uniform(lo - reach, hi + reach, count)
        on_knot = rng.random(count) < 0.25
        c[on_knot] = rng.choice(_knots(lo, hi, n), on_knot.sum())
        columns.append(c)
    points = np.stack(columns, axis=1)
    edges = []  # every axis at its bounds and just beyond them, the others at a knot / inside
    for k, (lo, hi) in enumerate(ranges):
        for t in (lo, hi, np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf), lo - (hi - lo), hi + 0.5 * (hi - lo)):
            row = np.array([_knots(a, b, n)[n // 2] for (a, b), n in zip(ranges, sizes)])
            row[k] = t
            edges.append(row)
    edges.append([lo for lo, _ in ranges])
    edges.append([hi for _, hi in ranges])
    return np.concatenate([np.array(edges), points])


def _grad(function, points):
    """d f / d args at each point, by JAX in float64 under jit(vmap(grad))."""
    with jax.enable_x64(True):
        g = jax.jit(jax.vmap(jax.grad(lambda p: function(*p))))(jnp.asarray(points, jnp.float64))
        return np.asarray(g, np.float64)


def _assert_close(actual, expected, rtol=1e-9):
    """Equal to ``rtol`` relative to each value, or to the largest value for those near zero."""
    scale = max(np.abs(expected).max(), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _check_continuous(function, points):
    f, values, grads = _reference_at_positions(function, points)
    mine = f(*points.T)
    assert isinstance(mine, np.ndarray) and mine.dtype == np.float64 and mine.shape == (len(points),)
    _assert_close(mine, values)
    _assert_close(_grad(f, points), grads)
    with jax.enable_x64(True):  # the JAX path gives the NumPy path's values
        _assert_close(np.asarray(jax.jit(lambda p: f(*p.T))(jnp.asarray(points))), values)
    return f, values


# --------------------------------------------------------------------------------------------------------------------
# continuous functions


@pytest.mark.parametrize("periodic, size", [(False, 2), (False, 9), (True, 3), (True, 9)])
def test_continuous_1d_matches_openmm(periodic, size):
    rng = np.random.default_rng(size)
    lo, hi = -0.75, 1.25  # dyadic: the last knot is exactly max
    values = rng.normal(size=size)
    if periodic:
        values[-1] = values[0]
    points = _points(rng, [(lo, hi)], [size], 150, periodic)
    f, reference = _check_continuous(openmm.Continuous1DFunction(list(values), lo, hi, periodic), points)
    outside = (points[:, 0] < lo) | (points[:, 0] > hi)
    if periodic:  # periodic functions wrap ...
        assert (reference[outside] != 0).any()
    else:  # ... the others vanish outside [min, max]
        assert (reference[outside] == 0).all() and (reference[~outside] != 0).any()
    knots = _knots(lo, hi, size)
    np.testing.assert_allclose(f(knots), values, rtol=0, atol=1e-14)  # the spline interpolates


def test_continuous_range_is_the_stored_min_max():
    """min + (n - 1) (max - min) / (n - 1) may exceed max by an ulp; OpenMM tests against max, so that knot is 0."""
    lo, hi, size = 0.1, 0.9, 7
    last = _knots(lo, hi, size)[-1]
    assert last > hi
    points = np.array([[hi], [last], [lo], [0.55]])
    f, reference = _check_continuous(openmm.Continuous1DFunction([1.0, 2.0, 0.5, 3.0, 2.0, 1.0, 4.0], lo, hi), points)
    assert reference[0] == pytest.approx(4.0) and reference[1] == 0.0


@pytest.mark.parametrize("periodic", [False, True])
def test_continuous_2d_matches_openmm(periodic):
    rng = np.random.default_rng(2 + periodic)
    (nx, ny), ranges = (7, 5), [(-0.5, 1.0), (0.25, 1.25)]
    table = rng.normal(size=(nx, ny))  # table[i, j] = f(x_i, y_j)
    if periodic:
        table[-1, :] = table[0, :]
        table[:, -1] = table[:, 0]
    function = openmm.Continuous2DFunction(nx, ny, list(table.T.ravel()), *ranges[0], *ranges[1], periodic)
    points = _points(rng, ranges, (nx, ny), 150, periodic)
    f, _ = _check_continuous(function, points)
    x, y = np.meshgrid(_knots(*ranges[0], nx), _knots(*ranges[1], ny), indexing="ij")
    np.testing.assert_allclose(f(x, y), table, rtol=0, atol=1e-13)  # x fastest in OpenMM's flat table


@pytest.mark.parametrize("periodic", [False, True])
def test_continuous_3d_matches_openmm(periodic):
    rng = np.random.default_rng(4 + periodic)
    (nx, ny, nz), ranges = (4, 6, 3), [(-0.5, 1.0), (0.25, 1.5), (1.0, 2.0)]
    table = rng.normal(size=(nx, ny, nz))  # table[i, j, k] = f(x_i, y_j, z_k)
    if periodic:
        table[-1] = table[0]
        table[:, -1] = table[:, 0]
        table[:, :, -1] = table[:, :, 0]
    function = openmm.Continuous3DFunction(nx, ny, nz, list(table.transpose(2, 1, 0).ravel()),
                                           *ranges[0], *ranges[1], *ranges[2], periodic)
    points = _points(rng, ranges, (nx, ny, nz), 120, periodic)
    f, _ = _check_continuous(function, points)
    grid = np.meshgrid(*[_knots(*r, n) for r, n in zip(ranges, (nx, ny, nz))], indexing="ij")
    np.testing.assert_allclose(f(*grid), table, rtol=0, atol=1e-13)


def test_periodic_table_with_unequal_ends_is_refused_like_openmm():
    function = openmm.Continuous1DFunction([1.0, 2.0, 3.0], 0.0, 1.0, True)
    with pytest.raises(BoltzflowError, match="equal first and last"):
        read_tabulated(function)
    force = openmm.CustomCompoundBondForce(1, "f(x1)")
    force.addTabulatedFunction("f", function)
    force.addBond([0], [])
    with pytest.raises(openmm.OpenMMException, match="same value"):
        _context(force)


# --------------------------------------------------------------------------------------------------------------------
# discrete functions


def _index_rows(rng, sizes, count):
    """Integer indices of every axis, plus halves (rounded away from zero) and out-of-range ones (clamped)."""
    rows = np.stack([rng.integers(0, n, count) for n in sizes], axis=1).astype(float)
    special = []
    for k, n in enumerate(sizes):
        for t in (-3.0, -0.5, -0.49, 0.49999999999999994, 0.5, 1.5, n - 1.5, n - 1 + 0.49, n - 0.5, n + 4.0):
            row = np.zeros(len(sizes))
            row[k] = t
            special.append(row)
    return np.concatenate([np.array(special), rows])


@pytest.mark.parametrize("sizes", [(6,), (4, 3), (3, 4, 2)])
def test_discrete_matches_openmm_at_parameter_indices(sizes):
    rng = np.random.default_rng(len(sizes))
    table = rng.normal(size=sizes)  # table[i, j, k] = f(i, j, k)
    flat = list(table.transpose(*reversed(range(len(sizes)))).ravel())  # x fastest
    function = [openmm.Discrete1DFunction, openmm.Discrete2DFunction, openmm.Discrete3DFunction][len(sizes) - 1]
    function = function(flat) if len(sizes) == 1 else function(*sizes, flat)
    indices = _index_rows(rng, sizes, 40)
    f, reference = _reference_at_parameters(function, indices)
    mine = f(*indices.T)
    assert isinstance(mine, np.ndarray) and mine.dtype == np.float64
    np.testing.assert_array_equal(mine, reference)  # a table lookup: exact
    whole = indices[len(sizes) * 10:].astype(int)  # the random integer rows index the table directly
    np.testing.assert_array_equal(mine[len(sizes) * 10:], table[tuple(whole.T)])
    with jax.enable_x64(True):
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda p: f(*p.T))(jnp.asarray(indices))), reference)
        assert not np.asarray(_grad(f, indices)).any()  # the derivative of a discrete function is 0


def test_discrete_rounding_and_zero_force_at_positions():
    values = [1.0, 11.0, 21.0, 31.0, 41.0]
    points = np.array([[-2.0], [-0.5], [0.4], [0.5], [1.5], [2.5], [3.49], [3.5], [4.5], [7.0]])
    f, reference, grads = _reference_at_positions(openmm.Discrete1DFunction(values), points)
    np.testing.assert_array_equal(reference, [1, 1, 1, 11, 21, 31, 31, 41, 41, 41])
    np.testing.assert_array_equal(f(points[:, 0]), reference)
    assert not grads.any() and not _grad(f, points).any()


# --------------------------------------------------------------------------------------------------------------------
# the two modes, dtypes and errors


def _bumpy_2d():
    table = np.arange(20.0).reshape(5, 4) ** 1.5 / 10
    return openmm.Continuous2DFunction(5, 4, list(table.T.ravel()), 0.0, 1.0, -1.0, 2.0)


def test_numpy_mode_broadcasts_and_returns_numpy():
    f = read_tabulated(_bumpy_2d())
    x = np.linspace(-0.1, 1.1, 3)[:, None]
    y = np.linspace(-1.5, 2.5, 4)[None, :]
    out = f(x, y)
    assert type(out) is np.ndarray and out.dtype == np.float64 and out.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert out[i, j] == f(float(x[i, 0]), float(y[0, j]))
    scalar = f(0.3, 0.5)
    assert type(scalar) is np.ndarray and scalar.shape == ()
    assert f(np.float32(0.3), 0.5).dtype == np.float64  # NumPy mode always computes in float64


def test_float32_jax_mode_keeps_float32():
    f = read_tabulated(_bumpy_2d())
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.1, 1.1, 64)
    y = rng.uniform(-1.2, 2.2, 64)
    want = f(x, y)
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(f, argnums=(0, 1))))
    with jax.enable_x64(True):  # even with 64-bit JAX on, float32 arguments give a float32 computation
        jaxpr = str(jax.make_jaxpr(value_and_grad)(x32, y32))
        out, (gx, gy) = value_and_grad(x32, y32)
        _, (gx64, _) = value_and_grad(jnp.asarray(x), jnp.asarray(y))
        mixed = jax.jit(lambda a: f(a, y))(x32)  # a NumPy float64 argument next to a float32 JAX one follows it
    assert "f64" not in jaxpr
    assert out.dtype == gx.dtype == gy.dtype == mixed.dtype == jnp.float32
    _assert_close(np.asarray(out, np.float64), want, rtol=1e-5)
    _assert_close(np.asarray(mixed, np.float64), want, rtol=1e-5)
    _assert_close(np.asarray(gx, np.float64), np.asarray(gx64), rtol=1e-4)
    assert jax.jit(f)(jnp.arange(3), jnp.zeros(3, jnp.float32)).dtype == jnp.float32  # integer indices: float


def test_no_float64_in_a_float32_trace_of_any_kind():
    grid = list(np.arange(27.0) % 5)
    functions = [
        openmm.Continuous1DFunction([1.0, 2.0, 1.0], 0.0, 1.0, True),
        openmm.Continuous2DFunction(3, 3, grid[:9], 0.0, 1.0, 0.0, 1.0),
        openmm.Continuous3DFunction(3, 3, 3, grid, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0),
        openmm.Discrete1DFunction(grid[:3]),
        openmm.Discrete2DFunction(3, 3, grid[:9]),
        openmm.Discrete3DFunction(3, 3, 3, grid),
    ]
    for function in functions:
        f = read_tabulated(function)
        args = [jnp.linspace(-0.5, 1.5, 8, dtype=jnp.float32)] * f.ndim
        with jax.enable_x64(True):
            jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: f(*a).sum(), argnums=tuple(range(f.ndim))))(*args))
            assert jax.eval_shape(f, *args).dtype == jnp.float32
        assert "f64" not in jaxpr, type(function).__name__


def test_unsupported_function_and_wrong_arity_raise_one_line_errors():
    with pytest.raises(BoltzflowError, match="unsupported tabulated function type str") as error:
        read_tabulated("not a function")
    assert "\n" not in str(error.value)
    f = read_tabulated(openmm.Discrete2DFunction(2, 2, [1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(BoltzflowError, match="takes 2 argument"):
        f(np.zeros(3))


# --------------------------------------------------------------------------------------------------------------------
# a real force field


def test_gbn2_tables_of_amber14():
    from openmm import app

    from boltzflow.molecules.system import openmmtools_data_dir

    pdb = app.PDBFile(os.path.join(openmmtools_data_dir(), "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb"))
    system = app.ForceField("amber14-all.xml", "implicit/gbn2.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    (gb,) = [force for force in system.getForces() if isinstance(force, openmm.CustomGBForce)]
    names = [gb.getPerParticleParameterName(k) for k in range(gb.getNumPerParticleParameters())]
    radindex = np.array([gb.getParticleParameters(i)[names.index("radindex")] for i in range(gb.getNumParticles())])
    i, j = np.meshgrid(radindex, radindex, indexing="ij")
    assert gb.getNumTabulatedFunctions() == 2
    for k in range(gb.getNumTabulatedFunctions()):
        function = gb.getTabulatedFunction(k)
        assert isinstance(function, openmm.Discrete2DFunction)
        nx, ny, values = function.getFunctionParameters()
        f = read_tabulated(function)
        want = np.asarray(values)[(i + nx * j).astype(int)]
        np.testing.assert_array_equal(f(i, j), want)
        np.testing.assert_array_equal(f(np.arange(nx), 0.0), values[:nx])  # x runs fastest
        np.testing.assert_array_equal(f(0.0, np.arange(ny)), values[::nx])
        np.testing.assert_array_equal(np.asarray(jax.jit(f)(jnp.asarray(i), jnp.asarray(j))), want.astype(np.float32))
