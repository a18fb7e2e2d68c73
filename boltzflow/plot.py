"""Pictures people look at: target contours with samples, training curves, free-energy profiles. Files only
(matplotlib figures made without pyplot, so the caller's backend and figures are left as they are)."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from boltzflow.molecules.metrics import angle_density, named_torsions, ramachandran_pairs, torsion_angles
from boltzflow.train.loop import read_history


def _save(fig, path) -> Path:
    """Lay out and write ``fig`` (PNG at 110 dpi); returns the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def _subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """A figure and its axes as ``pyplot.subplots`` makes them, without pyplot: the caller's process keeps its
    backend (a notebook's included), and nothing is left open to close. matplotlib is imported here, not with
    boltzflow: a process that draws nothing does not pay for it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize"))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _pairs(dim: int, max_pairs: int = 3) -> list[tuple[int, int]]:
    return [(2 * i, 2 * i + 1) for i in range(min(dim // 2, max_pairs))] or [(0, 0)]


def plot_samples(target, x, path, title: str = "", exact=None, max_points: int = 3000) -> Path:
    """Scatter of samples over contours of log p (2-D targets) or of the pair marginal (``pair_log_prob``).

    For dim > 2 one panel per coordinate pair (x0, x1), (x2, x3), ... (at most three).
    """
    x = np.asarray(x)[:max_points]
    pairs = _pairs(target.dim)
    fig, axes = _subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        ref = np.asarray(exact)[:, [i, j]] if exact is not None else x[:, [i, j]]
        finite = ref[np.all(np.isfinite(ref), axis=1)]
        lo, hi = np.percentile(finite, 0.5, axis=0), np.percentile(finite, 99.5, axis=0)
        pad = 0.15 * (hi - lo) + 0.5
        lo, hi = lo - pad, hi + pad
        log_prob_2d = target.log_prob if target.dim == 2 else getattr(target, "pair_log_prob", None)
        if log_prob_2d is not None:
            g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
            lp = np.asarray(log_prob_2d(jnp.asarray(np.stack([g0.ravel(), g1.ravel()], 1), jnp.float32)))
            lp = np.maximum(lp.reshape(g0.shape), lp.max() - 30)
            ax.contour(g0, g1, lp, levels=20, linewidths=0.6, cmap="viridis")
        ax.scatter(x[:, i], x[:, j], s=2, alpha=0.4, color="C3", label="samples")
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel=f"x{i}", ylabel=f"x{j}")
    axes[0][0].set_title(title or target.name)
    return _save(fig, path)


def plot_image_grid(rows, shape, path, title: str = "") -> Path:
    """Grey-scale images in rows, one row per ``(label, images (n, h * w) in [0, 1])`` of ``rows`` (a VAE's test
    images and their reconstructions, or its samples); ``shape`` = (h, w)."""
    rows = [(label, np.asarray(images)) for label, images in rows]
    n = max(images.shape[0] for _, images in rows)
    fig, axes = _subplots(len(rows), n, figsize=(0.9 * n, 0.95 * len(rows) + 0.3 * bool(title)), squeeze=False)
    for (label, images), line in zip(rows, axes):
        for i, ax in enumerate(line):
            if i < images.shape[0]:
                ax.imshow(images[i].reshape(shape), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(i < images.shape[0])
        line[0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_training(rows: list[dict], path) -> Path:
    """Loss against step, and flow ESS against training wall-clock, from a run's logged metrics (its history)."""
    path = Path(path)
    fig, (a, b) = _subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in rows]
    a.plot(steps, [r.get("loss", np.nan) for r in rows], lw=0.8)
    a.set(xlabel="step", ylabel="loss", title="training loss")
    for key, label in (("flow_ess", "flow IS"), ("ais_ess", "AIS (training target)"), ("ess", "batch")):
        pts = [(r["time_s"], r[key]) for r in rows if key in r]
        if pts:
            b.plot(*zip(*pts), marker="o" if key == "flow_ess" else None, ms=3, lw=0.8, label=label)
    b.set(xlabel="training wall-clock (s)", ylabel="ESS (fraction)", ylim=(0, 1.02), title="effective sample size")
    b.legend(fontsize=8)
    return _save(fig, path)


#: x axes of :func:`plot_ess_curves`: metrics.jsonl key, scale, label
ESS_CURVE_AXES = {"time": ("time_s", 1 / 60, "training wall-clock (min)"),
                  "flow_evals": ("flow_evals", 1.0, "flow evaluations"),
                  "target_evals": ("target_evals", 1.0, "target evaluations")}


