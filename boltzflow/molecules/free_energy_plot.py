"""The picture of a free-energy surface (boltzflow.molecules.free_energy): F over two collective variables as
colours, kJ/mol from 0 at the most probable bin up to 12 kT, empty bins white, states outlined and named, beside the
reference's where there is one. Files only (no pyplot: the caller's backend is left as it is)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from boltzflow.molecules.free_energy import FreeEnergySurface

#: the colour scale's top, in kT (higher free energies show in its top colour)
CAP_KT = 12.0


def _intervals(interval: Sequence[float] | None, edges: np.ndarray) -> list[tuple[float, float]]:
    """A state's interval on one axis as drawable pieces: all of it if not given, two if it wraps through 180."""
    if interval is None:
        return [(edges[0], edges[-1])]
    lo, hi = map(float, interval)
    pieces = [(lo, hi)] if lo < hi else [(lo, edges[-1]), (edges[0], hi)]
    return [(max(a, edges[0]), min(b, edges[-1])) for a, b in pieces]  # within the picture


def plot_free_energy_surface(surface: FreeEnergySurface, path: str | os.PathLike,
                             states: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                             periodic: Sequence[str] = (), reference: FreeEnergySurface | None = None) -> Path:
    """Draw ``surface`` (pcolormesh with a colour bar, kJ/mol) with ``states`` outlined, to a PNG file; with a
    ``reference`` surface (MD's), the two side by side on one colour scale.

    Args:
        surface: from :func:`boltzflow.molecules.free_energy.free_energy_surface`.
        path: the PNG file.
        states: ``{state: {cv: (lo, hi)}}`` as :func:`~boltzflow.molecules.free_energy.state_free_energies` takes.
        periodic: names of the periodic CVs (axes in degrees, ticks every 90).
        reference: the same CVs' surface from reference samples, drawn on the right.

    Returns:
        the path written.

    Example:
        >>> plot_free_energy_surface(surface, "free_energy.png", ALANINE_DIPEPTIDE_STATES, ["phi", "psi"])
    """
    panels = [(surface, "model, reweighted")] + ([(reference, "reference MD")] if reference is not None else [])
    finite = np.concatenate([p.free_energy[np.isfinite(p.free_energy)] for p, _ in panels])
    # colours up to CAP_KT kT: bins holding a few light samples reach far higher free energies than any basin
    vmax = float(min(finite.max(), CAP_KT * surface.kT)) if finite.size else None
    # imported here, not with boltzflow: a process that draws nothing does not pay for matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6 * len(panels), 4.6), layout="constrained")  # not pyplot's: the caller keeps its backend
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (panel, what) in zip(axes[0], panels):
        mesh = _draw(ax, panel, states, periodic, vmax=vmax)
        ax.set_title(f"{what} (ESS {panel.n_effective:,.0f})", fontsize=10)
    fig.suptitle(f"free energy, kT = {surface.kT:.3g} kJ/mol", fontsize=10)
    fig.colorbar(mesh, ax=list(axes[0]), label="free energy (kJ/mol)", extend="max" if vmax is not None and
                 vmax < finite.max() else "neither")
    fig.savefig(path, dpi=110)
    return Path(path)


def _draw(ax, surface: FreeEnergySurface, states, periodic, vmax: float | None):
    """One surface with its states outlined on ``ax``; the mesh, for the colour bar."""
    from matplotlib.patches import Rectangle

    (x_name, y_name), (ex, ey) = surface.names, surface.edges
    f = np.ma.masked_invalid(surface.free_energy.T)
    mesh = ax.pcolormesh(ex, ey, f, cmap="viridis", rasterized=True, vmin=0.0, vmax=vmax)
    for i, (name, box) in enumerate((states or {}).items()):
        for x0, x1 in _intervals(box.get(x_name), ex):
            for y0, y1 in _intervals(box.get(y_name), ey):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2, ls="--",
                                       color=f"C{i + 1}"))
        x0, x1 = _intervals(box.get(x_name), ex)[0]
        y0, y1 = _intervals(box.get(y_name), ey)[0]
        ax.text(0.5 * (x0 + x1), 0.5 * (y0 + y1), name, color=f"C{i + 1}", ha="center", va="center", fontsize=9,
                weight="bold", clip_on=True,
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
    for axis, name, label in ((ax.xaxis, x_name, ax.set_xlabel), (ax.yaxis, y_name, ax.set_ylabel)):
        label(f"{name} ({'degrees' if name in periodic else 'nm'})")
        if name in periodic:
            axis.set_ticks(np.arange(-180, 181, 90))
    ax.set(xlim=(ex[0], ex[-1]), ylim=(ey[0], ey[-1]))
    return mesh
