"""A flow on a molecule's internal coordinates as boltzflow's model: config, AIS space, training, evaluation."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("openmm", reason="OpenMM is not installed (pip install 'boltzflow[molecules]')")

from boltzflow.cli import main  # noqa: E402
from boltzflow.config import config_from_dict  # noqa: E402
from boltzflow.errors import BoltzflowError  # noqa: E402
from boltzflow.experiment import build_experiment  # noqa: E402
from boltzflow.flows import InternalCoordinates  # noqa: E402
from boltzflow.flows.builders import make_flow  # noqa: E402
from boltzflow.flows.paths import PulledBack, flow_space, model_space, path_weights  # noqa: E402
from boltzflow.settings import parse  # noqa: E402
from boltzflow.snf import SNFSettings, StochasticBlock, make_snf  # noqa: E402
from boltzflow.targets import make_target  # noqa: E402

FLOW = {"type": "nsf", "coordinates": "internal", "n_layers": 2, "hidden": 16}


@pytest.fixture(scope="module")
def aldp():
    return make_target("aldp_implicit")


def test_internal_coordinate_flow_and_its_ais_space(aldp):
    flow = make_flow(FLOW, jax.random.key(0), aldp.dim, molecule=aldp.molecule)
    assert isinstance(flow.layers[-1], InternalCoordinates)
    assert flow.base.dim == 60 and flow.dim == 66
    assert sum(flow.base.circular) == 7  # phi, psi, two omegas, three methyl rotations
    space = model_space(flow, aldp)
    assert space.dim == 60

    @eqx.filter_jit  # one compilation of everything below (op by op, each operation would compile on its own)
    def weights(flow, key):
        z, log_q_z = space.sample_and_log_q(flow, key, 64)
        x = space.to_x(z)
        return space.log_p(z) - log_q_z, aldp.log_prob(x) - flow.log_prob(x), space.log_q(flow, z), log_q_z

    w_latent, w_x, log_q_again, log_q_z = weights(flow, jax.random.key(1))
    # the pulled-back target gives the same importance weights as x-space: log p_z - log q_z = log p(x) - log q(x)
    np.testing.assert_allclose(np.asarray(w_latent), np.asarray(w_x), rtol=1e-4, atol=2e-2)
    np.testing.assert_allclose(np.asarray(log_q_again), np.asarray(log_q_z), rtol=1e-5, atol=1e-3)
    assert model_space(make_flow({"type": "nsf", "n_layers": 2}, jax.random.key(0), 66), aldp).dim == 66
    assert flow_space(aldp).dim == 66


def test_internal_coordinates_need_a_molecule(aldp):
    with pytest.raises(BoltzflowError, match="molecular target"):
        make_flow(FLOW, jax.random.key(0), 2)
    with pytest.raises(BoltzflowError, match="leave circular unset"):
        make_flow({**FLOW, "circular": [0]}, jax.random.key(0), 66, molecule=aldp.molecule)
    with pytest.raises(BoltzflowError, match="coordinates must be one of"):
        config_from_dict({"target": "aldp_implicit", "flow": {**FLOW, "coordinates": "polar"}})
    with pytest.raises(BoltzflowError, match="molecular target"):
        build_experiment(config_from_dict({"target": "double_well", "flow": FLOW}))


def test_a_realnvp_on_internal_coordinates_models_the_torsions_on_the_real_line(aldp):
    flow = make_flow({**FLOW, "type": "realnvp"}, jax.random.key(0), 66, molecule=aldp.molecule)
    assert flow.base.dim == 60 and flow.dim == 66 and not np.any(flow.base.circular)
    x, log_q = flow.sample_and_log_prob(jax.random.key(1), 64)
    # the identity-initialised flow keeps its torsions inside [-pi, pi) (std 1), where log q(x) is exact
    np.testing.assert_allclose(np.asarray(flow.log_prob(x)), np.asarray(log_q), rtol=1e-5, atol=2e-3)


def test_snf_blocks_on_internal_coordinates_take_their_own_step_on_the_torsions(aldp):
    """blocks.torsion_step_size: every block's step is per dimension, that value on the rotatable torsions (the
    internal-coordinate layer's circular dims) and step_size on the rest."""
    settings = parse(SNFSettings, {"flow": {**FLOW, "type": "realnvp", "n_layers": 2},
                                   "blocks": {"step_size": 0.05, "torsion_step_size": 0.7}}, "flow")
    snf = make_snf(settings, jax.random.key(0), aldp)
    mask = snf.layers[-1].circular_mask
    assert 0 < mask.sum() < 60  # phi, psi, the methyls, ...
    for block in (layer for layer in snf.layers if isinstance(layer, StochasticBlock)):
        np.testing.assert_allclose(np.asarray(block.step_size), np.where(mask, 0.7, 0.05), rtol=1e-6)