def plot_ess_curves(runs: dict, path, title: str | None = None, x: str = "time") -> Path:
    """Flow ESS (the periodic flow-IS evaluations in metrics.jsonl) against wall-clock or cost, one line per run.

    ``runs`` maps a legend label to a run directory; labels sharing the text before " seed" share a colour. ``x``
    is a key of :data:`ESS_CURVE_AXES`: ``time`` (minutes), ``flow_evals`` or ``target_evals`` (the cumulative
    counts every training step records), so that methods are compared at equal cost."""
    if x not in ESS_CURVE_AXES:
        raise ValueError(f"x must be one of {sorted(ESS_CURVE_AXES)}, got {x!r}")
    key, scale, xlabel = ESS_CURVE_AXES[x]
    fig, ax = _subplots(figsize=(6.4, 3.8))
    colours = {}
    for label, run_dir in runs.items():
        pts = [(r[key] * scale, r["flow_ess"]) for r in read_history(Path(run_dir)) if "flow_ess" in r and key in r]
        if not pts:
            raise ValueError(f"no flow ESS evaluations with {key} in {run_dir}/metrics.jsonl")
        group = label.split(" seed")[0]
        colours.setdefault(group, f"C{len(colours)}")
        ax.plot(*zip(*pts), marker="o", ms=2.5, lw=0.9, color=colours[group], label=label)
    ax.set(xlabel=xlabel, ylabel="flow ESS (fraction)", ylim=(0, 1.02),
           title=title or f"flow ESS against {xlabel.split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_free_energy(centres, f_exact, profiles: dict, path, xlabel: str = "$x_1$",
                     title: str = "free energy along $x_1$") -> Path:
    """Free-energy profiles F(b) = -log(mass(b) / width) against the exact one, as in the SNF paper's Fig. 2.

    ``profiles`` maps a legend label to an array ``(n_trainings, n_bins)`` of estimates (NaN where a bin is empty);
    each is drawn as its mean over trainings with a band of ± one standard deviation. Units: kT."""
    centres, f_exact = np.asarray(centres), np.asarray(f_exact)
    fig, ax = _subplots(figsize=(6.4, 4.8))
    shift = np.min(f_exact)
    ax.plot(centres, f_exact - shift, color="k", lw=2.2, label="exact (quadrature)")
    for i, (label, f) in enumerate(profiles.items()):
        f = np.asarray(f, float)
        with np.errstate(all="ignore"):
            mean, std = np.nanmean(f, 0) - shift, np.nanstd(f, 0)
        ax.plot(centres, mean, color=f"C{i}", lw=1.2, label=label)
        ax.fill_between(centres, mean - std, mean + std, color=f"C{i}", alpha=0.25, lw=0)
    ax.set(xlabel=xlabel, ylabel="free energy (kT)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: profiles fill the axes
    return _save(fig, path)


_ANGLE_TICKS = ([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], ["$-\\pi$", "$-\\pi/2$", "0", "$\\pi/2$", "$\\pi$"])


def _angle_label(name: str) -> str:
    """phi -> $\\phi$, omega_2 -> $\\omega_2$, gamma1 -> $\\gamma_1$; other names as they are."""
    for greek in ("phi", "psi", "omega", "gamma", "chi"):
        if name == greek:
            return f"$\\{greek}$"
        if name.startswith(greek) and name[len(greek):].lstrip("_").isdigit():
            return f"$\\{greek}_{{{name[len(greek):].lstrip('_')}}}$"
    return name


def plot_ramachandran(panels, path, bins: int = 100) -> Path:
    """Ramachandran plots side by side, as the FAB paper's Figure 3 (reference | model | model reweighted).

    ``panels`` is a list of ``(title, phi, psi, log_w or None)``: each is drawn as a 2-D histogram density on
    [-pi, pi]^2 (``bins`` x ``bins``, weighted by the self-normalised exp(log_w) if given; non-finite weights count
    as 0) with one logarithmic colour scale shared by all panels and a colour bar on the right. A panel without a
    sample of positive weight says so instead."""
    panels = list(panels)
    if not panels:
        raise ValueError("plot_ramachandran needs at least one panel")
    dens = [angle_density(np.stack([np.asarray(phi, float).reshape(-1), np.asarray(psi, float).reshape(-1)], 1),
                          log_w, bins) for _, phi, psi, log_w in panels]
    positive = np.concatenate([d[d > 0] for d in dens if d is not None] or [np.ones(1)])
    vmax = positive.max()
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=max(positive.min(), vmax * 1e-6), vmax=vmax)
    n = len(panels)
    fig, axes = _subplots(1, n + 1, figsize=(3.9 * n + 0.6, 4.0),
                          gridspec_kw={"width_ratios": [1.0] * n + [0.06]})
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    mesh = None
    for i, (ax, (title, *_), d) in enumerate(zip(axes[:n], panels, dens)):
        if d is None:
            ax.text(0.5, 0.5, "no sample with\npositive weight", ha="center", va="center", transform=ax.transAxes)
        else:
            mesh = ax.pcolormesh(edges, edges, np.ma.masked_less_equal(d.T, 0), norm=norm, cmap="viridis",
                                 rasterized=True)
        ax.set(xlim=(-np.pi, np.pi), ylim=(-np.pi, np.pi), xlabel="$\\phi$", title=title, aspect="equal")
        ax.set_xticks(*_ANGLE_TICKS)
        ax.set_yticks(*_ANGLE_TICKS)
        if i == 0:
            ax.set_ylabel("$\\psi$")
        else:
            ax.tick_params(labelleft=False)
    if mesh is not None:
        fig.colorbar(mesh, cax=axes[n], label="density")
    else:
        axes[n].set_axis_off()
    return _save(fig, path)


