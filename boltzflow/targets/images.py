"""2-D image densities (Wu, Koehler & Noe, NeurIPS 2020, "Stochastic Normalizing Flows", supplement "2D image
densities"): a picture becomes a density whose samples draw it.

Recipe (following the SNF paper, with one change that makes exact sampling possible):

1. Grayscale ink intensity in [0, 1] (``image_render``: smiley, dog, text), Gaussian blur with ``blur`` pixels
   (``scipy.ndimage.gaussian_filter``, zero padding), rescale to max 1, floor at ``floor`` > 0:
   ``I = max(blurred / max(blurred), floor)``. The values live on the nodes of an H x W grid.
2. Mapping: node (row i, column j) sits at ``x = xmin + j hx``, ``y = ymax - i hy`` (row 0 at the top) with
   ``hx = (xmax - xmin)/(W - 1)``, ``hy = (ymax - ymin)/(H - 1)``. By default the box is centred at 0, its longer
   side spans [-3, 3] and the shorter one keeps the aspect ratio (a square image maps to [-3, 3]^2).
3. Inside the box the *density* is the bilinear interpolation of I between the four surrounding nodes, and the
   energy is ``u = -log(bilinear I)``. (The paper interpolates the energy -log I bilinearly instead; the two agree
   at the nodes and differ inside a cell by the gap between the arithmetic and geometric means of neighbouring
   node values, which the blur keeps small. Interpolating the density makes it piecewise bilinear, so cell masses
   are closed form and the sampler below is exact for this density.)
4. Outside the box, a quadratic wall on the boundary energy: ``u(x) = -log I(pi(x)) + wall/2 * d(x)^2`` where
   ``pi(x)`` is the nearest point of the box and ``d = |x - pi(x)|``. The density is continuous and normalisable.

Normaliser, closed form: ``Z = sum_cells hx hy mean(4 corner values)`` + for each boundary segment
``(segment length) * mean(2 end values) * sqrt(pi / (2 wall))`` + for each box corner ``I(corner) * pi / (2 wall)``.
``log_z = log Z``, the log normaliser of ``exp(log_prob)``.

Exact sampler: a piece (cell, boundary segment or corner quadrant) is drawn with probability mass/Z (Walker's
alias table built at construction, O(1) per sample); inside a cell, the column fraction u has the linear marginal
density with end values ((a+c)/2, (b+d)/2) and the row fraction v | u the linear density with end values
(a(1-u)+b u, c(1-u)+d u) (a, b, c, d = top-left, top-right, bottom-left, bottom-right node values), both sampled
by inverting the quadratic CDF; beyond a boundary segment the position along it is linear in the two end values
and the distance from the box is half-normal with std 1/sqrt(wall); in a corner quadrant both distances are
half-normal. All of this is exact for the density of steps 3-4, so ``sample`` and ``log_prob`` agree exactly (up
to floating-point rounding).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError
from boltzflow.targets import image_render
from boltzflow.targets.base import Target


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker / Vose alias table for the probabilities p (sum 1): returns (accept prob, alias index)."""
    k = len(p)
    scaled = p * k
    prob = np.ones(k)
    alias = np.arange(k)
    small = [i for i in range(k) if scaled[i] < 1.0]
    large = [i for i in range(k) if scaled[i] >= 1.0]
    while small and large:
        s, l = small.pop(), large.pop()
        prob[s] = scaled[s]
        alias[s] = l
        scaled[l] -= 1.0 - scaled[s]
        (small if scaled[l] < 1.0 else large).append(l)
    # whatever remains has scaled ~ 1 up to rounding: prob 1, alias itself
    return prob, alias