@pytest.mark.slow  # 17 s in CI; the same layout for AIS (test_internal_coordinate_flow_and_its_ais_space) stays
def test_snf_blocks_run_below_the_internal_coordinate_layer(aldp):
    """An SNF on internal coordinates: the layer stays last, its blocks sample the pulled-back target, and the
    path weights (eq. 11) of its samples are finite and its Metropolis moves are accepted."""
    settings = parse(SNFSettings, {"flow": {**FLOW, "type": "realnvp", "n_layers": 2},
                                   "blocks": {"kernel": "metropolis", "n_steps": 3, "step_size": 0.05}}, "flow")
    snf = make_snf(settings, jax.random.key(0), aldp)
    kinds = [type(layer).__name__ for layer in snf.layers]
    assert kinds == ["Coupling", "StochasticBlock", "Coupling", "LULinear", "StochasticBlock", "InternalCoordinates"]
    blocks = [layer for layer in snf.layers if isinstance(layer, StochasticBlock)]
    assert all(isinstance(b.target, PulledBack) for b in blocks)
    assert [float(b.lam) for b in blocks] == [0.5, 1.0] and snf.base.dim == 60 and snf.dim == 66
    x, log_w, infos = path_weights(snf, aldp, jax.random.key(2), 32)
    assert x.shape == (32, 66) and np.all(np.isfinite(np.asarray(log_w)))
    assert all(0.0 < float(jnp.mean(i.accept)) <= 1.0 for i in infos)


@pytest.mark.slow
def test_fab_trains_evaluates_and_plots_a_molecule(tmp_path):
    """Two FAB steps with AIS in internal coordinates through `boltzflow train`, then the molecular metrics
    (against a small stand-in reference set: the minimum with 0.005 nm noise) and the pictures."""
    target = make_target("aldp_implicit")
    noise = 0.005 * np.random.default_rng(0).standard_normal((200, 66))
    np.savez(tmp_path / "ref.npz", x=(target.molecule.positions.reshape(1, -1) + noise).astype(np.float32))
    config = tmp_path / "aldp.yaml"
    config.write_text(json.dumps({
        "name": "aldp_smoke", "target": {"name": "aldp_implicit", "reference": str(tmp_path / "ref.npz")},
        "flow": FLOW, "method": {"name": "fab", "buffer": False},
        "ais": {"kernel": "hmc", "n_intermediate": 1, "n_leapfrog": 2}, "train": {"steps": 2, "batch_size": 16}}))
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress", "--eval-samples", "256"]) == 0
    report = json.loads((out / "report.json").read_text())["eval"]
    assert report["chirality_fraction"] > 0.9  # the flow starts at the L-form minimum
    for key in ("kl_phi", "kl_psi", "kl_ramachandran", "kl_ramachandran_reweighted", "kl_gamma1",
                "phi_positive_reference"):
        assert key in report
    assert report["kl_ramachandran"] is None or report["kl_ramachandran"] >= 0
    assert np.isfinite(report["mean_log_q_reference"])
    for png in ("ramachandran.png", "torsions.png", "training.png"):
        assert (out / png).stat().st_size > 1000
