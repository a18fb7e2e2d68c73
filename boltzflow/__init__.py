"""boltzflow: unbiased samples, free energies and log Z of Boltzmann densities with learned flows.

Two methods on one set of parts: Stochastic Normalizing Flows (Wu, Koehler & Noe, NeurIPS 2020; ``boltzflow.snf``)
and Flow Annealed Importance Sampling Bootstrap (Midgley et al., ICLR 2023; ``boltzflow.train.fab``). The Python
API (``boltzflow.run``)::

    import jax, boltzflow as bf
    target = bf.target_from_log_prob(log_prob, dim=6)      # or bf.make_target("gmm40")
    run = bf.fit(target, bf.load_config("auto", train={"steps": 2000}), key=jax.random.key(0))
    x, log_w = run.sample(jax.random.key(1), 100_000)
    report = run.evaluate(jax.random.key(2), n=100_000)
    run.save("runs/x"); run = bf.load("runs/x")
"""

from boltzflow.config import Config, load_config, presets
from boltzflow.errors import BoltzflowError
from boltzflow.run import Run, fit, load, target_from_log_prob
from boltzflow.targets import Target, make_target

__version__ = "0.1.0"

__all__ = ["BoltzflowError", "Config", "Run", "Target", "fit", "load", "load_config", "make_target", "presets",
           "target_from_log_prob", "__version__"]
