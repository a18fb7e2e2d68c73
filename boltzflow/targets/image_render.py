"""Draw the 2-D image-density pictures (smiley face, dog silhouette, a line of text) as intensity arrays.

Everything is rendered here with matplotlib's Agg canvas (no pyplot, no global state; text uses matplotlib's bundled
DejaVu Sans font), so nothing is downloaded. Each function returns a float64 array ``(H, W)`` in [0, 1], row 0 at
the top, where 1 is ink (high density) and 0 is background; results are cached.
"""

from __future__ import annotations

import functools

import numpy as np

_DPI = 100


def _render(draw, width: int, height: int, xlim, ylim) -> np.ndarray:
    """Render ``draw(ax)`` (black on white) on a ``width x height`` pixel canvas; return ink intensity in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: matplotlib is slow to import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    draw(ax)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float64)[..., :3]
    gray = rgba.mean(axis=-1) / 255.0
    assert gray.shape == (height, width), gray.shape
    return np.clip(1.0 - gray, 0.0, 1.0)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=8)
def smiley(res: int = 128) -> np.ndarray:
    """A smiley face: a ring, two oval eyes and a smiling mouth arc, on a ``res x res`` canvas."""

    from matplotlib import patches

    def draw(ax):
        k = dict(color="black", lw=0)
        ax.add_patch(patches.Annulus((0.0, 0.0), 0.8, 0.12, **k))
        ax.add_patch(patches.Ellipse((-0.3, 0.28), 0.18, 0.3, **k))
        ax.add_patch(patches.Ellipse((0.3, 0.28), 0.18, 0.3, **k))
        ax.add_patch(patches.Wedge((0.0, 0.05), 0.5, 200, 340, width=0.12, **k))

    return _readonly(_render(draw, res, res, (-1, 1), (-1, 1)))


@functools.lru_cache(maxsize=8)
def dog(res: int = 128) -> np.ndarray:
    """A dog silhouette facing right (body, head, snout, ear, four legs, tail) on a ``res x res`` canvas."""

    from matplotlib import patches

    def draw(ax):
        k = dict(color="black", lw=0)
        ax.add_patch(patches.Ellipse((-0.05, -0.02), 1.05, 0.45, **k))  # body
        ax.add_patch(patches.Circle((0.5, 0.32), 0.2, **k))  # head
        ax.add_patch(patches.Polygon([(0.25, 0.12), (0.5, 0.0), (0.62, 0.25), (0.38, 0.38)], **k))  # neck
        ax.add_patch(patches.Ellipse((0.72, 0.26), 0.34, 0.17, **k))  # snout
        ax.add_patch(patches.Polygon([(0.36, 0.42), (0.42, 0.7), (0.54, 0.48)], **k))  # pointed ear
        for x0 in (-0.45, -0.3, 0.2, 0.35):  # legs
            ax.add_patch(patches.Rectangle((x0, -0.65), 0.1, 0.5, **k))
        ax.add_patch(patches.Polygon([(-0.5, 0.08), (-0.8, 0.45), (-0.74, 0.5), (-0.44, 0.16)], **k))  # tail
        ax.add_patch(patches.Circle((0.89, 0.28), 0.04, **k))  # nose

    return _readonly(_render(draw, res, res, (-1, 1), (-1, 1)))


@functools.lru_cache(maxsize=32)
def text(s: str = "boltzflow", height: int = 64) -> np.ndarray:
    """A line of text in DejaVu Sans Bold, ``height`` pixels tall, width fitted to the text (plus margins)."""
    if not s.strip():
        raise ValueError("text must contain a visible character")
    fontsize_pt = 0.5 * height * 72.0 / _DPI  # glyph body ~ half the canvas height
    # Width: render generously, then crop to the ink with a margin of height/4 on each side.
    width = int(height * (0.45 * len(s) + 1.0))

    def draw(ax):
        ax.text(0.5, 0.5, s, ha="center", va="center", fontsize=fontsize_pt, family="DejaVu Sans",
                weight="bold", transform=ax.transAxes, color="black")

    img = _render(draw, width, height, (0, 1), (0, 1))
    cols = np.nonzero(img.max(axis=0) > 0.05)[0]
    if len(cols) == 0:
        raise ValueError(f"text {s!r} rendered no ink")
    margin = height // 4
    lo, hi = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, width)
    return _readonly(np.ascontiguousarray(img[:, lo:hi]))
