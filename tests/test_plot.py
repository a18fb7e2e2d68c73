"""Plots of a run's metrics: the figure shows the data it was given (checked on the figure as it is saved and on
the written PNG), and a run without ESS evaluations is an error, not an empty plot."""

import json

import matplotlib.image
import numpy as np
import pytest

from boltzflow.plot import plot_ess_curves, plot_free_energy, plot_training


def _run(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _rows(loss_power=1.0):
    return [{"step": s, "time_s": 0.1 * s, "loss": 1.0 / (1 + s) ** loss_power,
             **({"flow_ess": s / 100} if s % 10 == 0 else {})} for s in range(1, 51)]



def _image(path):
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def _not_blank(img):
    """A real picture, not a blank canvas: some non-white pixels and more than a few colours. (Empty axes would
    pass this; that the data are drawn is checked on the saved figure and by comparing pictures of different data.)"""
    rgb = img[..., :3].reshape(-1, 3)
    background = np.all(rgb > 0.99, axis=1)
    return 0.01 < 1 - background.mean() < 0.9 and len(np.unique(rgb, axis=0)) > 10


def test_training_plot_shows_the_loss_and_the_ess_evaluations(tmp_path, saved):
    rows = _rows()
    out = plot_training(rows, tmp_path / "a.png")
    assert out == tmp_path / "a.png"
    (fig,) = saved
    loss_ax, ess_ax = fig.axes[:2]
    (loss_line,) = loss_ax.get_lines()
    np.testing.assert_array_equal(loss_line.get_xdata(), [r["step"] for r in rows])
    np.testing.assert_array_equal(loss_line.get_ydata(), [r["loss"] for r in rows])
    (ess_line,) = ess_ax.get_lines()  # only flow_ess is in these rows
    np.testing.assert_allclose(ess_line.get_xdata(), [r["time_s"] for r in rows if "flow_ess" in r])
    np.testing.assert_allclose(ess_line.get_ydata(), [r["flow_ess"] for r in rows if "flow_ess" in r])
    assert ess_line.get_label() == "flow IS"
    img = _image(out)
    assert img.shape[:2] == (396, 1100)  # 10 x 3.6 inches at 110 dpi
    assert _not_blank(img)
    # different data, different picture
    other = _image(plot_training(_rows(loss_power=0.3), tmp_path / "b.png"))
    assert other.shape == img.shape and np.abs(other - img).max() > 0.5


def test_ess_curves_one_line_per_run_coloured_by_group(tmp_path, saved):
    rows = _rows()
    late = [{**r, "time_s": 2 * r["time_s"]} for r in rows]
    runs = {"NSF seed 0": _run(tmp_path, "a", rows), "NSF seed 1": _run(tmp_path, "b", late),
            "RNVP seed 0": _run(tmp_path, "c", rows)}
    out = plot_ess_curves(runs, tmp_path / "ess.png")
    (fig,) = saved
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == list(runs)
    evals = [r for r in rows if "flow_ess" in r]
    for line, factor in zip(lines, (1, 2, 1)):
        np.testing.assert_allclose(line.get_xdata(), [factor * r["time_s"] / 60 for r in evals])  # minutes
        np.testing.assert_allclose(line.get_ydata(), [r["flow_ess"] for r in evals])
    # the seeds of one method share a colour, another method gets another
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert _not_blank(_image(out))


def test_ess_curves_against_flow_evaluations(tmp_path, saved):
    rows = [{**r, "flow_evals": 1000 * r["step"]} for r in _rows()]
    plot_ess_curves({"a": _run(tmp_path, "a", rows)}, tmp_path / "ess.png", x="flow_evals")
    (fig,) = saved
    (line,) = fig.axes[0].get_lines()
    evals = [r for r in rows if "flow_ess" in r]
    np.testing.assert_allclose(line.get_xdata(), [r["flow_evals"] for r in evals])
    assert fig.axes[0].get_xlabel() == "flow evaluations"
    with pytest.raises(ValueError, match="x must be one of"):
        plot_ess_curves({"a": _run(tmp_path, "b", rows)}, tmp_path / "ess2.png", x="steps")


def test_ess_curve_of_a_run_without_evaluations_is_an_error(tmp_path):
    run = _run(tmp_path, "a", [{"step": 1, "time_s": 0.1, "loss": 1.0}])
    with pytest.raises(ValueError, match="no flow ESS"):
        plot_ess_curves({"x": run}, tmp_path / "ess.png")


def test_free_energy_profile_plot_with_empty_bins(tmp_path, saved):
    centres = np.linspace(-2.45, 2.45, 50)
    f = centres**4 - 6 * centres**2
    est = np.stack([f + 0.1, f - 0.1])
    est[0, :3] = np.nan  # empty bins in one training
    out = plot_free_energy(centres, f, {"model": est}, tmp_path / "fe.png")
    (fig,) = saved
    ax = fig.axes[0]
    exact, model = ax.get_lines()
    shift = f.min()  # both curves are drawn relative to the exact profile's minimum
    np.testing.assert_allclose(exact.get_ydata(), f - shift)
    np.testing.assert_allclose(model.get_xdata(), centres)
    # the mean over trainings ignores the empty bins: there it is the other training's estimate
    expected = np.where(np.arange(50) < 3, f - 0.1, f) - shift
    np.testing.assert_allclose(model.get_ydata(), expected, atol=1e-12)
    assert np.isfinite(model.get_ydata()).all()
    # the +- one standard deviation band: 0.1 where both trainings have the bin, 0 where only one has
    (band,) = ax.collections
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    assert ys.max() == pytest.approx((expected + np.where(np.arange(50) < 3, 0.0, 0.1)).max())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["exact (quadrature)", "model"]
    img = _image(out)
    assert _not_blank(img)
    other = _image(plot_free_energy(centres, f, {"model": est + 3.0}, tmp_path / "fe2.png"))
    assert other.shape == img.shape and np.abs(other - img).max() > 0.5


def test_plotting_leaves_the_callers_matplotlib_as_it_was(tmp_path):
    """A notebook's backend survives importing boltzflow and drawing with it (a fresh process: the backend is
    chosen once per process); pyplot is not even imported."""
    import subprocess
    import sys

    code = f"""
import sys, matplotlib
matplotlib.use("svg")
import boltzflow, boltzflow.molecules.free_energy_plot
from boltzflow.plot import plot_training
plot_training({_rows()!r}, {str(tmp_path / "t.png")!r})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "t.png").stat().st_size > 1000