def _sample_linear(r: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Invert the CDF of the density on [0, 1] proportional to ``a (1 - t) + b t`` (a, b >= 0, a + b > 0).

    ``F(t) = (a t + (b - a) t^2 / 2) / ((a + b) / 2) = r`` gives ``t = r (a + b) / (a + sqrt((1 - r) a^2 + r b^2))``
    (the cancellation-free root).
    """
    return r * (a + b) / (a + jnp.sqrt((1.0 - r) * a * a + r * b * b))


class ImageTarget(Target):
    """A 2-D density drawn from a picture (SNF paper's image densities); exact ``log_z`` and exact samples.

    Args:
        image: ``(H, W)`` ink intensity (>= 0, higher = more probable; H, W >= 2), row 0 at the top.
        extent: ``(xmin, xmax, ymin, ymax)`` of the box; default: centred, longer side [-3, 3], aspect kept.
        blur: Gaussian blur standard deviation in pixels (0 = none).
        floor: minimum intensity after rescaling the blurred image to max 1 (0 < floor <= 1).
        wall: stiffness of the quadratic wall outside the box (> 0).
        name: short name used in reports.
    """

    dim = 2

    def __init__(self, image, extent=None, blur: float = 2.0, floor: float = 1e-3, wall: float = 10.0,
                 name: str = "image"):
        img = np.asarray(image, dtype=np.float64)
        if img.ndim != 2 or min(img.shape) < 2 or not np.all(np.isfinite(img)) or np.any(img < 0) or img.max() <= 0:
            raise BoltzflowError(f"image must be a finite non-negative (H, W) array with H, W >= 2 and some ink, "
                                 f"got shape {img.shape}")
        if not 0.0 < floor <= 1.0:
            raise BoltzflowError(f"floor must be in (0, 1], got {floor}")
        if not wall > 0.0:
            raise BoltzflowError(f"wall must be > 0, got {wall}")
        h, w = img.shape
        if extent is None:
            half = 3.0
            sx, sy = (half, half * (h - 1) / (w - 1)) if w >= h else (half * (w - 1) / (h - 1), half)
            extent = (-sx, sx, -sy, sy)
        xmin, xmax, ymin, ymax = (float(e) for e in extent)
        if not (xmax > xmin and ymax > ymin):
            raise BoltzflowError(f"extent must be (xmin, xmax, ymin, ymax) with xmax > xmin, ymax > ymin, got {extent}")
        if blur > 0:
            # imported here: every import of boltzflow would pay for scipy.ndimage
            from scipy.ndimage import gaussian_filter

            img = gaussian_filter(img, blur, mode="constant", cval=0.0)
        grid = np.maximum(img / img.max(), floor)

        self.name = name
        self.grid = grid  # (H, W) node intensities, float64
        self.extent = (xmin, xmax, ymin, ymax)
        self.blur, self.floor, self.wall = float(blur), float(floor), float(wall)
        self.shape = (h, w)
        self.hx = (xmax - xmin) / (w - 1)
        self.hy = (ymax - ymin) / (h - 1)
        self._build_pieces()

    # Normaliser and the piece table ---------------------------------------------------------------------------------
    def _build_pieces(self):
        """Every piece of R^2 with its mass and a parametrisation ``x = o + s1 e1 + s2 e2`` (see module docstring)."""
        g = self.grid
        h, w = self.shape
        xmin, xmax, ymin, ymax = self.extent
        hx, hy = self.hx, self.hy
        wall = self.wall
        strip = math.sqrt(math.pi / (2.0 * wall))  # int_0^inf exp(-wall t^2 / 2) dt
        quad = math.pi / (2.0 * wall)  # the same over a quarter plane

        rows = []  # (mass, o, e1, e2, a, b, c, d, halfnormal1, halfnormal2)

        def add(mass, ox, oy, e1, e2, a, b, c, d, hn1, hn2):
            n = mass.size
            rows.append(np.column_stack([
                mass.ravel(), np.broadcast_to(ox, mass.shape).ravel(), np.broadcast_to(oy, mass.shape).ravel(),
                np.tile(e1, (n, 1)), np.tile(e2, (n, 1)),
                a.ravel(), b.ravel(), c.ravel(), d.ravel(), np.full(n, hn1), np.full(n, hn2),
            ]))

        # cells: u along +x (columns), v along -y (rows)
        a, b, c, d = g[:-1, :-1], g[:-1, 1:], g[1:, :-1], g[1:, 1:]
        jj, ii = np.meshgrid(np.arange(w - 1), np.arange(h - 1))
        add(hx * hy * (a + b + c + d) / 4.0, xmin + jj * hx, ymax - ii * hy, (hx, 0.0), (0.0, -hy), a, b, c, d,
            0.0, 0.0)
        # boundary strips: s1 along the segment (linear in the end values; c = a, d = b), s2 half-normal outward
        j = np.arange(w - 1)
        i = np.arange(h - 1)
        for vals, ox, oy, e1, e2, length in (
            (g[0], xmin + j * hx, ymax, (hx, 0.0), (0.0, 1.0), hx),  # top
            (g[-1], xmin + j * hx, ymin, (hx, 0.0), (0.0, -1.0), hx),  # bottom
            (g[:, 0], xmin, ymax - i * hy, (0.0, -hy), (-1.0, 0.0), hy),  # left
            (g[:, -1], xmax, ymax - i * hy, (0.0, -hy), (1.0, 0.0), hy),  # right
        ):
            ea, eb = vals[:-1], vals[1:]
            add(length * (ea + eb) / 2.0 * strip, ox, oy, e1, e2, ea, eb, ea, eb, 0.0, 1.0)
        # corner quadrants: both coordinates half-normal outward
        for val, ox, oy, e1, e2 in (
            (g[0, 0], xmin, ymax, (-1.0, 0.0), (0.0, 1.0)),
            (g[0, -1], xmax, ymax, (1.0, 0.0), (0.0, 1.0)),
            (g[-1, 0], xmin, ymin, (-1.0, 0.0), (0.0, -1.0)),
            (g[-1, -1], xmax, ymin, (1.0, 0.0), (0.0, -1.0)),
        ):
            one = np.ones(1)
            add(np.array([val * quad]), ox, oy, e1, e2, one, one, one, one, 1.0, 1.0)

        table = np.concatenate(rows, axis=0)
        masses = table[:, 0]
        z = masses.sum()
        self.log_z = float(math.log(z))
        self.mass_inside = float(masses[: (h - 1) * (w - 1)].sum() / z)  # probability of the box
        self._pieces = table[:, 1:]  # (K, 12): ox, oy, e1x, e1y, e2x, e2y, a, b, c, d, hn1, hn2
        self._alias_prob, self._alias_idx = _alias_table(masses / z)

    # Density ---------------------------------------------------------------------------------------------------------
    def _log_prob(self, x: jax.Array) -> jax.Array:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.zeros(()).dtype)
        dt = x.dtype
        h, w = self.shape
        xmin, xmax, ymin, ymax = self.extent
        col = (x[:, 0] - xmin) / self.hx
        row = (ymax - x[:, 1]) / self.hy
        colc = jnp.clip(col, 0.0, w - 1.0)
        rowc = jnp.clip(row, 0.0, h - 1.0)
        d2 = ((col - colc) * self.hx) ** 2 + ((row - rowc) * self.hy) ** 2
        j0 = jnp.clip(jnp.floor(colc), 0, w - 2)
        i0 = jnp.clip(jnp.floor(rowc), 0, h - 2)
        u = colc - j0
        v = rowc - i0
        j0 = j0.astype(jnp.int32)
        i0 = i0.astype(jnp.int32)
        g = jnp.asarray(self.grid, dt)
        a, b = g[i0, j0], g[i0, j0 + 1]
        c, d = g[i0 + 1, j0], g[i0 + 1, j0 + 1]
        dens = (a * (1 - u) + b * u) * (1 - v) + (c * (1 - u) + d * u) * v
        return jnp.log(dens) - 0.5 * self.wall * d2

    # Exact sampler ---------------------------------------------------------------------------------------------------
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact samples ``(n, 2)`` (module docstring); jittable with static ``n``."""
        n = int(n)
        dt = jnp.zeros(()).dtype
        k_idx, k_acc, k_u = jax.random.split(key, 3)
        kk = len(self._alias_prob)
        idx = jax.random.randint(k_idx, (n,), 0, kk)
        keep = jax.random.uniform(k_acc, (n,), dtype=dt) < jnp.asarray(self._alias_prob, dt)[idx]
        piece = jnp.where(keep, idx, jnp.asarray(self._alias_idx, jnp.int32)[idx])
        p = jnp.asarray(self._pieces, dt)[piece]  # (n, 12)
        o, e1, e2 = p[:, 0:2], p[:, 2:4], p[:, 4:6]
        a, b, c, d = p[:, 6], p[:, 7], p[:, 8], p[:, 9]
        hn1, hn2 = p[:, 10] > 0.5, p[:, 11] > 0.5
        tiny = jnp.finfo(dt).tiny
        r = jax.random.uniform(k_u, (n, 4), dtype=dt, minval=tiny, maxval=1.0)
        s1 = _sample_linear(r[:, 0], 0.5 * (a + c), 0.5 * (b + d))
        s2 = _sample_linear(r[:, 1], a * (1 - s1) + b * s1, c * (1 - s1) + d * s1)
        # half-normal distances with std 1/sqrt(wall): |N| = sqrt(2) erfinv(r) for r uniform on (0, 1)
        scale = math.sqrt(2.0 / self.wall)
        s1 = jnp.where(hn1, scale * jax.scipy.special.erfinv(r[:, 2]), s1)
        s2 = jnp.where(hn2, scale * jax.scipy.special.erfinv(r[:, 3]), s2)
        return o + s1[:, None] * e1 + s2[:, None] * e2

    # Constructors ----------------------------------------------------------------------------------------------------
    @classmethod
    def smiley(cls, res: int = 128, **kwargs) -> "ImageTarget":
        """A smiley face on [-3, 3]^2 (``res x res`` rendering)."""
        return cls(image_render.smiley(int(res)), name="smiley", **kwargs)

    @classmethod
    def dog(cls, res: int = 128, **kwargs) -> "ImageTarget":
        """A dog silhouette on [-3, 3]^2 (``res x res`` rendering)."""
        return cls(image_render.dog(int(res)), name="dog", **kwargs)

    @classmethod
    def text(cls, text: str = "boltzflow", height: int = 64, **kwargs) -> "ImageTarget":
        """A line of text (DejaVu Sans Bold, ``height`` px tall); x spans [-3, 3], y keeps the aspect ratio."""
        if not isinstance(text, str) or not text.strip() or len(text) > 40:
            raise BoltzflowError(f"text must be a visible string of at most 40 characters, got {text!r}")
        return cls(image_render.text(text, int(height)), name="text", **kwargs)

    def __repr__(self) -> str:
        return f"ImageTarget(name={self.name!r}, shape={self.shape}, extent={self.extent})"
