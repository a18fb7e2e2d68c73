"""The target's own axes, from the Hessians of log p: a rotation under which the target is as separable as it gets.

A coupling flow splits the coordinates into fixed halves, so it learns a target whose factors lie along the axes far
more easily than the same target rotated (issue: learned linear mixing; a rotated Many Well 32 stalls at flow ESS
0.2 with learned LU maps, against 0.93 aligned). The rotation can be read off the target itself. If

    p(x) = prod_i f_i(r_i . x)        (independent factors along the orthonormal directions r_i, rows of R),

then at every point the Hessian of log p is

    H(x) = R^T diag(g_1(x), ..., g_d(x)) R,       g_i = (log f_i)'' at r_i . x,

so all Hessians commute and share the eigenvectors r_i. A random combination M = sum_k c_k H(x_k) / ||H(x_k)||_F
(c ~ N(0, I)) then has exactly the r_i as eigenvectors whenever its eigenvalues are distinct; directions with equal
curvature everywhere (a Gaussian factor's) come out mixed among themselves, which changes nothing because p is
isotropic within them. For a Gaussian, H = -Sigma^-1 and the frame is its principal axes. For a target that is not
separable no rotation diagonalises every H(x_k); the score

    off(Q) = sum_k ||offdiag(Q^T Hn_k Q)||_F^2 / sum_k ||Hn_k||_F^2    (Hn_k = H(x_k) / ||H(x_k)||_F)

measures how far a frame Q is from it (0: separable in Q's axes, 1: all curvature between axes). Of the identity
and the eigenbases of ``n_mix`` random combinations, :func:`hessian_frame` returns the frame of lowest score, and
the identity unless a rotation lowers the score by at least ``min_gain`` (an axis-aligned target keeps its axes).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from boltzflow.errors import BoltzflowError


@dataclass(frozen=True)
class Frame:
    """``rotation`` (d, d) orthogonal, float64, columns = the target's axes in x's coordinates (identity when the
    axes were kept); ``off_diagonal``: the score off(Q) (module docstring) in that frame; ``off_diagonal_axes``: the
    score in the given axes; ``n_points``: the Hessians used (finite ones)."""

    rotation: np.ndarray
    off_diagonal: float
    off_diagonal_axes: float
    n_points: int

    @property
    def rotated(self) -> bool:
        return not np.array_equal(self.rotation, np.eye(self.rotation.shape[0]))

    def summary(self) -> dict:
        return {"rotated": self.rotated, "off_diagonal": self.off_diagonal,
                "off_diagonal_axes": self.off_diagonal_axes, "n_points": self.n_points}


def log_prob_hessians(log_prob, x) -> np.ndarray:
    """H(x_k) of log p at the rows of ``x`` (n, d), float64 (n, d, d); ``log_prob`` maps (n, d) to (n,)."""
    x = jnp.asarray(x)
    hess = jax.jit(jax.vmap(jax.hessian(lambda v: log_prob(v[None])[0])))(x)
    return np.asarray(hess, np.float64)


def off_diagonal(rotation: np.ndarray, normed_hessians: np.ndarray) -> float:
    """The score off(Q) (module docstring) of the frame ``rotation`` (columns = axes) for Hessians already divided
    by their Frobenius norms."""
    b = np.einsum("ji,kjl,lm->kim", rotation, normed_hessians, rotation)
    total = float(np.sum(b**2))
    return (total - float(np.sum(np.einsum("kii->ki", b) ** 2))) / total


def hessian_frame(log_prob, x, key, n_mix: int = 8, min_gain: float = 0.05) -> Frame:
    """The frame of the module docstring from the Hessians of ``log_prob`` at the rows of ``x`` (points where p
    has its mass, e.g. an exploration's end points; non-finite Hessians are left out)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise BoltzflowError(f"hessian_frame needs at least 2 points of shape (n, d), got {x.shape}")
    hess = log_prob_hessians(log_prob, x)
    norms = np.linalg.norm(hess, axis=(1, 2))
    keep = np.all(np.isfinite(hess), axis=(1, 2)) & (norms > 0)
    if keep.sum() < 2:
        raise BoltzflowError(f"hessian_frame: only {int(keep.sum())} of {len(x)} points have a finite, non-zero "
                             "Hessian of log p")
    hn = hess[keep] / norms[keep, None, None]
    hn = 0.5 * (hn + np.swapaxes(hn, 1, 2))
    eye = np.eye(x.shape[1])
    off_axes = off_diagonal(eye, hn)
    best, best_off = eye, off_axes
    coefficients = np.asarray(jax.random.normal(key, (n_mix, hn.shape[0])), np.float64)
    for c in coefficients:
        q = np.linalg.eigh(np.einsum("k,kij->ij", c, hn))[1]
        o = off_diagonal(q, hn)
        if o < best_off:
            best, best_off = q, o
    if off_axes - best_off < min_gain:
        best, best_off = eye, off_axes
    return Frame(best, float(best_off), float(off_axes), int(keep.sum()))
