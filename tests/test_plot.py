"""Plots from metrics files: a PNG is written, and a run without ESS evaluations is an error, not an empty plot."""

import json

import pytest

import numpy as np

from boltzflow.plot import plot_ess_curves, plot_free_energy, plot_training


def _run(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_training_and_ess_curve_plots_are_written(tmp_path):
    rows = [{"step": s, "time_s": 0.1 * s, "loss": 1.0 / (1 + s), **({"flow_ess": s / 100} if s % 10 == 0 else {})}
            for s in range(1, 51)]
    a, b = _run(tmp_path, "a", rows), _run(tmp_path, "b", rows)
    out = plot_training(a)
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
    out = plot_ess_curves({"NSF seed 0": a, "NSF seed 1": b}, tmp_path / "ess.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_ess_curve_of_a_run_without_evaluations_is_an_error(tmp_path):
    run = _run(tmp_path, "a", [{"step": 1, "time_s": 0.1, "loss": 1.0}])
    with pytest.raises(ValueError, match="no flow ESS"):
        plot_ess_curves({"x": run}, tmp_path / "ess.png")


def test_free_energy_profile_plot_with_empty_bins(tmp_path):
    centres = np.linspace(-2.45, 2.45, 50)
    f = centres**4 - 6 * centres**2
    est = np.stack([f + 0.1, f - 0.1])
    est[0, :3] = np.nan  # empty bins in one training
    out = plot_free_energy(centres, f, {"model": est}, tmp_path / "fe.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