def plot_torsion_marginals(named: dict, path, log_scale: bool = True, bins: int = 100) -> Path:
    """Marginal densities of torsion angles, one panel per torsion: the phi marginal in log scale (FAB paper,
    Figure 4) or phi, psi and the methyl rotations (SNF paper, Figure 5).

    ``named`` maps a torsion name ("phi", "gamma1", ...) to a list of ``(label, angles, log_w or None)``, each drawn
    as a histogram density on [-pi, pi] (``bins`` bins; weighted by the self-normalised exp(log_w) if given). With
    ``log_scale`` the density axis is logarithmic (empty bins left out), showing down to 1e-5 of the highest one."""
    named = dict(named)
    if not named:
        raise ValueError("plot_torsion_marginals needs at least one torsion")
    n = len(named)
    ncols = min(n, 5)
    nrows = -(-n // ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(3.6 * ncols, 3.1 * nrows), squeeze=False)
    for ax in axes.ravel()[n:]:
        fig.delaxes(ax)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for ax, (name, lines) in zip(axes.ravel(), named.items()):
        top, colours = 0.0, {}
        for label, angles, log_w in lines:
            d = angle_density(np.asarray(angles, float).reshape(-1), log_w, bins)
            colour = colours.setdefault(label, f"C{len(colours)}")
            if d is None:
                ax.plot([], [], color=colour, label=f"{label} (no weight)")
                continue
            top = max(top, d.max())
            ax.plot(centres, np.where(d > 0, d, np.nan) if log_scale else d, drawstyle="steps-mid", lw=1.1,
                    color=colour, label=label)
        ax.set(xlim=(-np.pi, np.pi), xlabel=_angle_label(name), ylabel="density")
        ax.set_xticks(*_ANGLE_TICKS)
        if log_scale:
            ax.set_yscale("log")
            if top > 0:
                ax.set_ylim(top * 1e-5, top * 2)
        elif top > 0:
            ax.set_ylim(0, top * 1.05)
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=8)
    return _save(fig, path)


def plot_histograms(panels: dict, path, title: str = "", bins: int = 80) -> Path:
    """Histogram densities side by side: ``panels`` maps a panel's x label to a list of ``(label, values,
    weights or None)``, each drawn as a step line over the range of all its values (non-finite values and their
    weights left out; the weights normalised)."""
    fig, axes = _subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (xlabel, lines) in zip(axes[0], panels.items()):
        finite = [np.asarray(v, np.float64)[np.isfinite(v)] for _, v, _ in lines]
        both = np.concatenate([f for f in finite if f.size])
        edges = np.linspace(*np.percentile(both, [0.1, 99.9]), bins + 1)
        for k, (label, values, weights) in enumerate(lines):
            values = np.asarray(values, np.float64)
            ok = np.isfinite(values)
            w = None if weights is None else np.asarray(weights, np.float64)[ok]
            dens, _ = np.histogram(values[ok], edges, weights=w, density=True)
            ax.plot(0.5 * (edges[1:] + edges[:-1]), dens, drawstyle="steps-mid", lw=1.1, color=f"C{k}", label=label)
        ax.set(xlabel=xlabel, ylabel="density")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        axes[0][0].set_title(title)
    return _save(fig, path)


def plot_molecule_samples(target, x, log_w, out_dir, reference_x=None) -> list[Path]:
    """A molecular run's pictures: ``ramachandran.png`` (reference | model | model reweighted, FAB Figure 3; the
    reference panel only when reference samples are given) and ``torsions.png`` (every named torsion's marginal in
    log scale: phi as FAB Figure 4, phi / psi / methyl rotations as SNF Figure 5). Model samples of the wrong
    chirality are left out (weight 0), as in evaluation."""
    x = np.asarray(x)
    keep = np.asarray(target.chirality.mask(x))
    x, log_w = x[keep], np.asarray(log_w, np.float64)[keep]
    torsions = named_torsions(target.molecule)
    model = torsion_angles(x, torsions)
    ref = torsion_angles(np.asarray(reference_x), torsions) if reference_x is not None else None
    out_dir = Path(out_dir)
    paths = []
    for phi, psi in ramachandran_pairs(target.molecule)[:1]:
        panels = ([("reference (MD)", ref[phi], ref[psi], None)] if ref is not None else []) + [
            ("model", model[phi], model[psi], None), ("model, reweighted", model[phi], model[psi], log_w)]
        paths.append(plot_ramachandran(panels, out_dir / "ramachandran.png"))
    named = {name: ([("reference (MD)", ref[name], None)] if ref is not None else [])
             + [("model", model[name], None), ("model, reweighted", model[name], log_w)] for name in torsions}
    if named:
        paths.append(plot_torsion_marginals(named, out_dir / "torsions.png"))
    return paths
