"""OpenMM's tabulated functions (``Custom*Force.addTabulatedFunction``) as NumPy / JAX callables.

:func:`read_tabulated` turns an ``openmm.TabulatedFunction`` into ``f(*args)`` that evaluates as OpenMM's Reference
platform does. The maths, for ``d`` = 1, 2 or 3 arguments:

Grid. A continuous table with ``n_k`` values along axis k spans ``[min_k, max_k]`` with knots
``x_k[i] = min_k + i (max_k - min_k) / (n_k - 1)``, i = 0 .. n_k - 1. Multi-dimensional tables are flat with x
fastest: ``values[i + n_x j + n_x n_y k] = f(x_i, y_j, z_k)``.

Cubic spline (1D). On cell ``[x_i, x_{i+1}]`` with ``h = x_{i+1} - x_i``, ``a = (x_{i+1} - t) / h``, ``b = 1 - a``:

    f(t) = a y_i + b y_{i+1} + ((a^3 - a) m_i + (b^3 - b) m_{i+1}) h^2 / 6,

where the second derivatives ``m`` solve, at every interior knot,

    h_{i-1} m_{i-1} + 2 (h_{i-1} + h_i) m_i + h_i m_{i+1} = 6 ((y_{i+1} - y_i) / h_i - (y_i - y_{i-1}) / h_{i-1}).

Natural spline: ``m_0 = m_{n-1} = 0``. Periodic spline (``periodic=True``; needs ``y_0 == y_{n-1}`` exactly and
n >= 3): knot 0 and knot n-1 are the same point, ``m_0 = m_{n-1}`` and the equation above also holds there with
neighbours n-2 and 1 (a cyclic tridiagonal system), so f, f' and f'' are continuous across the period.

Bicubic / tricubic patches (2D, 3D). At every knot the partial derivatives f_x, f_y, (f_z), f_xy, (f_xz, f_yz, f_xyz)
are the first derivatives of 1D splines (natural, or periodic when the function is) through the table lines along
one axis, applied in turn (f_xy = d/dx of the spline slopes f_y, f_xyz = d/dx of f_yz). Each cell carries the
unique polynomial ``sum_{p,q(,r)=0..3} c_pq(r) a^p b^q (c^r)`` in the local coordinates ``a = (u - x_i) / h_x``,
``b = (v - y_j) / h_y`` (``c``) that matches f and those derivatives (scaled by the cell widths) at its 4 (8) corners:
the tensor product of cubic Hermite bases (Numerical Recipes' bicubic, Lekien & Marsden's tricubic form).

Cell lookup. t lies in cell i = the largest i with ``x_i <= t``, capped at n - 2, so t = max uses the last cell.

Out of range. Non-periodic continuous functions are 0 (value and derivative) when any argument is below min or above
max (the bounds themselves are inside). Periodic ones first wrap every argument:
``t -> min + L (s - floor(s))``, ``s = (t - min) / L``, ``L = max - min``. The test is against the stored min / max,
not the knots: the last knot can exceed max by an ulp (0.1 + 6 * 0.8 / 6 > 0.9), and then f is 0 on it. (When the
last knot falls an ulp short of max instead, OpenMM aborts for t between the two; here t uses the last cell.) A NaN
argument gives NaN.

Discrete functions (``Discrete1D/2D/3DFunction``) take no interpolation: each argument is rounded to the nearest
integer, halves away from zero (C's ``round``), clamped to ``[0, n_k - 1]`` and used as an index into the same
x-fastest table. Their derivative is 0.

Derivatives. In JAX the continuous functions are piecewise polynomials in the arguments, so autodiff gives exactly the
spline derivative that OpenMM's forces use; the cell index and the out-of-range mask carry no gradient.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError

# cubic Hermite basis on [0, 1], rows (value at 0, value at 1, slope at 0, slope at 1), columns powers 0..3
_HERMITE = np.array(
    [
        [1.0, 0.0, -3.0, 2.0],
        [0.0, 0.0, 3.0, -2.0],
        [0.0, 1.0, -2.0, 1.0],
        [0.0, 0.0, -1.0, 1.0],
    ]
)


def read_tabulated(function) -> Callable[..., object]:
    """Convert an OpenMM ``TabulatedFunction`` (e.g. ``force.getTabulatedFunction(i)``) into a callable ``f(*args)``.

    ``f`` takes 1, 2 or 3 arguments (as many as the table has dimensions), broadcastable against each other, and
    returns an array of their broadcast shape:

    - all arguments NumPy arrays / Python numbers: computed in NumPy float64, returns a NumPy array;
    - any argument a JAX array (or tracer under ``jit`` / ``grad`` / ``vmap``): computed with ``jax.numpy`` in the
      floating dtype of the JAX arguments (the float64 tables are cast to it), differentiable; the gradient of a
      continuous function is the derivative of its spline, that of a discrete function is 0.

    Spline coefficients are computed once here, in float64. An unsupported function type, or a periodic table whose
    ends differ (OpenMM refuses it when it builds the spline), raises a one-line :class:`BoltzflowError`.
    """
    import openmm

    name = type(function).__name__
    if isinstance(function, openmm.Continuous1DFunction):
        values, lo, hi = function.getFunctionParameters()
        return _Continuous(np.asarray(values, float), [(lo, hi)], bool(function.getPeriodic()), name)
    if isinstance(function, openmm.Continuous2DFunction):
        nx, ny, values, xlo, xhi, ylo, yhi = function.getFunctionParameters()
        table = np.asarray(values, float).reshape(ny, nx).T
        return _Continuous(table, [(xlo, xhi), (ylo, yhi)], bool(function.getPeriodic()), name)
    if isinstance(function, openmm.Continuous3DFunction):
        nx, ny, nz, values, xlo, xhi, ylo, yhi, zlo, zhi = function.getFunctionParameters()
        table = np.asarray(values, float).reshape(nz, ny, nx).transpose(2, 1, 0)
        return _Continuous(table, [(xlo, xhi), (ylo, yhi), (zlo, zhi)], bool(function.getPeriodic()), name)
    if isinstance(function, openmm.Discrete1DFunction):
        values = function.getFunctionParameters()  # the bare tuple of values, not wrapped in a list
        return _Discrete(np.asarray(values, float).reshape(-1), name)
    if isinstance(function, openmm.Discrete2DFunction):
        nx, ny, values = function.getFunctionParameters()
        return _Discrete(np.asarray(values, float).reshape(ny, nx).T, name)
    if isinstance(function, openmm.Discrete3DFunction):
        nx, ny, nz, values = function.getFunctionParameters()
        return _Discrete(np.asarray(values, float).reshape(nz, ny, nx).transpose(2, 1, 0), name)
    raise BoltzflowError(f"unsupported tabulated function type {name}")


def continuous_function(table: np.ndarray, ranges, periodic: bool, name: str) -> Callable[..., object]:
    """A continuous table given as arrays: ``table[i, j, ...]`` (x index first) on the uniform knots of ``ranges``
    ((min, max) per axis), evaluated as :func:`read_tabulated`'s continuous functions (natural or periodic splines,
    bicubic / tricubic patches)."""
    return _Continuous(np.asarray(table, float), ranges, periodic, name)


# --------------------------------------------------------------------------------------------------------------------
# shared plumbing


class _Tabulated:
    """Argument checking, NumPy / JAX dispatch and per-dtype table caching common to both kinds."""

    name: str
    ndim: int

    def __init__(self):
        self._tables: dict = {}

    def _host_tables(self) -> dict:
        raise NotImplementedError

    def _tables_for(self, xp, dtype) -> dict:
        if xp is np:
            return self._host_tables()
        # the NumPy copies in the target dtype are cached; the JAX arrays are made per call, as under a trace they
        # are tracers that must not outlive it
        key = np.dtype(dtype).name
        if key not in self._tables:
            self._tables[key] = {k: np.asarray(v, dtype) for k, v in self._host_tables().items()}
        return {k: jnp.asarray(v) for k, v in self._tables[key].items()}

    def __call__(self, *args):
        if len(args) != self.ndim:
            raise BoltzflowError(f"{self.name} takes {self.ndim} argument(s), got {len(args)}")
        if any(isinstance(a, jax.Array) for a in args):
            dtype = jnp.result_type(*[a for a in args if isinstance(a, jax.Array)])
            if not jnp.issubdtype(dtype, jnp.floating):
                dtype = jnp.result_type(float)
            args = jnp.broadcast_arrays(*[jnp.asarray(a, dtype) for a in args])
            return self._evaluate(jnp, args, self._tables_for(jnp, dtype))
        args = np.broadcast_arrays(*[np.asarray(a, np.float64) for a in args])
        return np.asarray(self._evaluate(np, args, self._host_tables()))

    def _evaluate(self, xp, args, tables):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<tabulated {self.name}>"


# --------------------------------------------------------------------------------------------------------------------
# discrete tables


class _Discrete(_Tabulated):
    def __init__(self, table: np.ndarray, name: str):
        super().__init__()
        if table.size == 0:
            raise BoltzflowError(f"{name} has an empty table")
        self.name, self.ndim, self.table = name, table.ndim, table

    def _host_tables(self) -> dict:
        return {"table": self.table}

    def _evaluate(self, xp, args, tables):
        index = []
        for t, n in zip(args, self.table.shape):
            # clamp first (the bounds are integers, so this commutes with rounding), then round half away from zero;
            # for t >= 0 that is floor + (fraction >= 1/2), both exact in floating point. NaN -> 0 (as x86 C does).
            t = xp.where(xp.isnan(t), xp.zeros_like(t), xp.clip(t, 0, n - 1))
            whole = xp.floor(t)
            index.append((whole + (t - whole >= 0.5)).astype(np.int32))
        return tables["table"][tuple(index)]


# --------------------------------------------------------------------------------------------------------------------
# continuous tables: fitting (NumPy, float64, once)


def _thomas(lower, diag, upper, rhs):
    """Solve tridiagonal systems sharing one matrix: ``lower[i] s[i-1] + diag[i] s[i] + upper[i] s[i+1] = rhs[i]``.

    ``rhs`` has shape (n, m): m right-hand sides solved at once (no pivoting; the spline systems are diagonally
    dominant).
    """
    n = len(diag)
    factor = np.zeros(n)
    sol = np.empty_like(rhs)
    pivot = diag[0]
    sol[0] = rhs[0] / pivot
    for i in range(1, n):
        factor[i] = upper[i - 1] / pivot
        pivot = diag[i] - lower[i] * factor[i]
        sol[i] = (rhs[i] - lower[i] * sol[i - 1]) / pivot
    for i in range(n - 2, -1, -1):
        sol[i] -= factor[i + 1] * sol[i + 1]
    return sol


def _second_derivatives(x: np.ndarray, y: np.ndarray, periodic: bool) -> np.ndarray:
    """Spline second derivatives m at the knots x for every column of y (shape (n, m)), natural or periodic."""
    n = len(x)
    h = np.diff(x)
    slope = np.diff(y, axis=0) / h[:, None]
    lower, diag, upper, rhs = np.zeros(n), np.ones(n), np.zeros(n), np.zeros_like(y)
    lower[1:-1], diag[1:-1], upper[1:-1] = h[:-1], 2.0 * (h[:-1] + h[1:]), h[1:]
    rhs[1:-1] = 6.0 * (slope[1:] - slope[:-1])
    if not periodic:  # natural: rows 0 and n-1 say m = 0
        return _thomas(lower, diag, upper, rhs)
    # periodic: unknowns m_0 .. m_{n-2}, m_{n-1} = m_0. Knot 0 has neighbours knot 1 (cell h_0) and knot n-2 (cell
    # h_{n-2}); knot n-2 has knot n-1 == knot 0 as its right neighbour. That puts h_{n-2} in both corners of the
    # otherwise tridiagonal matrix; the corners are removed by a rank-one (Sherman-Morrison) correction.
    k = n - 1
    lower, diag, upper, rhs = lower[:k].copy(), diag[:k].copy(), upper[:k].copy(), rhs[:k].copy()
    diag[0] = 2.0 * (h[0] + h[-1])
    rhs[0] = 6.0 * (slope[0] - slope[-1])
    corner = h[-1]
    if k == 2:  # three knots: both neighbours of knot 0 are knot 1, the corners lie on the band
        upper[0] = h[0] + h[-1]
        lower[1] = h[0] + h[-1]
        m = _thomas(lower, diag, upper, rhs)
        return np.concatenate([m, m[:1]])
    upper[0] = h[0]
    # A = B + u v^T with u = (s, 0, .., 0, corner), v = (1, 0, .., 0, corner / s), s = -A[0, 0]
    s = -diag[0]
    band = diag.copy()
    band[0] -= s
    band[-1] -= corner * corner / s
    u = np.zeros((k, 1))
    u[0], u[-1] = s, corner
    base = _thomas(lower, band, upper, rhs)
    z = _thomas(lower, band, upper, u)
    ratio = corner / s
    weight = (base[0] + ratio * base[-1]) / (1.0 + z[0] + ratio * z[-1])
    m = base - z * weight[None, :]
    return np.concatenate([m, m[:1]])


def _knot_slopes(x: np.ndarray, values: np.ndarray, axis: int, periodic: bool) -> np.ndarray:
    """First derivative at every knot of the splines through ``values`` along ``axis``."""
    y = np.moveaxis(values, axis, 0)
    shape = y.shape
    y = y.reshape(shape[0], -1)
    m = _second_derivatives(x, y, periodic)
    h = np.diff(x)[:, None]
    # slope at the left end of each cell (a = 1, b = 0), and at the right end of the last cell (a = 0, b = 1)
    left = (y[1:] - y[:-1]) / h - (2.0 * m[:-1] + m[1:]) * h / 6.0
    last = (y[-1] - y[-2]) / h[-1] + (m[-2] + 2.0 * m[-1]) * h[-1] / 6.0
    slopes = np.concatenate([left, last[None]], axis=0)
    return np.moveaxis(slopes.reshape(shape), 0, axis)


def _patch_coefficients(grids, derivs) -> np.ndarray:
    """Polynomial coefficients of every cell of a 2D / 3D Hermite patchwork.

    ``derivs`` maps a tuple of per-axis derivative orders (0 / 1) to the knot array of that mixed partial. Returns
    shape (cells..., 4, 4[, 4]), coefficient of ``prod_k a_k^{p_k}`` with ``a_k`` the local coordinate in [0, 1].
    """
    d = len(grids)
    widths = [np.diff(g) for g in grids]
    cells = tuple(len(g) - 1 for g in grids)
    data = np.zeros(cells + (4,) * d)
    for orders, knots in derivs.items():
        scale = np.ones(cells)
        for k, order in enumerate(orders):
            if order:
                scale = scale * widths[k].reshape([-1 if j == k else 1 for j in range(d)])
        for corner in np.ndindex(*(2,) * d):
            piece = knots[tuple(slice(o, o + n) for o, n in zip(corner, cells))]
            slot = tuple(o + 2 * order for o, order in zip(corner, orders))
            data[(Ellipsis,) + slot] = piece * scale
    letters = "pqr"[:d]
    basis = ",".join(f"{s}{s.upper()}" for s in letters)
    return np.einsum(f"...{letters},{basis}->...{letters.upper()}", data, *[_HERMITE] * d)


def _wrap(xp, t, lo, hi):
    length = hi - lo
    s = (t - lo) / length
    return lo + length * (s - xp.floor(s))


def _locate(xp, grid, t):
    """Index of the cell holding t: the largest i with grid[i] <= t, kept in [0, n - 2] (t assumed in range)."""
    n = grid.shape[0]
    lo, hi = grid[0], grid[-1]
    guess = (t - lo) * ((n - 1) / (hi - lo))
    guess = xp.where(guess >= 0, guess, xp.zeros_like(guess))  # also NaN -> 0, so that the cast to int is always defined
    i = xp.floor(xp.minimum(guess, n - 2)).astype(np.int32)
    # the guess is off by at most one cell near a knot (rounding); settle it against the knots themselves
    i = xp.where(grid[i] > t, i - 1, i)
    i = xp.where((grid[xp.minimum(i + 1, n - 1)] <= t) & (i < n - 2), i + 1, i)
    return xp.clip(i, 0, n - 2)


class _Continuous(_Tabulated):
    def __init__(self, table: np.ndarray, ranges, periodic: bool, name: str):
        super().__init__()
        self.name, self.ndim, self.periodic = name, table.ndim, periodic
        self.ranges = [(float(lo), float(hi)) for lo, hi in ranges]
        shape = table.shape
        least = 3 if periodic else 2
        if min(shape) < least:
            raise BoltzflowError(f"{name} needs at least {least} points along each axis, got {shape}")
        for lo, hi in self.ranges:
            if not hi > lo:
                raise BoltzflowError(f"{name} has max <= min ({hi} <= {lo})")
        # knots exactly as OpenMM computes them: min + i (max - min) / (n - 1)
        self.grids = [lo + np.arange(n) * (hi - lo) / (n - 1) for (lo, hi), n in zip(self.ranges, shape)]
        if periodic:
            for axis in range(self.ndim):
                first, last = np.take(table, 0, axis), np.take(table, -1, axis)
                if np.any(first != last):
                    raise BoltzflowError(
                        f"periodic {name} must have equal first and last values along axis {'xyz'[axis]}"
                    )
        if self.ndim == 1:
            self.host = {
                "grid": self.grids[0],
                "values": table,
                "second": _second_derivatives(self.grids[0], table[:, None], periodic)[:, 0],
            }
        else:
            self.host = {f"grid{k}": g for k, g in enumerate(self.grids)}
            self.host["coefficients"] = _patch_coefficients(self.grids, self._knot_derivatives(table, periodic))

    def _knot_derivatives(self, table, periodic):
        gx, gy = self.grids[0], self.grids[1]
        d = {}
        if self.ndim == 2:
            d[0, 0] = table
            d[1, 0] = _knot_slopes(gx, table, 0, periodic)
            d[0, 1] = _knot_slopes(gy, table, 1, periodic)
            d[1, 1] = _knot_slopes(gx, d[0, 1], 0, periodic)
            return d
        gz = self.grids[2]
        d[0, 0, 0] = table
        d[1, 0, 0] = _knot_slopes(gx, table, 0, periodic)
        d[0, 1, 0] = _knot_slopes(gy, table, 1, periodic)
        d[0, 0, 1] = _knot_slopes(gz, table, 2, periodic)
        d[1, 1, 0] = _knot_slopes(gx, d[0, 1, 0], 0, periodic)
        d[0, 1, 1] = _knot_slopes(gy, d[0, 0, 1], 1, periodic)
        d[1, 0, 1] = _knot_slopes(gz, d[1, 0, 0], 2, periodic)
        d[1, 1, 1] = _knot_slopes(gx, d[0, 1, 1], 0, periodic)
        return d

    def _host_tables(self) -> dict:
        return self.host

    def _evaluate(self, xp, args, tables):
        inside, safe = None, []
        for t, (lo, hi) in zip(args, self.ranges):
            if self.periodic:
                t = _wrap(xp, t, lo, hi)
            # OpenMM tests the stored min / max (not the last knot, which may differ by an ulp), and tests "outside"
            # rather than "inside", so that a NaN argument gives NaN
            ok = ~((t < lo) | (t > hi))
            inside = ok if inside is None else inside & ok
            safe.append(t)
        # out-of-range points are evaluated at the lower bound, so neither the value nor its gradient can be inf/NaN
        safe = [xp.where(inside, t, xp.full_like(t, lo)) for t, (lo, _) in zip(safe, self.ranges)]
        value = self._spline1d(xp, safe[0], tables) if self.ndim == 1 else self._patches(xp, safe, tables)
        return xp.where(inside, value, xp.zeros_like(value))

    @staticmethod
    def _spline1d(xp, t, tables):
        grid, y, m = tables["grid"], tables["values"], tables["second"]
        i = _locate(xp, grid, t)
        x0, x1 = grid[i], grid[i + 1]
        h = x1 - x0
        a = (x1 - t) / h
        b = 1.0 - a
        return a * y[i] + b * y[i + 1] + ((a * a * a - a) * m[i] + (b * b * b - b) * m[i + 1]) * (h * h / 6.0)

    def _patches(self, xp, ts, tables):
        index, powers = [], []
        for k, t in enumerate(ts):
            grid = tables[f"grid{k}"]
            i = _locate(xp, grid, t)
            a = (t - grid[i]) / (grid[i + 1] - grid[i])
            index.append(i)
            powers.append(xp.stack([xp.ones_like(a), a, a * a, a * a * a], axis=-1))
        value = tables["coefficients"][tuple(index)]  # (..., 4, 4[, 4]), axes = powers of a_x, a_y[, a_z]
        # contract the last axis first, with elementwise products and sums only (no matmul: on a GPU a float32
        # dot may run at reduced (TF32) precision)
        for a in reversed(powers):
            value = (value * a.reshape(a.shape[:-1] + (1,) * (value.ndim - a.ndim) + (4,))).sum(axis=-1)
        return value
